// Run by lock.test.ts as a child process: holds `name` with a 1 s ttl through the lock helper
// and, on stdout, reports by the wall clock the instant its loss would be reported ("held
// <ms>") each time that instant moves, then the instant the loss is reported ("lost <ms>").

import { BatonClient, Lease } from "../src/index.js";

const [target, name] = process.argv.slice(2);
const client = new BatonClient({ target });

/** lease.lossAt (monotonic) as a wall-clock instant, by the clocks' offset right now. */
function lossAtWall(lease: Lease): number {
  return Date.now() + (lease.lossAt - performance.now());
}

const lease = await client.lock(name, { ttlMs: 1000, onRenew: (renewed) => report(`held ${lossAtWall(renewed)}`) });
report(`held ${lossAtWall(lease)}`);
lease.signal.addEventListener(
  "abort",
  () => {
    report(`lost ${Date.now()}`);
    client.close();
  },
  { once: true },
);

function report(line: string): void {
  process.stdout.write(`${line}\n`);
}
