// Run by express-session.test.ts as a child process: calls each BatonSessionStore method with
// a callback that throws, and prints, as JSON, how each throw reached the process — as an
// uncaught exception (the callback ran on a fresh tick) or as an unhandled rejection (it ran
// inside the store's promise chain, where express-session's callers would hang). A child,
// because the test runner handles both events itself.

import type { SessionData } from "express-session";

import { BatonClient } from "../src/index.js";
import { BatonSessionStore } from "../src/express-session.js";

const [target, sessionId] = process.argv.slice(2);
const client = new BatonClient({ target });
const store = new BatonSessionStore({ client });
const session = { cookie: { originalMaxAge: 60_000, expires: new Date(Date.now() + 60_000) } } as unknown as SessionData;

const calls: Record<string, (thrower: () => void) => void> = {
  set: (thrower) => store.set(sessionId, session, thrower),
  get: (thrower) => store.get(sessionId, thrower),
  touch: (thrower) => store.touch(sessionId, session, thrower),
  length: (thrower) => store.length(thrower),
  destroy: (thrower) => store.destroy(sessionId, thrower),
  clear: (thrower) => store.clear(thrower),
};

const seen: Record<string, string> = {};
let current = "";
let surfaced: () => void = () => undefined;
process.on("uncaughtException", () => {
  seen[current] = "uncaught exception";
  surfaced();
});
process.on("unhandledRejection", () => {
  seen[current] = "unhandled rejection";
  surfaced();
});

for (const [method, call] of Object.entries(calls)) {
  current = method;
  await new Promise<void>((done) => {
    surfaced = done;
    call(() => {
      throw new Error(`thrown by ${method}'s callback`);
    });
  });
}
client.close();
process.stdout.write(JSON.stringify(seen));
