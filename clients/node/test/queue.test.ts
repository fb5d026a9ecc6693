import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient, ConsumeOptions, InvalidArgumentError, Job, JobCancelledError, JobHandler } from "../src/index.js";
import { CancelJobRequest, ConsumeResponse, GetJobRequest, JobState, Job as JobMessage } from "../src/gen/baton/v1/queue.js";
import { consumeTuning } from "../src/queue.js";
import { unary } from "../src/unary.js";
import { Environment, eventually, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;
let addr: string;

before(async () => {
  environment = await Environment.start();
  addr = (await environment.baton()).addr;
  client = new BatonClient({ target: addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

/** What consume reported for each delivery. */
class Settlements {
  readonly acked = new Map<string, number>();
  readonly other: unknown[] = [];
  /** Date.now() of the last report. */
  lastAt = 0;
  readonly record = (job: Job, error: unknown) => {
    this.lastAt = Date.now();
    if (error === undefined) {
      this.acked.set(job.id, (this.acked.get(job.id) ?? 0) + 1);
    } else {
      this.other.push(error);
    }
  };
}

/** Starts consume; the returned function stops it and fails if it rejected. */
function consuming(worker: BatonClient, queue: string, handler: JobHandler, options: ConsumeOptions = {}) {
  const stop = new AbortController();
  const running = worker.consume(queue, handler, { ...options, signal: stop.signal });
  return async () => {
    stop.abort();
    await running;
  };
}

async function getJob(id: string): Promise<JobMessage | undefined> {
  const queue = client.stubs.queue;
  return (await unary(queue.getJob.bind(queue), GetJobRequest.fromPartial({ jobId: id }))).job;
}

/** Enqueues `count` jobs, 100 at a time; resolves with their ids in order. */
async function enqueueMany(queue: string, count: number): Promise<string[]> {
  const ids: string[] = [];
  for (let start = 0; start < count; start += 100) {
    const size = Math.min(100, count - start);
    const batch = Array.from({ length: size }, (_, i) => client.enqueue(queue, `job-${start + i}`));
    ids.push(...(await Promise.all(batch)).map((enqueued) => enqueued.jobId));
  }
  return ids;
}

/** The state and attempts of each job, read 100 at a time. */
async function statesOf(ids: string[]): Promise<Map<string, { state: JobState; attempts: number }>> {
  const states = new Map<string, { state: JobState; attempts: number }>();
  for (let start = 0; start < ids.length; start += 100) {
    const jobs = await Promise.all(ids.slice(start, start + 100).map(getJob));
    jobs.forEach((job, i) =>
      states.set(ids[start + i], { state: job?.state ?? JobState.UNRECOGNIZED, attempts: job?.attempts ?? -1 }),
    );
  }
  return states;
}

test("enqueue with a dedup key answers the first job", async () => {
  const queue = unique("emails");
  const first = await client.enqueue(queue, "welcome", { dedupKey: "signup:42", dedupTtlMs: 60_000 });
  const second = await client.enqueue(queue, "welcome", { dedupKey: "signup:42", dedupTtlMs: 60_000 });
  assert.equal(first.duplicate, false);
  assert.equal(second.duplicate, true);
  assert.equal(second.jobId, first.jobId);
});

test("consume acks success and nacks failure with its message", async () => {
  const queue = unique("emails");
  const enqueued = await client.enqueue(queue, "to:ada", { retryBackoff: { initialMs: 10, maxMs: 10, multiplier: 1 } });
  const seen: Job[] = [];
  const stop = consuming(client, queue, async (job) => {
    seen.push(job);
    if (job.attempt === 1) {
      throw new Error("smtp: 421 try again later");
    }
    return "sent";
  });
  await eventually("job succeeded", async () => (await getJob(enqueued.jobId))?.state === JobState.JOB_STATE_SUCCEEDED);
  await stop();
  assert.deepEqual(seen.map((job) => job.attempt), [1, 2]);
  assert.equal(seen[1].payload.toString(), "to:ada");
  assert.equal(seen[1].lastError, "smtp: 421 try again later");
  assert.equal((await getJob(enqueued.jobId))?.result.toString(), "sent");
});

test("a long handler keeps its lease by extending it", async () => {
  const queue = unique("reports");
  const enqueued = await client.enqueue(queue);
  const settled = new Settlements();
  let deliveries = 0;
  const report: JobHandler = async (_job, signal) => {
    deliveries++;
    await sleep(2500, undefined, { signal }); // 2.5 visibility timeouts
  };
  // Two workers: without extension the lease would expire and the idle one get the job.
  const options = { visibilityTimeoutMs: 1000, onSettled: settled.record };
  const stops = [consuming(client, queue, report, options), consuming(client, queue, report, options)];
  await eventually("job acked", () => settled.acked.size === 1);
  await Promise.all(stops.map((stop) => stop()));
  assert.equal(deliveries, 1, "the lease was not extended");
  assert.deepEqual(settled.other, []);
  assert.equal((await getJob(enqueued.jobId))?.attempts, 1);
});

test("CancelJob aborts its handler's signal and the job is not acked", async () => {
  const queue = unique("exports");
  const enqueued = await client.enqueue(queue);
  const settled = new Settlements();
  let started = false;
  let abortReason: unknown;
  const stop = consuming(
    client,
    queue,
    async (_job, signal) => {
      started = true;
      await new Promise((done) => signal.addEventListener("abort", done, { once: true }));
      abortReason = signal.reason;
      throw signal.reason;
    },
    { onSettled: settled.record },
  );
  await eventually("handler started", () => started);
  const stub = client.stubs.queue;
  await unary(stub.cancelJob.bind(stub), CancelJobRequest.fromPartial({ jobId: enqueued.jobId }));
  await eventually("cancellation reported", () => settled.other.length === 1);
  await stop();
  assert.ok(abortReason instanceof JobCancelledError, String(abortReason));
  assert.ok(settled.other[0] instanceof JobCancelledError);
  assert.equal(settled.acked.size, 0);
  assert.equal((await getJob(enqueued.jobId))?.state, JobState.JOB_STATE_CANCELLED);
});

test("two workers, one killed mid-job: every job is acked once, the killed one's redelivered", async () => {
  const queue = unique("emails");
  const enqueued = new Set<string>();
  for (let i = 0; i < 20; i++) {
    enqueued.add((await client.enqueue(queue, `email-${i}`)).jobId);
  }
  const doomed = spawn(process.execPath, [`${import.meta.dirname}/doomed-worker.js`, addr, queue], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    const inDoomedHands = new Set<string>();
    for await (const line of createInterface({ input: doomed.stdout })) {
      inDoomedHands.add(line.split(" ")[1]);
      if (inDoomedHands.size === 2) {
        break;
      }
    }
    const settled = new Settlements();
    const attempts = new Map<string, number>();
    const stop = consuming(
      client,
      queue,
      async (job) => {
        attempts.set(job.id, job.attempt);
        await sleep(20);
      },
      { concurrency: 4, onSettled: settled.record },
    );
    await eventually("the survivor acked the other jobs", () => settled.acked.size >= 18);
    // Killed mid-job: its connection drops and Baton hands its two jobs back at once, long
    // before their 30 s visibility timeout.
    doomed.kill("SIGKILL");
    await eventually("every job acked", () => settled.acked.size === 20);
    await stop();
    assert.deepEqual(new Set(settled.acked.keys()), enqueued);
    assert.ok([...settled.acked.values()].every((count) => count === 1), "a job was acked twice");
    assert.deepEqual(settled.other, []);
    assert.deepEqual([...inDoomedHands].map((id) => attempts.get(id)), [2, 2]);
  } finally {
    doomed.kill("SIGKILL");
  }
});

test("consume reconnects after a shutdown and acks the job in hand", async () => {
  const first = await environment.baton();
  const second = await environment.baton();
  // pick_first: the stream is on the first replica until it shuts down.
  const worker = new BatonClient({ target: [first.addr, second.addr], loadBalancing: "pick_first" });
  const producer = new BatonClient({ target: second.addr });
  try {
    const queue = unique("emails");
    const started: string[] = [];
    let release!: () => void;
    const released = new Promise<void>((done) => (release = done));
    const settled = new Settlements();
    const stop = consuming(
      worker,
      queue,
      async (job) => {
        started.push(job.payload.toString());
        if (job.payload.toString() === "in hand") {
          await released;
        }
      },
      { onSettled: settled.record },
    );
    await producer.enqueue(queue, "in hand");
    await eventually("the first job started", () => started.length === 1);
    await first.terminate(); // the stream ends UNAVAILABLE (SHUTTING_DOWN); the lease is kept
    release();
    await eventually("the job in hand acked via the other replica", () => settled.acked.size === 1);
    await producer.enqueue(queue, "after");
    await eventually("the worker reconnected to the other replica", () => settled.acked.size === 2);
    await stop();
    assert.deepEqual(started, ["in hand", "after"]);
    assert.deepEqual(settled.other, []);
  } finally {
    worker.close();
    producer.close();
  }
});

test("consume rejects with an error no retry can fix", async () => {
  await assert.rejects(client.consume("", async () => undefined), (error) => {
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.equal(error.field, "queue");
    return true;
  });
});

test("a stopped worker finishes its 100 running jobs, takes no more, and charges nothing to the rest", async () => {
  const queue = unique("reports");
  const ids = await enqueueMany(queue, 250);
  const started = new Map<string, number>(); // job id → attempt
  let startedAfterStop = 0;
  const stop = new AbortController();
  const settled = new Settlements();
  const running = client.consume(
    queue,
    async (job) => {
      if (stop.signal.aborted) {
        startedAfterStop++;
      }
      started.set(job.id, job.attempt);
      await sleep(300);
      return "done";
    },
    { concurrency: 100, signal: stop.signal, onSettled: settled.record },
  );
  await eventually("100 handlers running", () => started.size >= 100);
  const stoppedAt = Date.now();
  stop.abort();
  await running;
  const resolvedAt = Date.now();
  const stopTook = resolvedAt - stoppedAt;
  console.log(
    `stopped worker: ${started.size} jobs finished, consume resolved ${stopTook} ms after the stop, ` +
      `${resolvedAt - settled.lastAt} ms after the last ack`,
  );
  assert.equal(startedAfterStop, 0, "a job started after the stop");
  assert.equal(started.size, 100);
  // The handlers take 300 ms: the stop waited for them, and for nothing else.
  assert.ok(stopTook >= 200 && stopTook < 2000, `consume resolved ${stopTook} ms after the stop`);
  assert.equal(settled.acked.size, 100);
  assert.deepEqual(settled.other, []);
  const states = await statesOf(ids);
  for (const [id, { state, attempts }] of states) {
    if (started.has(id)) {
      assert.equal(started.get(id), 1);
      const expected = { state: JobState.JOB_STATE_SUCCEEDED, attempts: 1 };
      assert.deepEqual({ state, attempts }, expected, `job ${id}, which ran`);
    } else {
      const expected = { state: JobState.JOB_STATE_READY, attempts: 0 };
      assert.deepEqual({ state, attempts }, expected, `job ${id}, which never ran`);
    }
  }
});

test("a stopped worker hands its prefetched jobs back at once, uncharged, while its handlers run on", async () => {
  const queue = unique("thumbnails");
  const ids = await enqueueMany(queue, 10);
  const [concurrency, prefetch] = [2, 3];
  const started = new Set<string>();
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const stop = new AbortController();
  const settled = new Settlements();
  const running = client.consume(
    queue,
    async (job) => {
      started.add(job.id);
      await finished;
    },
    { concurrency, prefetch, shutdownGraceMs: 10_000, signal: stop.signal, onSettled: settled.record },
  );
  const leased = async () =>
    [...(await statesOf(ids)).values()].filter((job) => job.state === JobState.JOB_STATE_ACTIVE).length;
  try {
    // Two running, three more leased and waiting for a slot.
    await eventually(
      "two handlers running and five jobs leased",
      async () => started.size === concurrency && (await leased()) === concurrency + prefetch,
    );
    stop.abort();
    // The waiting ones go back while the running handlers have not finished.
    await eventually("only the running jobs still leased", async () => (await leased()) === concurrency);
  } finally {
    finish();
    stop.abort();
    await running;
  }
  assert.equal(started.size, concurrency, "a prefetched job started after the stop");
  assert.equal(settled.acked.size, concurrency);
  assert.deepEqual(settled.other, []);
  for (const [id, job] of await statesOf(ids)) {
    const expected = started.has(id)
      ? { state: JobState.JOB_STATE_SUCCEEDED, attempts: 1 }
      : { state: JobState.JOB_STATE_READY, attempts: 0 };
    assert.deepEqual(job, expected, `job ${id}`);
  }
});

test("deliveries that arrive after the stop go back to the queue without their attempt charged", async () => {
  const queue = unique("invoices");
  const ids = await enqueueMany(queue, 150);
  const stop = new AbortController();
  const ran: string[] = [];
  // The first handler stops the worker: the other deliveries of the burst of 100 arrive (or
  // get their slot) after the stop decision, and must go back unstarted.
  await client.consume(
    queue,
    async (job) => {
      ran.push(job.id);
      stop.abort();
      await sleep(50);
    },
    { concurrency: 100, signal: stop.signal },
  );
  assert.equal(ran.length, 1, `${ran.length} handlers ran after the stop decision`);
  const states = await statesOf(ids);
  assert.deepEqual(states.get(ran[0]), { state: JobState.JOB_STATE_SUCCEEDED, attempts: 1 });
  const charged = [...states].filter(
    ([id, job]) => id !== ran[0] && (job.state !== JobState.JOB_STATE_READY || job.attempts !== 0),
  );
  assert.deepEqual(charged, [], "jobs never started but not READY with 0 attempts");
});

test("a stopped worker's process exits at once, whatever its shutdown grace", async () => {
  const queue = unique("exports");
  await client.enqueue(queue, "one");
  const worker = spawn(process.execPath, [`${import.meta.dirname}/graceful-worker.js`, addr, queue], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    const exited = new Promise<number>((done) => worker.once("exit", () => done(Date.now())));
    let stoppedAt: number | undefined;
    for await (const line of createInterface({ input: worker.stdout })) {
      if (line === "stopped") {
        stoppedAt = Date.now();
        break;
      }
    }
    assert.ok(stoppedAt !== undefined, "the worker never stopped");
    const exitedAt = await Promise.race([exited, sleep(10_000).then(() => undefined)]);
    assert.ok(exitedAt !== undefined, "the stopped worker's process still ran 10 s later (its 60 s grace timer?)");
    assert.ok(exitedAt - stoppedAt < 2000, `exited ${exitedAt - stoppedAt} ms after consume resolved`);
  } finally {
    worker.kill("SIGKILL");
  }
});

test("a stopped worker hands back, through its current stream, unstarted jobs an earlier stream delivered", async () => {
  const replicas = [await environment.baton(), await environment.baton(), await environment.baton()];
  // pick_first: each stream is on the first replica up, so each shutdown moves it to the next.
  const worker = new BatonClient({ target: replicas.map((replica) => replica.addr), loadBalancing: "pick_first" });
  const producer = new BatonClient({ target: replicas[2].addr });
  // The Consume streams that got their response headers (a draining replica refuses new
  // ones), and what each delivered.
  const streams: string[][] = [];
  const stub = worker.stubs.queue;
  const consume = stub.consume.bind(stub);
  stub.consume = ((...args: Parameters<typeof consume>) => {
    const call = consume(...args);
    const delivered: string[] = [];
    call.on("metadata", () => streams.push(delivered));
    call.on("data", (response: ConsumeResponse) => {
      const deliveries = response.delivery ? [response.delivery] : (response.deliveries?.deliveries ?? []);
      delivered.push(...deliveries.map((delivery) => delivery.job!.jobId));
    });
    return call;
  }) as typeof stub.consume;
  let release!: () => void;
  const released = new Promise<void>((done) => (release = done));
  const stop = new AbortController();
  try {
    const queue = unique("backups");
    const started: string[] = [];
    const settled = new Settlements();
    const running = worker.consume(
      queue,
      async (job, signal) => {
        started.push(job.id);
        await Promise.race([released, new Promise((done) => signal.addEventListener("abort", done, { once: true }))]);
      },
      { concurrency: 2, signal: stop.signal, onSettled: settled.record },
    );
    // Stream 1 (first replica): two jobs, which take both handler slots until released.
    const running1 = [(await producer.enqueue(queue, "a")).jobId, (await producer.enqueue(queue, "b")).jobId];
    await eventually("both slots taken", () => started.length === 2);
    const waiting = [(await producer.enqueue(queue, "c")).jobId, (await producer.enqueue(queue, "d")).jobId];
    // Stream 2 (second replica), opened when the first replica shuts down, delivers the next two,
    // which wait for a slot; then the second replica shuts down too, and stream 3 opens.
    await replicas[0].terminate();
    await eventually("stream 2 delivered the waiting jobs", () => streams[1]?.length === 2);
    assert.deepEqual(new Set(streams[1]), new Set(waiting));
    await replicas[1].terminate();
    await eventually("stream 3 up", () => streams.length === 3);
    stop.abort();
    release();
    const stoppedAt = Date.now();
    await running;
    console.log(`earlier stream's unstarted jobs: consume resolved ${Date.now() - stoppedAt} ms after the stop`);
    assert.deepEqual(started, running1, "a waiting job started after the stop");
    assert.equal(settled.acked.size, 2);
    const states = await statesOf([...running1, ...waiting]);
    for (const id of running1) {
      assert.deepEqual(states.get(id), { state: JobState.JOB_STATE_SUCCEEDED, attempts: 1 }, `job ${id}, which ran`);
    }
    // Left to their visibility timeout they would still be leased, their attempt charged.
    for (const id of waiting) {
      assert.deepEqual(states.get(id), { state: JobState.JOB_STATE_READY, attempts: 0 }, `job ${id}, never started`);
    }
  } finally {
    release();
    stop.abort();
    worker.close();
    producer.close();
  }
});

for (const batchDeliveries of [true, false]) {
  // false: as against a server from before batch_deliveries, which sends one job a message.
  test(`the worker takes every job once, ${batchDeliveries ? "many" : "one"} to a message`, async () => {
    const queue = unique("one-or-many");
    const ids = await enqueueMany(queue, 300);
    const settlements = new Settlements();
    consumeTuning.batchDeliveries = batchDeliveries;
    let stop: () => Promise<void>;
    try {
      stop = consuming(client, queue, async () => undefined, { concurrency: 32, onSettled: settlements.record });
    } finally {
      consumeTuning.batchDeliveries = true;
    }
    try {
      await eventually("every job acked", () => settlements.acked.size === ids.length);
    } finally {
      await stop();
    }
    assert.deepEqual([...settlements.acked.values()].filter((acks) => acks !== 1), []);
    assert.deepEqual(settlements.other, []);
  });
}
