// Run by queue.test.ts as a child process: consumes with a long shutdown grace, stops itself
// when its first job starts, says "stopped" once consume has resolved and the client is
// closed, and must then exit on its own: nothing of the worker (a grace timer, a heartbeat)
// may keep the process alive.

import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient } from "../src/index.js";

const [target, queue] = process.argv.slice(2);
const client = new BatonClient({ target });
const stop = new AbortController();
await client.consume(
  queue,
  async () => {
    stop.abort();
    await sleep(100);
  },
  { signal: stop.signal, shutdownGraceMs: 60_000 },
);
client.close();
process.stdout.write("stopped\n");
