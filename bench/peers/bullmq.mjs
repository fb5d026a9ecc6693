// BullMQ end to end, as baton-bench measures Baton's queue: producers add jobs with
// `addBulk` in batches of 100 (Baton's EnqueueBatch), a Worker completes every job, and
// producers pause while more than --backlog jobs are outstanding, so the figure is
// throughput rather than queue growth. Prints one JSON line: completed jobs/s.
//
// The clock starts after a warm-up (the worker has completed 4 × --concurrency jobs, at
// most --warmup seconds): a Worker fills its concurrency one moveToActive round trip at a
// time, which under a flood of addBulk pipelines takes a second or two before it reaches
// its steady state. The figure is BullMQ's steady state.
//
//   node bench/peers/bullmq.mjs --port 6379 --duration 5
import { Queue, Worker } from "bullmq";
import { flags, version, sleep } from "./common.mjs";

const args = flags({
  port: "6379",
  duration: "5",
  warmup: "10",
  concurrency: "256",
  producers: "2",
  batch: "100",
  backlog: "20000",
});
const connection = { host: "127.0.0.1", port: Number(args.port), maxRetriesPerRequest: null };
const duration = Number(args.duration) * 1000;
const [concurrency, batch, backlog] = [Number(args.concurrency), Number(args.batch), Number(args.backlog)];
const name = `bench-bullmq-${process.pid}-${Date.now()}`;
// Completed jobs are removed, so nothing accumulates in Redis. Baton keeps the newest 10,000
// succeeded jobs of a queue for GetJob (its default), and pays for that in this comparison.
const opts = { removeOnComplete: true, removeOnFail: true };
const data = { payload: "j".repeat(64) };

let completed = 0;
let failed = 0;
const worker = new Worker(name, async () => {}, { connection, concurrency, autorun: false });
worker.on("completed", () => completed++);
worker.on("failed", () => failed++);
worker.on("error", (err) => console.error("worker:", err.message));
await worker.waitUntilReady();
const running = worker.run();

const queues = [];
for (let p = 0; p < Number(args.producers); p++) {
  const queue = new Queue(name, { connection });
  await queue.waitUntilReady();
  queues.push(queue);
}

let deadline = Infinity;
let added = 0;
const producers = queues.map(async (queue) => {
  const jobs = Array.from({ length: batch }, () => ({ name: "job", data, opts }));
  while (performance.now() < deadline) {
    if (added - completed > backlog) {
      await sleep(5);
      continue;
    }
    await queue.addBulk(jobs);
    added += batch;
  }
});

const warming = performance.now();
while (completed < 4 * concurrency && performance.now() - warming < Number(args.warmup) * 1000) {
  await sleep(10);
}
const warmup = (performance.now() - warming) / 1000;
const before = completed;
const started = performance.now();
deadline = started + duration;
await sleep(duration);
const seconds = (performance.now() - started) / 1000;
const done = completed - before;
await Promise.all(producers);
await worker.close(true);
await running.catch(() => {});
await Promise.all(queues.map((queue) => queue.close()));

console.log(
  JSON.stringify({
    peer: "bullmq",
    version: version("bullmq"),
    ioredis: version("ioredis"),
    jobs_per_sec: Math.round(done / seconds),
    completed: done,
    failed,
    added,
    seconds: Number(seconds.toFixed(3)),
    warmup_seconds: Number(warmup.toFixed(3)),
    concurrency,
    producers: queues.length,
    batch,
  }),
);
process.exit(0);
