// A rolling restart under load: three baton replicas on one Redis, each SIGTERMed in turn
// and restarted on its port, while lock holders keep their leases through the KeepAlive
// helper and workers consume a queue. Nothing may be lost, run twice or charged twice.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { ClientDuplexStream, StatusObject, status as Status } from "@grpc/grpc-js";

import { BatonClient, LeaseLostError } from "../src/index.js";
import { GetJobRequest, JobState } from "../src/gen/baton/v1/queue.js";
import { unary } from "../src/unary.js";
import { Baton, Environment, eventually, freePort, unique } from "./harness.js";

const REPLICAS = 3;
const JOBS = 2000;
const HOLDERS = 3;
const WORKERS = 3;
const LOCK_TTL_MS = 2000;

let environment: Environment;
let listens: string[];
const replicas: Baton[] = [];
const clients: BatonClient[] = [];

before(async () => {
  environment = await Environment.start();
  listens = [];
  for (let i = 0; i < REPLICAS; i++) {
    listens.push(`127.0.0.1:${await freePort()}`);
  }
  for (const listen of listens) {
    replicas.push(await environment.baton(listen));
  }
  environment.onClose(() => clients.forEach((client) => client.close()));
});
after(() => environment.close());

/**
 * A client of all three replicas, as each holder and worker process would have. Holder `n`
 * sticks to replica `n` (pick_first, its replica listed first), so every restart surely cuts
 * a KeepAlive stream; round_robin could leave all of them elsewhere.
 */
function connect(stickTo?: number): BatonClient {
  const client =
    stickTo === undefined
      ? new BatonClient({ target: listens })
      : new BatonClient({
          target: [...listens.slice(stickTo), ...listens.slice(0, stickTo)],
          loadBalancing: "pick_first",
        });
  clients.push(client);
  return client;
}

/**
 * The longest reconnect gap of the KeepAlive and Consume streams of the clients watched:
 * from a stream ending UNAVAILABLE to the next stream of the same client working again (its
 * first answer for KeepAlive, its response headers for Consume).
 */
const reconnectGapMs = { keepAlive: 0, consume: 0 };

function watchStreams(client: BatonClient, kind: "keepAlive" | "consume"): void {
  const stub = kind === "keepAlive" ? client.stubs.locks : client.stubs.queue;
  type Opener = (...args: unknown[]) => ClientDuplexStream<unknown, unknown>;
  const original = (stub as unknown as Record<string, Opener>)[kind].bind(stub);
  let brokeAt: number | undefined;
  const working = () => {
    if (brokeAt !== undefined) {
      reconnectGapMs[kind] = Math.max(reconnectGapMs[kind], performance.now() - brokeAt);
      brokeAt = undefined;
    }
  };
  (stub as unknown as Record<string, unknown>)[kind] = (...args: unknown[]) => {
    const call = original(...args);
    call.on(kind === "keepAlive" ? "data" : "metadata", working);
    call.on("status", (status: StatusObject) => {
      if (status.code === Status.UNAVAILABLE) {
        brokeAt ??= performance.now();
      }
    });
    return call;
  };
}

test("a rolling restart loses no lease, runs no job twice and charges no attempt twice", async () => {
  const producer = connect();
  const queue = unique("rolling");
  const ids: string[] = [];
  for (let start = 0; start < JOBS; start += 100) {
    const size = Math.min(100, JOBS - start);
    const batch = Array.from({ length: size }, () => producer.enqueue(queue, "", { maxAttempts: 5 }));
    ids.push(...(await Promise.all(batch)).map((enqueued) => enqueued.jobId));
  }

  const stop = new AbortController();
  const failures: unknown[] = [];

  // Lock holders: each holds its lock ~1.5 s at a time, then hands it over to itself again, so
  // that Acquire, KeepAlive and Release all meet the restarts.
  let lostLeases = 0;
  let heldLeases = 0;
  let longestRenewalGapMs = 0;
  const holder = async (index: number) => {
    const client = connect(index % listens.length);
    watchStreams(client, "keepAlive");
    while (!stop.signal.aborted) {
      let lastRenewal = performance.now();
      try {
        await client.withLock(
          `rolling-lock-${index}`,
          {
            ttlMs: LOCK_TTL_MS,
            owner: `holder-${index}`,
            onRenew: () => {
              const now = performance.now();
              longestRenewalGapMs = Math.max(longestRenewalGapMs, now - lastRenewal);
              lastRenewal = now;
            },
          },
          async (lease) => {
            heldLeases++;
            await sleep(1500, undefined, { signal: lease.signal }).catch(() => undefined);
          },
        );
      } catch (error) {
        if (error instanceof LeaseLostError) {
          lostLeases++;
        } else {
          failures.push(error);
        }
      }
    }
  };

  // Workers: record every handler run; each takes 10-20 ms.
  const runs = new Map<string, number>();
  const settleErrors: unknown[] = [];
  let acked = 0;
  let longestStartGapMs = 0;
  const worker = (index: number) => {
    const client = connect();
    watchStreams(client, "consume");
    let lastStart: number | undefined;
    return client.consume(
      queue,
      async (job) => {
        const now = performance.now();
        // Gaps only while there is work left: at the end the queue simply runs dry.
        if (lastStart !== undefined && acked < JOBS - 50) {
          longestStartGapMs = Math.max(longestStartGapMs, now - lastStart);
        }
        lastStart = now;
        runs.set(job.id, (runs.get(job.id) ?? 0) + 1);
        await sleep(10 + Math.random() * 10);
      },
      {
        concurrency: 2,
        signal: stop.signal,
        consumer: `worker-${index}`,
        onSettled: (_job, error) => (error === undefined ? acked++ : settleErrors.push(error)),
      },
    );
  };

  const holding = Array.from({ length: HOLDERS }, (_, i) => holder(i));
  const working = Array.from({ length: WORKERS }, (_, i) => worker(i));
  await eventually("every holder has its lock and the workers are busy", () => heldLeases >= HOLDERS && acked > 0);

  const ackedBeforeRestarts = acked;
  const started = Date.now();
  for (let i = 0; i < REPLICAS; i++) {
    await replicas[i].terminate();
    replicas[i] = await environment.baton(listens[i]);
    await sleep(1000);
  }
  const ackedAfterRestarts = acked;
  const restartsMs = Date.now() - started;

  await eventually("every job acked", () => acked >= JOBS, 60_000);
  stop.abort();
  await Promise.all([...holding, ...working]);

  const states = new Map<string, { state: JobState; attempts: number }>();
  const stub = producer.stubs.queue;
  for (let start = 0; start < ids.length; start += 100) {
    const jobs = await Promise.all(
      ids.slice(start, start + 100).map((jobId) => unary(stub.getJob.bind(stub), GetJobRequest.fromPartial({ jobId }))),
    );
    jobs.forEach(({ job }, i) => states.set(ids[start + i], { state: job!.state, attempts: job!.attempts }));
  }
  const duplicates = [...runs.values()].filter((count) => count > 1).length;
  const notOnce = [...states].filter(([, job]) => job.state !== JobState.JOB_STATE_SUCCEEDED || job.attempts !== 1);
  console.log(
    `rolling restart (${restartsMs} ms for ${REPLICAS} replicas): ${JOBS} jobs, ${ackedBeforeRestarts} acked before ` +
      `and ${ackedAfterRestarts} by the end of the restarts; ${duplicates} run twice; ${notOnce.length} not ` +
      `SUCCEEDED with attempts 1; ${heldLeases} leases held, ${lostLeases} lost; longest reconnect gap: KeepAlive ` +
      `${reconnectGapMs.keepAlive.toFixed(0)} ms, Consume ${reconnectGapMs.consume.toFixed(0)} ms; longest gap ` +
      `between two renewals of a lease ${longestRenewalGapMs.toFixed(0)} ms (heartbeats every ` +
      `${(LOCK_TTL_MS / 3).toFixed(0)} ms); longest gap between two job starts of a worker ` +
      `${longestStartGapMs.toFixed(0)} ms`,
  );
  assert.ok(ackedAfterRestarts < JOBS, "the queue ran dry before the restarts ended: the test proves nothing");
  const cut = reconnectGapMs.keepAlive > 0 && reconnectGapMs.consume > 0;
  assert.ok(cut, "no KeepAlive or no Consume stream was cut: the restarts proved nothing");
  assert.deepEqual(failures, []);
  assert.deepEqual(settleErrors, []);
  assert.equal(lostLeases, 0, "a live holder lost its lease");
  assert.equal(duplicates, 0, "a job's handler ran twice");
  assert.equal(runs.size, JOBS);
  assert.deepEqual(notOnce.slice(0, 10), [], `${notOnce.length} jobs not SUCCEEDED with attempts 1`);
});
