// The worker coalesces its acks into AckBatch calls: fewer calls than jobs, each job with its
// own outcome, as with one Ack per job. Baton's /metrics counts the calls it served; each test
// has a baton of its own.

import assert from "node:assert/strict";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import type { ClientUnaryCall, Metadata, ServiceError } from "@grpc/grpc-js";
import { status as Status } from "@grpc/grpc-js";

import { ackBatchTuning } from "../src/acks.js";
import {
  BatonClient,
  ErrorReason,
  FailedPreconditionError,
  InvalidArgumentError,
  Job,
  reasonOf,
} from "../src/index.js";
import {
  AckBatchRequest,
  AckBatchResponse,
  AckResult,
  EnqueueBatchRequest,
  GetJobRequest,
  JobState,
  NackRequest,
} from "../src/gen/baton/v1/queue.js";
import { unary } from "../src/unary.js";
import { Baton, Environment, eventually, unique } from "./harness.js";

const environments: Environment[] = [];
afterEach(async () => {
  ackBatchTuning.delayMs = 10;
  ackBatchTuning.onQueued = undefined;
  await Promise.all(environments.splice(0).map((environment) => environment.close()));
});

async function start(args: string[] = []): Promise<{ baton: Baton; client: BatonClient }> {
  const environment = await Environment.start();
  environments.push(environment);
  const baton = await environment.baton(undefined, { args });
  const client = new BatonClient({ target: baton.addr });
  environment.onClose(() => client.close());
  return { baton, client };
}

/** How many calls of a JobQueueService method baton answered, whatever their code. */
function served(baton: Baton, method: string): Promise<number> {
  return baton.counter("baton_grpc_requests_total", { service: "baton.v1.JobQueueService", method });
}

async function enqueueBatch(client: BatonClient, queue: string, count: number): Promise<string[]> {
  const stub = client.stubs.queue;
  const request = EnqueueBatchRequest.fromPartial({
    requests: Array.from({ length: count }, (_, n) => ({ queue, payload: Buffer.from(`job-${n}`) })),
  });
  return (await unary(stub.enqueueBatch.bind(stub), request)).results.map((result) => result.jobId);
}

async function getJob(client: BatonClient, id: string) {
  const stub = client.stubs.queue;
  return (await unary(stub.getJob.bind(stub), GetJobRequest.fromPartial({ jobId: id }))).job;
}

/** Resolves after `ms` with `undefined`, so that a wait for an event cannot hang a test. */
function atMost<T>(promise: Promise<T>, ms: number): Promise<T | undefined> {
  return Promise.race([promise, sleep(ms, undefined, { ref: false })]);
}

function signal(): { fired: Promise<void>; fire: () => void } {
  let fire!: () => void;
  const fired = new Promise<void>((resolve) => (fire = resolve));
  return { fired, fire };
}

/** One AckBatch call a worker made: the leases it acked and Baton's answer. */
interface Call {
  leases: string[];
  results: AckResult[];
  code: Status;
}

type AckBatchMethod = (
  request: AckBatchRequest,
  metadata: Metadata,
  options: object,
  callback: (error: ServiceError | null, response: AckBatchResponse) => void,
) => ClientUnaryCall;

/**
 * Records the AckBatch calls of `client`'s worker; the first goes out only once `hold`
 * resolves.
 */
function spyOnAckBatch(client: BatonClient, hold: () => Promise<unknown>): Call[] {
  const stub = client.stubs.queue;
  const original = stub.ackBatch.bind(stub) as unknown as AckBatchMethod;
  const calls: Call[] = [];
  const spy: AckBatchMethod = (request, metadata, options, callback) => {
    const call: Call = { leases: request.acks.map((ack) => ack.leaseId), results: [], code: Status.OK };
    calls.push(call);
    const go = () =>
      original(request, metadata, options, (error, response) => {
        call.code = error?.code ?? Status.OK;
        call.results = response?.results ?? [];
        callback(error, response);
      });
    if (calls.length === 1) {
      void hold().then(go);
      return { cancel() {} } as ClientUnaryCall; // the worker never cancels an ack
    }
    return go();
  };
  (stub as unknown as { ackBatch: AckBatchMethod }).ackBatch = spy;
  return calls;
}

/** Makes queued acks wait for the call in flight however long; `reached` hears the total-th. */
function countQueued(total: number, reached: () => void): void {
  ackBatchTuning.delayMs = 60_000;
  let queued = 0;
  ackBatchTuning.onQueued = () => {
    if (++queued === total) {
      reached();
    }
  };
}

test("concurrent handlers ack through fewer AckBatch calls than jobs", async () => {
  const { baton, client } = await start();
  const queue = unique("coalesced");
  const jobs = 500;
  const ids = await enqueueBatch(client, queue, jobs);
  const runs = new Map<string, number>();
  const acked = new Map<string, number>();
  const other: unknown[] = [];
  const stop = new AbortController();
  const consuming = client.consume(
    queue,
    async (job) => {
      runs.set(job.id, (runs.get(job.id) ?? 0) + 1);
      return "done";
    },
    {
      concurrency: 64,
      signal: stop.signal,
      onSettled: (job, error) =>
        error === undefined ? acked.set(job.id, (acked.get(job.id) ?? 0) + 1) : other.push(error),
    },
  );
  try {
    await eventually("500 jobs acked", () => acked.size === jobs, 30_000);
  } finally {
    stop.abort();
    await consuming;
  }
  assert.deepEqual(other, []);
  assert.ok([...acked.values()].every((count) => count === 1), "each job reported acked once");
  assert.ok(
    ids.every((id) => runs.get(id) === 1),
    "each job ran once",
  );
  for (const id of ids) {
    const job = await getJob(client, id);
    assert.deepEqual(
      [job?.state, job?.attempts, Buffer.from(job?.result ?? []).toString()],
      [JobState.JOB_STATE_SUCCEEDED, 1, "done"],
    );
  }
  const [batches, singles] = [await served(baton, "AckBatch"), await served(baton, "Ack")];
  assert.ok(batches > 0 && batches < jobs && singles === 0, `${batches} AckBatch and ${singles} Ack calls`);
});

test("acks queued in one event-loop turn go out as one call, the first included", async () => {
  // The handlers all finish in the turn that the last one starts in: no call is in flight,
  // yet their acks wait for the end of that turn and go out together.
  const { client } = await start();
  const calls = spyOnAckBatch(client, async () => undefined);
  const jobs = 8;
  const queue = unique("one-turn");
  await enqueueBatch(client, queue, jobs);
  const allRunning = signal();
  let running = 0;
  let acked = 0;
  const stop = new AbortController();
  const consuming = client.consume(
    queue,
    async () => {
      if (++running === jobs) {
        allRunning.fire();
      }
      await atMost(allRunning.fired, 10_000);
    },
    { concurrency: jobs, signal: stop.signal, onSettled: (_job, error) => (acked += error === undefined ? 1 : 0) },
  );
  try {
    await eventually("every job acked", () => acked === jobs, 20_000);
  } finally {
    stop.abort();
    await consuming;
  }
  assert.deepEqual(
    calls.map((call) => [call.leases.length, call.code]),
    [[jobs, Status.OK]],
  );
});

test("a lost lease in a batch is reported as from Ack while the others are acked", async () => {
  // One job's lease is lost while its handler runs (another party nacks the delivery to the
  // dead-letter set, which the worker is not told of); its ack goes out in the same call as
  // six others. A first job finishes alone, so that its call is in flight while they finish.
  const { baton, client } = await start();
  const jobs = 8;
  const allQueued = signal();
  const firstCallOut = signal();
  countQueued(jobs, allQueued.fire);
  const calls = spyOnAckBatch(client, async () => {
    firstCallOut.fire();
    await atMost(allQueued.fired, 10_000); // every other ack waits for this call
  });
  const queue = unique("lost");
  const ids = await enqueueBatch(client, queue, jobs);
  const [first, lost] = ids;
  const runs = new Map<string, number>();
  const leases = new Map<string, string>();
  const acked = new Set<string>();
  const allRunning = signal();
  let lostOutcome!: (error: unknown) => void;
  const lostSettled = new Promise<unknown>((resolve) => (lostOutcome = resolve));
  const stop = new AbortController();
  const consuming = client.consume(
    queue,
    async (job: Job) => {
      runs.set(job.id, (runs.get(job.id) ?? 0) + 1);
      leases.set(job.id, job.leaseId);
      if (runs.size === jobs) {
        allRunning.fire();
      }
      await atMost(allRunning.fired, 10_000);
      if (job.id === first) {
        return;
      }
      if (job.id === lost) {
        const stub = client.stubs.queue;
        const nack = NackRequest.fromPartial({ leaseId: job.leaseId, error: "lost", deadLetter: true });
        await unary(stub.nack.bind(stub), nack);
      }
      await atMost(firstCallOut.fired, 10_000); // their acks wait for the call in flight
    },
    {
      concurrency: jobs,
      signal: stop.signal,
      onSettled: (job, error) => {
        if (job.id === lost) {
          lostOutcome(error);
        } else if (error === undefined) {
          acked.add(job.id);
        }
      },
    },
  );
  let error: unknown;
  try {
    error = await atMost(lostSettled, 20_000);
    await eventually("the seven others acked", () => acked.size === jobs - 1);
  } finally {
    stop.abort();
    await consuming;
  }
  assert.ok(error instanceof FailedPreconditionError, `reported ${String(error)}`);
  assert.equal(error.code, Status.FAILED_PRECONDITION);
  assert.equal(reasonOf(error), ErrorReason.JOB_NOT_LEASED);
  assert.equal(calls.length, 2, "one call alone, then one with the acks that waited for it");
  const second = calls[1];
  assert.equal(second.leases.length, jobs - 1);
  assert.equal(second.results.length, jobs - 1);
  assert.ok(second.leases.includes(leases.get(lost)!), "the lost lease's ack is in the second call");
  second.leases.forEach((lease, i) => {
    const result = second.results[i];
    if (lease === leases.get(lost)) {
      assert.deepEqual([result.acked, result.reason], [false, "JOB_NOT_LEASED"]);
    } else {
      assert.ok(result.acked, `lease ${lease} was acked`);
    }
  });
  for (const id of ids) {
    const job = await getJob(client, id);
    const want = id === lost ? JobState.JOB_STATE_DEAD : JobState.JOB_STATE_SUCCEEDED;
    assert.deepEqual([job?.state, job?.attempts, runs.get(id)], [want, 1, 1], `job ${id}`);
  }
  assert.equal(await served(baton, "Ack"), 0);
});

test("an ack refused with its batch is sent alone for its own outcome", async () => {
  // A result over Baton's limit makes it refuse the whole AckBatch (INVALID_ARGUMENT); the
  // worker then acks each job of the call alone, so only that job fails, as with Ack.
  const config = join(mkdtempSync(join(tmpdir(), "baton-node-ack-")), "baton.toml");
  writeFileSync(config, "[limits]\nmax_value_bytes = 1024\n");
  const { baton, client } = await start(["--config", config]);
  const jobs = 6;
  const allQueued = signal();
  const firstCallOut = signal();
  countQueued(jobs, allQueued.fire);
  const calls = spyOnAckBatch(client, async () => {
    firstCallOut.fire();
    await atMost(allQueued.fired, 10_000);
  });
  const queue = unique("oversized");
  const ids = await enqueueBatch(client, queue, jobs);
  const [oversized, first] = ids;
  const allRunning = signal();
  let running = 0;
  const outcomes = new Map<string, unknown>();
  const stop = new AbortController();
  const consuming = client.consume(
    queue,
    async (job: Job) => {
      if (++running === jobs) {
        allRunning.fire();
      }
      await atMost(allRunning.fired, 10_000);
      if (job.id !== first) {
        await atMost(firstCallOut.fired, 10_000); // the rest go out together, after the first
      }
      return job.id === oversized ? Buffer.alloc(2048) : "ok";
    },
    { concurrency: jobs, signal: stop.signal, onSettled: (job, error) => outcomes.set(job.id, error) },
  );
  try {
    await eventually("every job settled", () => outcomes.size === jobs, 20_000);
  } finally {
    stop.abort();
    await consuming;
  }
  const refused = outcomes.get(oversized);
  assert.ok(refused instanceof InvalidArgumentError && refused.field === "result", `reported ${String(refused)}`);
  assert.ok(
    ids.slice(1).every((id) => outcomes.get(id) === undefined),
    "the others acked",
  );
  assert.deepEqual(
    calls.map((call) => [call.leases.length, call.code]),
    [
      [1, Status.OK],
      [jobs - 1, Status.INVALID_ARGUMENT],
    ],
  );
  assert.equal(await served(baton, "Ack"), jobs - 1, "the refused call's acks, one by one");
  for (const id of ids.slice(1)) {
    assert.equal((await getJob(client, id))?.state, JobState.JOB_STATE_SUCCEEDED);
  }
});

test("ackBatchSize 0 sends one Ack per job", async () => {
  const { baton, client } = await start();
  const queue = unique("single");
  await enqueueBatch(client, queue, 20);
  let acked = 0;
  const stop = new AbortController();
  const consuming = client.consume(queue, async () => {}, {
    concurrency: 4,
    ackBatchSize: 0,
    signal: stop.signal,
    onSettled: (_job, error) => (acked += error === undefined ? 1 : 0),
  });
  try {
    await eventually("20 jobs acked", () => acked === 20);
  } finally {
    stop.abort();
    await consuming;
  }
  assert.deepEqual([await served(baton, "Ack"), await served(baton, "AckBatch")], [20, 0]);
});
