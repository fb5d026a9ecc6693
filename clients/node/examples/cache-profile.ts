// Cache-aside of a user profile: read through the cache, load from the database on a miss —
// once, however many requests miss at the same moment — and drop the entry when the profile
// changes.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//   cd clients/node && npm ci && npx tsc -p . && node dist/dev/examples/cache-profile.js
//
// BATON_TARGET overrides the default localhost:50051.

import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient } from "@baton-dev/baton-client";

interface Profile {
  id: number;
  name: string;
}

/** Stands in for a slow database query. */
async function loadProfile(id: number): Promise<string> {
  console.log(`loading profile ${id} from the database`);
  await sleep(300);
  return JSON.stringify({ id, name: "Ada Lovelace" } satisfies Profile);
}

async function profile(client: BatonClient, id: number): Promise<Profile> {
  const raw = await client.getOrLoad(`user:${id}:profile`, { ttlMs: 300_000, tags: [`user:${id}`] }, () =>
    loadProfile(id),
  );
  return JSON.parse(raw.toString()) as Profile;
}

async function main(): Promise<void> {
  const client = new BatonClient({ target: process.env.BATON_TARGET ?? "localhost:50051" });
  try {
    // Twenty requests miss at once: the database sees one query.
    await Promise.all(Array.from({ length: 20 }, () => profile(client, 42)));
    console.log("profile:", await profile(client, 42)); // a hit

    // The user renames themselves: write the database, then drop what is cached about them.
    await client.invalidateTag("user:42");
    await profile(client, 42); // loads again
  } finally {
    client.close();
  }
}

void main();
