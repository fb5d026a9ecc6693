// Progress, watchJob, waitForJob, watchQueue and listJobs against a real baton and Redis.
// Every wait is on an event the test can name; the timeouts only bound a test that fails.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  BatonClient,
  DeadlineExceededError,
  InvalidArgumentError,
  JobCancelledError,
  JobHandler,
  JobNotSucceededError,
  JobSnapshot,
  NotFoundError,
  QueueWatchItem,
} from "../src/index.js";
import { CancelJobRequest } from "../src/gen/baton/v1/queue.js";
import { unary } from "../src/unary.js";
import { Environment, eventually, unique } from "./harness.js";

/** Bounds each test: a wait that never ends fails it instead of hanging the run. */
const BOUND = { timeout: 30_000 };

let environment: Environment;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

/** Starts consume; the returned function stops it and fails if it rejected. */
function consuming(queue: string, handler: JobHandler) {
  const stop = new AbortController();
  // A short grace: a handler stuck because the test failed must not hold the stop for long.
  const running = client.consume(queue, handler, { signal: stop.signal, shutdownGraceMs: 1000 });
  return async () => {
    stop.abort();
    await running;
  };
}

/** A promise and its resolver. */
function signalled<T = void>(): { promise: Promise<T>; resolve: (value: T) => void } {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((done) => (resolve = done));
  return { promise, resolve };
}

/** Resolves with `promise`, or rejects with the signal's reason once it aborts. */
function unlessAborted<T>(promise: Promise<T>, signal: AbortSignal): Promise<T> {
  return Promise.race([
    promise,
    new Promise<never>((_, fail) => {
      signal.throwIfAborted();
      signal.addEventListener("abort", () => fail(signal.reason), { once: true });
    }),
  ]);
}

async function cancelJob(jobId: string): Promise<void> {
  const queue = client.stubs.queue;
  await unary(queue.cancelJob.bind(queue), CancelJobRequest.fromPartial({ jobId }));
}

test("a handler's progress reaches a watchJob watcher, then waitForJob returns its result", BOUND, async () => {
  const queue = unique("thumbnails");
  const { jobId } = await client.enqueue(queue, "photo.jpg");
  // The first snapshot is the job as it is: the watch is live before any worker runs.
  const watcher = client.watchJob(jobId)[Symbol.asyncIterator]();
  const first = await watcher.next();
  assert.equal(first.done, false);
  const seen: JobSnapshot[] = [first.value as JobSnapshot];
  const progressSeen = signalled();
  const watching = (async () => {
    for (let next = await watcher.next(); !next.done; next = await watcher.next()) {
      seen.push(next.value);
      if (next.value.progress?.value === 50) {
        progressSeen.resolve();
      }
    }
  })();
  const waited = client.waitForJob(jobId, { timeoutMs: 20_000 });
  let lastProgress: unknown = "not run";
  const stop = consuming(queue, async (job, signal) => {
    lastProgress = job.lastProgress;
    await job.progress(50, "resized");
    // The result goes with the Ack only once the watcher has seen the progress: no snapshot
    // showing both can hide it.
    await unlessAborted(progressSeen.promise, signal);
    return "thumb.jpg";
  });
  const finished = await waited;
  await watching; // ends after the finished state
  await stop();

  assert.equal(lastProgress, undefined, "a first delivery has no earlier progress");
  assert.equal(finished.id, jobId);
  assert.equal(finished.state, "succeeded");
  assert.equal(finished.result.toString(), "thumb.jpg");
  assert.equal(finished.progress?.value, 50, "the progress is kept with the job");

  assert.equal(seen[0].state, "ready");
  assert.equal(seen[0].progress, undefined);
  assert.equal(seen[0].queue, queue);
  const reported = seen.find((snapshot) => snapshot.progress !== undefined);
  assert.ok(reported, "no snapshot showed the progress");
  assert.equal(reported.state, "active");
  assert.equal(reported.attempts, 1);
  assert.equal(reported.progress?.detail.toString(), "resized");
  assert.ok(reported.progress?.reportedAt instanceof Date);
  const last = seen[seen.length - 1];
  assert.equal(last.state, "succeeded");
  assert.equal(last.result.toString(), "thumb.jpg");
  assert.ok(last.finishedAt instanceof Date);
  const order = ["ready", "active", "succeeded"];
  const ranks = seen.map((snapshot) => order.indexOf(snapshot.state));
  assert.ok(!ranks.includes(-1), `unexpected states: ${seen.map((snapshot) => snapshot.state)}`);
  assert.deepEqual(ranks, [...ranks].sort(), `states went back: ${seen.map((snapshot) => snapshot.state)}`);
  for (const snapshot of seen) {
    assert.equal(snapshot.payload.length, 0, "WatchJob does not repeat the payload");
  }

  // A finished job: the stream sends it once and ends.
  assert.equal((await client.waitForJob(jobId)).result.toString(), "thumb.jpg");
});

test("waitForJob rejects with JobNotSucceededError when the job goes dead", BOUND, async () => {
  const queue = unique("payments");
  const { jobId } = await client.enqueue(queue, "card:4242", { maxAttempts: 1 });
  const waited = client.waitForJob(jobId, { timeoutMs: 20_000 });
  const stop = consuming(queue, async () => {
    throw new Error("card declined");
  });
  await assert.rejects(waited, (error: unknown) => {
    assert.ok(error instanceof JobNotSucceededError, `not a JobNotSucceededError: ${error}`);
    assert.equal(error.job.id, jobId);
    assert.equal(error.job.state, "dead");
    assert.equal(error.job.lastError, "card declined");
    assert.equal(error.job.attempts, 1);
    return true;
  });
  await stop();
});

test("waitForJob rejects with JobNotSucceededError when the job is cancelled", BOUND, async () => {
  const queue = unique("payments");
  const { jobId } = await client.enqueue(queue, "card:4242", { delayMs: 600_000 });
  // Watch before cancelling: the first snapshot shows it still scheduled.
  const watcher = client.watchJob(jobId)[Symbol.asyncIterator]();
  assert.equal((await watcher.next()).value?.state, "scheduled");
  const waited = client.waitForJob(jobId, { timeoutMs: 20_000 });
  await cancelJob(jobId);
  await assert.rejects(waited, (error: unknown) => {
    assert.ok(error instanceof JobNotSucceededError, `not a JobNotSucceededError: ${error}`);
    assert.equal(error.job.state, "cancelled");
    return true;
  });
  const rest: string[] = [];
  for (let next = await watcher.next(); !next.done; next = await watcher.next()) {
    rest.push(next.value.state);
  }
  assert.deepEqual(rest, ["cancelled"]);
});

test("waitForJob rejects with DeadlineExceededError past its timeout", BOUND, async () => {
  const queue = unique("payments");
  const { jobId } = await client.enqueue(queue, "later", { delayMs: 600_000 });
  await assert.rejects(client.waitForJob(jobId, { timeoutMs: 300 }), DeadlineExceededError);
  await cancelJob(jobId);
});

test("waitForJob rejects with NotFoundError for a job that does not exist", BOUND, async () => {
  const queue = unique("payments");
  // An id of the right shape (a UUIDv7, then the queue) that names no job of the queue.
  const elsewhere = (await client.enqueue(unique("other"))).jobId;
  const ofQueue = (await client.enqueue(queue, "", { delayMs: 600_000 })).jobId;
  const missing = `${elsewhere.split(".")[0]}.${ofQueue.split(".")[1]}`;
  await assert.rejects(client.waitForJob(missing, { timeoutMs: 20_000 }), NotFoundError);
  await cancelJob(ofQueue);
});

test("waitForJob reopens its stream on another replica when its replica shuts down", BOUND, async () => {
  const first = await environment.baton();
  const second = await environment.baton();
  // pick_first: the watch is on the first replica until it shuts down.
  const caller = new BatonClient({ target: [first.addr, second.addr], loadBalancing: "pick_first" });
  const producer = new BatonClient({ target: second.addr });
  try {
    const queue = unique("quotes");
    const { jobId } = await producer.enqueue(queue, "quote?");
    const waited = caller.waitForJob(jobId, { timeoutMs: 20_000 });
    // Counted once the stream is open (its headers sent).
    const watchesOn = (baton: typeof first) => baton.counter("baton_grpc_requests_total", { method: "WatchJob" });
    await eventually("the watch is open on the first replica", async () => (await watchesOn(first)) === 1);
    // Checked before the shutdown: the watch reopens on the second replica as the first one
    // stops serving, which may be before its process has exited.
    assert.equal(await watchesOn(second), 0);
    await first.terminate(); // its WatchJob streams end UNAVAILABLE (SHUTTING_DOWN)
    const stop = (() => {
      const stopWorker = new AbortController();
      const running = producer.consume(queue, async () => "42", { signal: stopWorker.signal });
      return async () => {
        stopWorker.abort();
        await running;
      };
    })();
    const finished = await waited;
    await stop();
    assert.equal(finished.state, "succeeded");
    assert.equal(finished.result.toString(), "42");
    assert.ok((await watchesOn(second)) >= 1, "the watch was not reopened on the second replica");
  } finally {
    caller.close();
    producer.close();
  }
});

test("watchQueue reopens on another replica after its replica shuts down, saying events may be missed", BOUND, async () => {
  const first = await environment.baton();
  const second = await environment.baton();
  const watcher = new BatonClient({ target: [first.addr, second.addr], loadBalancing: "pick_first" });
  const producer = new BatonClient({ target: second.addr });
  const stopWatching = new AbortController();
  try {
    const queue = unique("renders");
    const opens = [signalled(), signalled()];
    let openCount = 0;
    const enqueued = signalled();
    const items: QueueWatchItem[] = [];
    const watching = (async () => {
      const options = { signal: stopWatching.signal, onOpen: () => opens[openCount++]?.resolve() };
      for await (const item of watcher.watchQueue(queue, options)) {
        items.push(item);
        if (item.kind === "enqueued") {
          enqueued.resolve();
        }
      }
    })();
    await opens[0].promise;
    await first.terminate(); // the stream ends UNAVAILABLE (SHUTTING_DOWN)
    await opens[1].promise; // reopened on the second replica
    const { jobId } = await producer.enqueue(queue, "scene-2");
    await enqueued.promise;
    stopWatching.abort();
    await watching;
    assert.deepEqual(items, [{ kind: "missed", count: 0 }, ...items.slice(1)]);
    assert.deepEqual(items.slice(1).map((item) => item.kind === "enqueued" && item.jobId), [jobId]);
  } finally {
    stopWatching.abort();
    watcher.close();
    producer.close();
  }
});

test("job.progress refuses a value that is not finite, and rejects once the job is cancelled", BOUND, async () => {
  const queue = unique("exports");
  const { jobId } = await client.enqueue(queue);
  const outcome = signalled<{ invalid: unknown; afterCancel: unknown; abortReason: unknown }>();
  const started = signalled();
  const stop = consuming(queue, async (job, signal) => {
    const invalid = await job.progress(Number.NaN).then(() => "resolved", (error: unknown) => error);
    started.resolve();
    await new Promise((done) => signal.addEventListener("abort", done, { once: true }));
    const afterCancel = await job.progress(10).then(() => "resolved", (error: unknown) => error);
    outcome.resolve({ invalid, afterCancel, abortReason: signal.reason });
    throw signal.reason;
  });
  await started.promise;
  await cancelJob(jobId);
  const { invalid, afterCancel, abortReason } = await outcome.promise;
  await stop();
  assert.ok(invalid instanceof InvalidArgumentError, `NaN: ${invalid}`);
  assert.equal(invalid.field, "value");
  assert.ok(abortReason instanceof JobCancelledError);
  assert.ok(afterCancel instanceof JobCancelledError, `after the cancel: ${afterCancel}`);
});

test("watchQueue sees a job enqueued, active, progressing and succeeded, in order", BOUND, async () => {
  const queue = unique("renders");
  const stopWatching = new AbortController();
  const opened = signalled();
  const succeeded = signalled();
  const items: QueueWatchItem[] = [];
  const watching = (async () => {
    for await (const item of client.watchQueue(queue, { signal: stopWatching.signal, onOpen: opened.resolve })) {
      items.push(item);
      if (item.kind === "succeeded") {
        succeeded.resolve();
      }
    }
  })();
  await opened.promise; // events are recorded from here on
  const { jobId } = await client.enqueue(queue, "scene-1", { type: "render" });
  const stop = consuming(queue, async (job) => {
    await job.progress(0.5, "half");
    return "frame.png";
  });
  await succeeded.promise;
  stopWatching.abort();
  await watching;
  await stop();

  assert.deepEqual(
    items.map((item) => item.kind),
    ["enqueued", "active", "progress", "succeeded"],
  );
  const [enqueued, active, progress, done] = items;
  for (const item of [enqueued, active, progress, done]) {
    assert.ok(item.kind !== "missed");
    assert.equal(item.jobId, jobId);
    assert.ok(item.at instanceof Date);
  }
  assert.ok(enqueued.kind === "enqueued");
  assert.equal(enqueued.jobType, "render");
  assert.equal(enqueued.state, "ready");
  assert.ok(active.kind === "active");
  assert.equal(active.state, "active");
  assert.equal(active.attempt, 1);
  assert.ok(progress.kind === "progress");
  assert.equal(progress.state, "active");
  assert.equal(progress.progress?.value, 0.5);
  assert.equal(progress.progress?.detail.toString(), "half");
  assert.ok(done.kind === "succeeded");
  assert.equal(done.state, "succeeded");
  assert.equal(done.attempt, 1);
});

test("listJobs lists a succeeded job, and pages through ready ones", BOUND, async () => {
  const queue = unique("invoices");
  const { jobId } = await client.enqueue(queue, "invoice-1");
  const stop = consuming(queue, async () => "paid");
  await client.waitForJob(jobId, { timeoutMs: 20_000 });
  await stop();

  const succeeded = await client.listJobs(queue, "succeeded");
  assert.deepEqual(succeeded.jobs.map((job) => job.id), [jobId]);
  assert.equal(succeeded.nextPageToken, "");
  const [job] = succeeded.jobs;
  assert.equal(job.state, "succeeded");
  assert.equal(job.payload.toString(), "invoice-1", "listJobs includes payloads");
  assert.equal(job.result.toString(), "paid");
  assert.equal((await client.listJobs(queue, "ready")).jobs.length, 0);

  const ready: string[] = [];
  for (const payload of ["invoice-2", "invoice-3", "invoice-4"]) {
    ready.push((await client.enqueue(queue, payload)).jobId);
  }
  const first = await client.listJobs(queue, "ready", { pageSize: 2 });
  assert.deepEqual(first.jobs.map((job) => job.id), ready.slice(0, 2));
  assert.notEqual(first.nextPageToken, "");
  const second = await client.listJobs(queue, "ready", { pageSize: 2, pageToken: first.nextPageToken });
  assert.deepEqual(second.jobs.map((job) => job.id), ready.slice(2));
  assert.equal(second.nextPageToken, "");
});
