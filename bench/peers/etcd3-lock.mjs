// Lock cycles through etcd3's own lock helper from Node (`client.lock(name).ttl(s).acquire()`,
// then `release()`), the etcd counterpart of bench/locks/node.mjs: one process, one etcd3
// client, CONCURRENCY callers each cycling on names of their own for DURATION seconds. Prints
// one JSON line in bench/locks's shape (client_cpu_us: this process's CPU per cycle).
//
//   node bench/peers/etcd3-lock.mjs --target 127.0.0.1:2379 --concurrency 16 --duration 5
import { Etcd3 } from "etcd3";
import { flags, version, percentile } from "./common.mjs";

const args = flags({ target: "127.0.0.1:2379", concurrency: "16", duration: "5", ttl: "10" });
const callers = Number(args.concurrency);
const client = new Etcd3({ hosts: `http://${args.target}` });
const run = `${process.pid}-${Date.now()}`;
const latencies = [];
const cpuBefore = process.cpuUsage();
const started = performance.now();
const deadline = started + Number(args.duration) * 1000;
await Promise.all(
  Array.from({ length: callers }, async (_, caller) => {
    for (let i = 0; performance.now() < deadline; i++) {
      const began = performance.now();
      // A distinct name is always free: acquire fails only on an error, which ends the run.
      const lock = client.lock(`cycle-${run}-${caller}-${i}`).ttl(Number(args.ttl));
      await lock.acquire();
      await lock.release();
      latencies.push(Math.round((performance.now() - began) * 1000));
    }
  }),
);
const seconds = (performance.now() - started) / 1000;
const cpu = process.cpuUsage(cpuBefore);
latencies.sort((a, b) => a - b);
console.log(
  JSON.stringify({
    system: "etcd3-node",
    version: version("etcd3"),
    mode: "cycles",
    concurrency: callers,
    cycles: latencies.length,
    seconds: Number(seconds.toFixed(3)),
    cycles_per_sec: latencies.length / seconds,
    p50_us: percentile(latencies, 0.5),
    p99_us: percentile(latencies, 0.99),
    client_cpu_us: (cpu.user + cpu.system) / Math.max(latencies.length, 1),
  }),
);
client.close();
