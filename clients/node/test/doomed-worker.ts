// Run by queue.test.ts as a child process: takes jobs, says so on stdout, and hangs until it
// is killed.

import { BatonClient } from "../src/index.js";

const [target, queue] = process.argv.slice(2);
const client = new BatonClient({ target });
void client.consume(
  queue,
  async (job) => {
    process.stdout.write(`started ${job.id}\n`);
    await new Promise(() => undefined);
  },
  { concurrency: 2 },
);
