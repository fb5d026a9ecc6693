// node-redlock acquire + release cycles, as baton-bench measures Baton's LockService: at
// each concurrency, that many async tasks each lock a fresh resource name (no contention),
// release it, and repeat for --duration seconds. One ioredis connection, one Redis (the
// usual single-instance deployment). Prints one JSON line with, per concurrency C,
// cycles_per_sec_cC, p50_us_cC and p99_us_cC.
//
//   node bench/peers/redlock.mjs --port 6379 --duration 5 --concurrency 1,16,64
import Redis from "ioredis";
import Redlock from "redlock";
import { flags, version, percentile } from "./common.mjs";

const args = flags({ port: "6379", duration: "5", concurrency: "1,16,64", ttl: "10000" });
const duration = Number(args.duration) * 1000;
const ttl = Number(args.ttl);
const client = new Redis({ host: "127.0.0.1", port: Number(args.port) });
// retryCount 0: a distinct name is always free, so a failed acquire is an error, not a wait.
const redlock = new Redlock([client], { retryCount: 0 });
redlock.on("error", (err) => console.error("redlock:", err.message));

const result = { peer: "redlock", version: version("redlock"), ioredis: version("ioredis"), ttl_ms: ttl };
let errors = 0;
for (const c of args.concurrency.split(",").map(Number)) {
  const latencies = [];
  const started = performance.now();
  const deadline = started + duration;
  const tasks = Array.from({ length: c }, async (_, task) => {
    for (let i = 0; performance.now() < deadline; i++) {
      const t0 = performance.now();
      try {
        const lock = await redlock.acquire([`bench:redlock:${c}:${task}:${i}`], ttl);
        await lock.release();
      } catch (err) {
        errors++;
        continue;
      }
      latencies.push(Math.round((performance.now() - t0) * 1000));
    }
  });
  await Promise.all(tasks);
  const seconds = (performance.now() - started) / 1000;
  latencies.sort((a, b) => a - b);
  result[`cycles_per_sec_c${c}`] = Math.round(latencies.length / seconds);
  result[`p50_us_c${c}`] = percentile(latencies, 0.5);
  result[`p99_us_c${c}`] = percentile(latencies, 0.99);
}
result.errors = errors;
await client.quit();
console.log(JSON.stringify(result));
process.exit(0);
