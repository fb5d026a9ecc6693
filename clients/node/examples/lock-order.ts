// A lock around order processing: however many workers pick up order 1234, one processes it
// at a time, and the fencing token lets the order store refuse a write from a worker whose
// lease was lost (a long GC pause, a network partition) after another took over.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//   cd clients/node && npm ci && npx tsc -p . && node dist/dev/examples/lock-order.js
//
// BATON_TARGET overrides the default localhost:50051.

import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient } from "@baton-dev/baton-client";

/** Stands in for a database row that remembers the highest fencing token it saw. */
class OrderStore {
  lastToken = 0n;
  state = "new";

  write(token: bigint, state: string): void {
    if (token < this.lastToken) {
      throw new Error(`stale fencing token ${token}: another worker holds the order now`);
    }
    this.lastToken = token;
    this.state = state;
  }
}

async function processOrder(client: BatonClient, store: OrderStore, worker: number): Promise<void> {
  await client.withLock("order:1234", { ttlMs: 10_000, owner: `worker-${worker}` }, async (lease) => {
    // Charge the card, reserve the stock. The helper sends a heartbeat every ttl/3;
    // lease.signal aborts if the lease is lost — including a margin before the ttl runs out
    // when no heartbeat renewed it, so a frozen worker stops before anyone else can start.
    await sleep(100, undefined, { signal: lease.signal });
    store.write(lease.fencingToken, `processed by worker ${worker}`);
    console.log(`worker ${worker} processed order 1234 with fencing token ${lease.fencingToken}`);
  });
}

async function main(): Promise<void> {
  const client = new BatonClient({ target: process.env.BATON_TARGET ?? "localhost:50051" });
  const store = new OrderStore();
  try {
    await Promise.all([0, 1, 2].map((worker) => processOrder(client, store, worker)));
    console.log(`order 1234: ${store.state}`);
  } finally {
    client.close();
  }
}

void main();
