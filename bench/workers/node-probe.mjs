// End-to-end jobs/s through the Node client's own worker (BatonClient.consume): a few
// producers enqueue the jobs with EnqueueBatch while one worker consumes them with a handler
// that does nothing; the clock runs from the first enqueue to the last ack. Prints one JSON
// line. Uses the built package (clients/node/dist/esm: `npm ci` or `npm run build` there).
// See README.md.
//
//   node bench/workers/node.mjs ADDRESS [QUEUE] [JOBS] [CONCURRENCY] [BATCH]
import { BatonClient, DEFAULT_ACK_BATCH_SIZE, pb } from "../../clients/node/dist/esm/index.js";

const PRODUCERS = 4;
const PATIENCE_MS = 5 * 60_000;

function positive(index, fallback) {
  const value = process.argv[index];
  if (value === undefined || value === "") return fallback;
  const n = Number(value);
  if (!Number.isInteger(n) || n <= 0) {
    console.error(`argument ${index - 1}: want a positive integer, got ${JSON.stringify(value)}`);
    process.exit(2);
  }
  return n;
}

const addr = process.argv[2];
if (!addr) {
  console.error("usage: node bench/workers/node.mjs ADDRESS [QUEUE] [JOBS=20000] [CONCURRENCY=256] [BATCH=100]");
  process.exit(2);
}
const queue = process.argv[3] || `bench-workers-node-${process.pid}`;
const jobs = positive(4, 20_000);
const concurrency = positive(5, 256);
const batch = positive(6, 100);
// ACK_BATCH_SIZE=0 measures the worker without ack coalescing (one Ack per job).
const ackBatchSize = process.env.ACK_BATCH_SIZE ? Number(process.env.ACK_BATCH_SIZE) : DEFAULT_ACK_BATCH_SIZE;
// PREFETCH leases that many jobs beyond the concurrency.
const prefetch = Number(process.env.PREFETCH ?? 0);

const client = new BatonClient({ target: addr });
const stub = client.stubs.queue;
const enqueueBatch = (request) =>
  new Promise((resolve, reject) => stub.enqueueBatch(request, (error, response) => (error ? reject(error) : resolve(response))));

let acked = 0;
let failed = 0;
// As bench/peers/bullmq.mjs measures BullMQ: the clock starts once the worker has acked
// 4 × its concurrency (its ramp-up), and the rate counts the jobs acked after that.
const warmup = Math.min(4 * concurrency, Math.floor(jobs / 2));
let warmedAt;
let allAcked;
const done = new Promise((resolve) => (allAcked = resolve));
const stop = new AbortController();
const consuming = client.consume(queue, async () => {}, {
  concurrency,
  prefetch,
  ackBatchSize,
  signal: stop.signal,
  onSettled: (job, error) => {
    if (error !== undefined) {
      if (++failed <= 5) console.error(`job ${job.id}: ${error}`);
    } else {
      if (++acked === warmup) warmedAt = performance.now();
      if (acked === jobs) allAcked();
    }
  },
});

const payload = Buffer.from("j".repeat(64));
const started = performance.now();
const producers = Array.from({ length: PRODUCERS }, async (_, p) => {
  let share = Math.floor(jobs / PRODUCERS) + (p < jobs % PRODUCERS ? 1 : 0);
  while (share > 0) {
    const n = Math.min(share, batch);
    const requests = Array.from({ length: n }, () => ({ queue, payload }));
    await enqueueBatch(pb.queue.EnqueueBatchRequest.fromPartial({ requests }));
    share -= n;
  }
});
let timer;
const timedOut = new Promise((resolve) => (timer = setTimeout(() => resolve("timeout"), PATIENCE_MS)));
try {
  await Promise.all(producers); console.error("produced at", ((performance.now()-started)/1000).toFixed(3), "acked", acked, "warmedAt", ((warmedAt-started)/1000).toFixed(3));
  const outcome = await Promise.race([done, consuming.then(() => "ended"), timedOut]);
  if (outcome !== undefined) throw new Error(`${acked} of ${jobs} jobs acked (${outcome})`);
  const seconds = (performance.now() - (warmedAt ?? started)) / 1000; console.error("end at", ((performance.now()-started)/1000).toFixed(3));
  stop.abort();
  await consuming;
  if (failed > 0) throw new Error(`${failed} deliveries were not acked`);
  console.log(
    JSON.stringify({
      client: "node",
      jobs,
      warmup,
      seconds: Number(seconds.toFixed(3)),
      jobs_per_s: Math.round((jobs - warmup) / seconds),
      concurrency,
      ack_batch_size: ackBatchSize,
      prefetch,
    }),
  );
} catch (error) {
  console.error("bench/workers/node:", error.message ?? error);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  stop.abort();
  client.close();
}
