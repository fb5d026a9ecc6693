// Groups and start limits: enqueue's `group`, configureQueue and getQueueConfig, against real
// redis-server and baton processes.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient, ConsumeOptions, InvalidArgumentError, Job, JobHandler } from "../src/index.js";
import { Environment, eventually, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

/**
 * Runs consume until `total` deliveries were acked, then stops it; rejects if anything but an
 * ack was reported (beyond `allowFailures` handler errors) or consume rejected.
 */
async function consumeUntil(
  queue: string,
  total: number,
  handler: JobHandler,
  options: ConsumeOptions & { allowFailures?: number; patienceMs?: number } = {},
): Promise<void> {
  const stop = new AbortController();
  let acked = 0;
  const failures: unknown[] = [];
  const running = client.consume(queue, handler, {
    ...options,
    signal: stop.signal,
    onSettled: (_job, error) => {
      if (error === undefined) {
        acked++;
      } else {
        failures.push(error);
      }
    },
  });
  let ended = false;
  running.finally(() => (ended = true)).catch(() => undefined);
  try {
    await eventually(`${total} jobs acked`, () => ended || acked >= total, options.patienceMs ?? 20_000);
  } finally {
    stop.abort();
    await running;
  }
  assert.equal(acked, total);
  assert.equal(failures.length, options.allowFailures ?? 0, String(failures));
}

/** Tracks how many handlers run at once, per group and in all. */
class Occupancy {
  readonly active = new Map<string, number>();
  readonly maxActive = new Map<string, number>();
  total = 0;
  maxTotal = 0;

  enter(group: string): number {
    const now = (this.active.get(group) ?? 0) + 1;
    this.active.set(group, now);
    this.maxActive.set(group, Math.max(this.maxActive.get(group) ?? 0, now));
    this.maxTotal = Math.max(this.maxTotal, ++this.total);
    return now;
  }

  leave(group: string): void {
    this.active.set(group, (this.active.get(group) ?? 0) - 1);
    this.total--;
  }
}

/** Enqueues `perGroup` jobs to each group, interleaved, each group's in order; payload "group:i". */
async function enqueueGroups(queue: string, groups: string[], perGroup: number): Promise<void> {
  for (let i = 0; i < perGroup; i++) {
    // The groups in parallel, each group's jobs one after the other: enqueue order within a group.
    await Promise.all(groups.map((group) => client.enqueue(queue, `${group}:${i}`, { group })));
  }
}

function indexOf(job: Job): number {
  return Number(job.payload.toString().split(":").at(-1));
}

test("a queue never configured has the empty configuration, and getQueueConfig reads back what was set", async () => {
  const queue = unique("configured");
  const empty = { groupConcurrency: 0, groupFifo: false, startLimit: undefined, startLimitPerGroup: false };
  assert.deepEqual(await client.getQueueConfig(queue), empty);

  await client.configureQueue(queue, {
    groupConcurrency: 7,
    startLimit: { limit: 5, periodMs: 1500, algorithm: "token_bucket", burst: 2 },
    startLimitPerGroup: true,
  });
  assert.deepEqual(await client.getQueueConfig(queue), {
    groupConcurrency: 7,
    groupFifo: false,
    startLimit: { limit: 5, periodMs: 1500, algorithm: "token_bucket", burst: 2 },
    startLimitPerGroup: true,
  });

  // The whole configuration is replaced: what is left out is off; the default algorithm is a
  // sliding window.
  await client.configureQueue(queue, { groupFifo: true, startLimit: { limit: 20, periodMs: 1000 } });
  assert.deepEqual(await client.getQueueConfig(queue), {
    groupConcurrency: 0,
    groupFifo: true,
    startLimit: { limit: 20, periodMs: 1000, algorithm: "sliding_window", burst: 0 },
    startLimitPerGroup: false,
  });

  await client.configureQueue(queue, {});
  assert.deepEqual(await client.getQueueConfig(queue), empty);
});

test("groupConcurrency over 10,000 is refused, naming config.group_concurrency; 10,000 is accepted", async () => {
  const queue = unique("configured");
  await assert.rejects(client.configureQueue(queue, { groupConcurrency: 10_001 }), (error) => {
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.equal(error.field, "config.group_concurrency");
    return true;
  });
  assert.equal((await client.getQueueConfig(queue)).groupConcurrency, 0, "nothing is written");
  await client.configureQueue(queue, { groupConcurrency: 10_000 });
  assert.equal((await client.getQueueConfig(queue)).groupConcurrency, 10_000);
});

test("an invalid start limit is refused, naming its field under config.start_limit", async () => {
  const queue = unique("configured");
  await assert.rejects(client.configureQueue(queue, { startLimit: { limit: 0, periodMs: 1000 } }), (error) => {
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.equal(error.field, "config.start_limit.limit");
    return true;
  });
});

test("strict FIFO groups: each group's jobs run in enqueue order, never two of a group at once", async () => {
  const queue = unique("fifo");
  await client.configureQueue(queue, { groupFifo: true });
  const groups = ["acme", "globex", "initech"];
  await enqueueGroups(queue, groups, 10);
  const occupancy = new Occupancy();
  const order = new Map<string, number[]>(groups.map((group) => [group, []]));
  const overlaps: string[] = [];
  await consumeUntil(
    queue,
    30,
    async (job) => {
      if (occupancy.enter(job.group) > 1) {
        overlaps.push(`${job.payload} ran while another job of ${job.group} did`);
      }
      order.get(job.group)?.push(indexOf(job));
      await sleep(5); // the handler's work
      occupancy.leave(job.group);
    },
    { concurrency: 8 },
  );
  assert.deepEqual(overlaps, []);
  for (const group of groups) {
    assert.deepEqual(order.get(group), [...Array(10).keys()], `the jobs of ${group}`);
  }
  // One at a time per group, so never more than one per group in all; but the groups side by side.
  assert.ok(occupancy.maxTotal <= groups.length, `${occupancy.maxTotal} handlers at once`);
  assert.ok(occupancy.maxTotal >= 2, "the groups ran one after the other");
});

test("deliveries go round-robin across groups: a busy group does not starve a later one", async () => {
  const queue = unique("tenants");
  for (let start = 0; start < 30; start += 10) {
    await Promise.all(Array.from({ length: 10 }, (_, i) => client.enqueue(queue, `busy:${start + i}`, { group: "busy" })));
  }
  for (let i = 0; i < 3; i++) {
    await client.enqueue(queue, `quiet:${i}`, { group: "quiet" });
  }
  const delivered: string[] = [];
  await consumeUntil(
    queue,
    33,
    async (job) => {
      delivered.push(job.group);
    },
    { concurrency: 1 },
  );
  // Alternating, the quiet group's three are among the first six; a margin of two.
  const quietAt = delivered.flatMap((group, i) => (group === "quiet" ? [i] : []));
  assert.equal(quietAt.length, 3);
  assert.ok(quietAt[2] < 8, `the quiet group's jobs were deliveries ${quietAt.join(", ")} of 33`);
});

test("a strict FIFO group waits for its failed job's retry: the next job never overtakes it", async () => {
  const queue = unique("fifo");
  await client.configureQueue(queue, { groupFifo: true });
  const retryBackoff = { initialMs: 200, maxMs: 200, multiplier: 1 };
  for (let i = 0; i < 5; i++) {
    await client.enqueue(queue, `acme:${i}`, { group: "acme", retryBackoff });
  }
  const attempts: string[] = [];
  await consumeUntil(
    queue,
    5,
    async (job) => {
      attempts.push(`${indexOf(job)}/${job.attempt}`);
      if (indexOf(job) === 1 && job.attempt === 1) {
        throw new Error("transient");
      }
    },
    { concurrency: 8, allowFailures: 1 },
  );
  assert.deepEqual(attempts, ["0/1", "1/1", "1/2", "2/1", "3/1", "4/1"]);
});

test("groupConcurrency 2 is never exceeded by a worker of concurrency 16", async () => {
  const queue = unique("tenants");
  await client.configureQueue(queue, { groupConcurrency: 2 });
  const groups = ["a", "b", "c", "d"];
  await enqueueGroups(queue, groups, 15);
  const ungrouped = 4; // not limited by any group
  for (let i = 0; i < ungrouped; i++) {
    await client.enqueue(queue, `none:${i}`);
  }
  const occupancy = new Occupancy();
  const seenGroups = new Set<string>();
  await consumeUntil(
    queue,
    groups.length * 15 + ungrouped,
    async (job) => {
      seenGroups.add(job.group);
      occupancy.enter(job.group);
      await sleep(10); // the handler's work
      occupancy.leave(job.group);
    },
    { concurrency: 16 },
  );
  assert.deepEqual([...seenGroups].sort(), ["", ...groups]);
  for (const group of groups) {
    assert.ok((occupancy.maxActive.get(group) ?? 0) <= 2, `${occupancy.maxActive.get(group)} jobs of ${group} at once`);
  }
  // Not one at a time either: the limit is 2, and the worker had room for more.
  assert.ok([...occupancy.maxActive.values()].some((max) => max === 2), "no group ever ran 2 jobs at once");
});

/** How many of `starts` (sorted ms) fall within some span of `spanMs`, at most. */
function busiestSpan(starts: number[], spanMs: number): number {
  let most = 0;
  for (let first = 0, last = 0; last < starts.length; last++) {
    while (starts[last] - starts[first] >= spanMs) {
      first++;
    }
    most = Math.max(most, last - first + 1);
  }
  return most;
}

test("a start limit of 20 per second (sliding window): never more than 20 starts within a second, all jobs run", async () => {
  const queue = unique("limited");
  await client.configureQueue(queue, { startLimit: { limit: 20, periodMs: 1000, algorithm: "sliding_window" } });
  const total = 45; // three windows' worth: 20, 20, 5
  for (let start = 0; start < total; start += 15) {
    await Promise.all(Array.from({ length: 15 }, (_, i) => client.enqueue(queue, `job:${start + i}`)));
  }
  const starts: number[] = [];
  await consumeUntil(
    queue,
    total,
    async () => {
      starts.push(Date.now());
    },
    { concurrency: 16 },
  );
  assert.equal(starts.length, total);
  const first = starts[0];
  // Margins for the trip from Baton's clock to the handler: 200 ms each way.
  const inFirstSecond = starts.filter((at) => at - first < 800).length;
  assert.ok(inFirstSecond <= 20, `${inFirstSecond} starts within 800 ms of the first`);
  assert.ok(busiestSpan(starts, 800) <= 20, `${busiestSpan(starts, 800)} starts within some 800 ms`);
  // 45 starts need three windows: the last is at least two periods after the first, less margins.
  assert.ok(starts[total - 1] - first >= 1600, `all ${total} started within ${starts[total - 1] - first} ms`);
});

test("a start limit per group limits each group on its own", async () => {
  const queue = unique("limited");
  await client.configureQueue(queue, {
    startLimit: { limit: 5, periodMs: 1000 },
    startLimitPerGroup: true,
  });
  const groups = ["a", "b"];
  await enqueueGroups(queue, groups, 8);
  const starts = new Map<string, number[]>(groups.map((group) => [group, []]));
  await consumeUntil(
    queue,
    16,
    async (job) => {
      starts.get(job.group)?.push(Date.now());
    },
    { concurrency: 16 },
  );
  for (const group of groups) {
    const times = starts.get(group) ?? [];
    assert.equal(times.length, 8);
    assert.ok(busiestSpan(times, 800) <= 5, `${busiestSpan(times, 800)} starts of ${group} within some 800 ms`);
  }
  // Per group, not queue-wide: both groups' first five started within the first window.
  const all = [...starts.values()].flat().sort((x, y) => x - y);
  assert.ok(busiestSpan(all, 800) >= 10, `only ${busiestSpan(all, 800)} starts of both groups within 800 ms`);
});

test("job.group reaches the handler and the job's record; ungrouped jobs have none", async () => {
  const queue = unique("grouped");
  await client.enqueue(queue, "g", { group: "tenant-42" });
  await client.enqueue(queue, "u");
  const { jobs } = await client.listJobs(queue, "ready");
  assert.deepEqual(jobs.map((job) => [job.payload.toString(), job.group]).sort(), [["g", "tenant-42"], ["u", ""]]);
  const delivered = new Map<string, string>();
  await consumeUntil(queue, 2, async (job) => {
    delivered.set(job.payload.toString(), job.group);
  });
  assert.deepEqual(Object.fromEntries(delivered), { g: "tenant-42", u: "" });
});
