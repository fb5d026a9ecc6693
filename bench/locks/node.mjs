// Lock cycles through the Node client's own helper (client.lock + lease.release), as
// bench/locks/main.go runs the Go helper and etcd's mutex: one process, one client
// connection, CONCURRENCY callers each cycling on names of their own for SECONDS. Prints one
// JSON line in main.go's shape and exits non-zero on the first failed call. Uses the built
// package (clients/node/dist/esm: `npm ci` or `npm run build` there).
//
//   node bench/locks/node.mjs ADDRESS CONCURRENCY SECONDS
import { BatonClient } from "../../clients/node/dist/esm/index.js";

// Long enough that no renewal falls inside a cycle, as in main.go.
const TTL_MS = 10_000;

const [addr, callersArg, secondsArg] = process.argv.slice(2);
const callers = Number(callersArg);
const seconds = Number(secondsArg);
if (!addr || !Number.isInteger(callers) || callers <= 0 || !(seconds > 0)) {
  console.error("usage: node bench/locks/node.mjs ADDRESS CONCURRENCY SECONDS");
  process.exit(2);
}

const client = new BatonClient({ target: addr });
const run = `${process.pid}-${Date.now()}`;
const latencies = [];
const cpuBefore = process.cpuUsage();
const started = performance.now();
const deadline = started + seconds * 1000;
try {
  await Promise.all(
    Array.from({ length: callers }, async (_, caller) => {
      for (let i = 0; performance.now() < deadline; i++) {
        const began = performance.now();
        const lease = await client.lock(`cycle-${run}-${caller}-${i}`, { ttlMs: TTL_MS });
        await lease.release();
        latencies.push(performance.now() - began);
      }
    }),
  );
  const elapsed = (performance.now() - started) / 1000;
  const cpu = process.cpuUsage(cpuBefore);
  latencies.sort((a, b) => a - b);
  const at = (q) => Math.round(1000 * latencies[Math.min(latencies.length - 1, Math.floor(q * latencies.length))]);
  console.log(
    JSON.stringify({
      system: "baton-node",
      mode: "cycles",
      concurrency: callers,
      cycles: latencies.length,
      seconds: Number(elapsed.toFixed(3)),
      cycles_per_sec: latencies.length / elapsed,
      p50_us: at(0.5),
      p99_us: at(0.99),
      client_cpu_us: (cpu.user + cpu.system) / Math.max(latencies.length, 1),
    }),
  );
} catch (error) {
  console.error("bench/locks/node:", error.message ?? error);
  process.exitCode = 1;
} finally {
  client.close();
}
