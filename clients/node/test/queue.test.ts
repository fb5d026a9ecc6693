import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient, ConsumeOptions, InvalidArgumentError, Job, JobCancelledError, JobHandler } from "../src/index.js";
import { CancelJobRequest, GetJobRequest, JobState, Job as JobMessage } from "../src/gen/baton/v1/queue.js";
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
  readonly record = (job: Job, error: unknown) => {
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
