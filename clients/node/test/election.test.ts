import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import {
  BatonClient,
  ElectionEvent,
  ErrorReason,
  FailedPreconditionError,
  InvalidArgumentError,
  Leadership,
  LeaseLostError,
  reasonOf,
} from "../src/index.js";
import { ResignRequest } from "../src/gen/baton/v1/election.js";
import { unary } from "../src/unary.js";
import { Environment, eventually, freePort, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

/** Resolves once `signal` aborts (at once if it has), or after `patienceMs`. */
function aborted(signal: AbortSignal, patienceMs: number): Promise<void> {
  return Promise.race([
    new Promise<void>((done) => (signal.aborted ? done() : signal.addEventListener("abort", () => done(), { once: true }))),
    sleep(patienceMs).then(() => undefined),
  ]);
}

/** Collects the events of `client.observe(name)` until `stop` aborts. */
function collect(observer: BatonClient, name: string, stop: AbortSignal): { events: ElectionEvent[]; done: Promise<void> } {
  const events: ElectionEvent[] = [];
  const done = (async () => {
    for await (const event of observer.observe(name, { signal: stop })) {
      events.push(event);
    }
  })();
  return { events, done };
}

function summary(events: ElectionEvent[]): string {
  return JSON.stringify(events.map((event) => [event.kind, event.leader?.term.toString(), event.leader?.value.toString()]));
}

test("candidates lead one at a time, each after the previous one resigned, with rising terms", { timeout: 60_000 }, async () => {
  const name = unique("scheduler");
  const terms: bigint[] = []; // in the order the leaderships ran
  let leaders = 0;
  let overlaps = 0;
  const candidate = async (id: number) => {
    for (let round = 0; round < 3; round++) {
      // A minute-long ttl: only resigning when the work settles hands over this fast.
      await client.runAsLeader(
        name,
        async (leadership) => {
          leaders++;
          overlaps += leaders === 1 ? 0 : 1;
          terms.push(leadership.term);
          await sleep(20);
          leaders--;
        },
        { ttlMs: 60_000, owner: `candidate-${id}` },
      );
    }
  };
  const started = Date.now();
  await Promise.all([0, 1, 2].map(candidate));
  assert.equal(overlaps, 0, "two leaders at once");
  assert.equal(terms.length, 9);
  for (let i = 1; i < terms.length; i++) {
    assert.ok(terms[i] > terms[i - 1], `terms not strictly increasing: ${terms.join(",")}`);
  }
  assert.ok(Date.now() - started < 30_000, `nine handovers took ${Date.now() - started} ms`);
  assert.equal(await client.leader(name), undefined, "a leader remains after every candidate resigned");
});

test("a second candidate waits while the first leads and is elected once its work settles", { timeout: 60_000 }, async () => {
  const name = unique("compactor");
  const order: string[] = [];
  let finishFirst!: () => void;
  const firstMayFinish = new Promise<void>((done) => (finishFirst = done));
  let firstTerm = 0n;
  const first = client.runAsLeader(name, async (leadership) => {
    order.push("first elected");
    firstTerm = leadership.term;
    await firstMayFinish;
    order.push("first done");
  }, { ttlMs: 60_000 });
  await eventually("the first candidate leads", () => order.length === 1, 5000);
  let secondTerm = 0n;
  const second = client.runAsLeader(name, async (leadership) => {
    order.push("second elected");
    secondTerm = leadership.term;
  }, { ttlMs: 60_000 });
  // Time for the second campaign to reach Baton and wait; it must not be elected meanwhile.
  await sleep(300);
  assert.deepEqual(order, ["first elected"]);
  assert.equal((await client.leader(name))?.term, firstTerm);
  finishFirst();
  await Promise.all([first, second]);
  assert.deepEqual(order, ["first elected", "first done", "second elected"]);
  assert.ok(secondTerm > firstTerm, `terms ${firstTerm} then ${secondTerm}`);
});

test("leader() answers the leader's value, owner and term, and undefined once it resigned", async () => {
  const name = unique("primary");
  let leadership: Leadership | undefined;
  await client.runAsLeader(
    name,
    async (held) => {
      leadership = held;
      const leader = await client.leader(name);
      assert.ok(leader, "nobody leads");
      assert.equal(leader.value.toString(), "10.0.0.7:5432");
      assert.equal(leader.owner, "db-7");
      assert.equal(leader.term, held.term);
      assert.equal(leader.name, name);
      assert.ok(leader.since instanceof Date && leader.expiresAt instanceof Date);
      const proclaimed = await held.proclaim("10.0.0.8:5432");
      assert.equal(proclaimed.term, held.term);
      assert.equal((await client.leader(name))?.value.toString(), "10.0.0.8:5432");
    },
    { value: "10.0.0.7:5432", owner: "db-7", ttlMs: 5000 },
  );
  assert.equal(leadership?.signal.aborted, true, "the signal did not abort on resigning");
  assert.equal(leadership?.lost, false);
  assert.equal(await client.leader(name), undefined);
});

test("losing the leadership aborts its signal and rejects runAsLeader", async () => {
  let signalReason: unknown;
  const outcome = client.runAsLeader(unique("billing"), async (leadership) => {
    // Someone else holding the lease id resigns it: the next heartbeat finds it gone.
    const elections = client.stubs.elections;
    const request = ResignRequest.fromPartial({ name: leadership.name, leaseId: leadership.lease.leaseId });
    assert.equal((await unary(elections.resign.bind(elections), request)).resigned, true);
    await aborted(leadership.signal, 5000);
    signalReason = leadership.signal.reason;
    assert.equal(leadership.lost, true);
    await assert.rejects(leadership.proclaim("too late"), LeaseLostError);
  }, { ttlMs: 1000 });
  await assert.rejects(outcome, LeaseLostError);
  assert.ok(signalReason instanceof LeaseLostError, `signal reason: ${String(signalReason)}`);
  assert.ok(signalReason.cause instanceof FailedPreconditionError);
  assert.equal(reasonOf(signalReason.cause), ErrorReason.LEASE_NOT_HELD);
});

test("a leader whose only replica dies is told it lost before its ttl runs out", async () => {
  const ttlMs = 1500;
  const replica = await environment.baton();
  // A short default timeout bounds the Resign attempts once the leadership is lost.
  const stranded = new BatonClient({ target: replica.addr, timeoutMs: 1000 });
  try {
    let killedAt = NaN;
    let abortedAt = NaN;
    let signalReason: unknown;
    let lossAt = NaN;
    const outcome = stranded.runAsLeader(unique("ingest"), async (leadership) => {
      await replica.kill();
      killedAt = performance.now();
      lossAt = leadership.lease.lossAt;
      await aborted(leadership.signal, 10_000);
      abortedAt = performance.now();
      signalReason = leadership.signal.reason;
    }, { ttlMs });
    await assert.rejects(outcome, LeaseLostError);
    assert.ok(signalReason instanceof LeaseLostError, `signal reason: ${String(signalReason)}`);
    // No renewal after the kill, so the loss comes at the lossAt read just after it.
    assert.ok(abortedAt - killedAt < ttlMs, `told ${(abortedAt - killedAt).toFixed(0)} ms after the kill`);
    assert.ok(abortedAt >= lossAt - 1, `told ${(lossAt - abortedAt).toFixed(0)} ms before the loss instant`);
  } finally {
    stranded.close();
  }
});

test("a candidate's signal aborts its campaign; the leader's signal ends its leadership", async () => {
  const name = unique("reaper");
  const leaderStops = new AbortController();
  const leading = client.runAsLeader(
    name,
    async (leadership) => {
      await aborted(leadership.signal, 10_000);
      assert.equal(leadership.lost, false);
      return String(leadership.signal.reason);
    },
    { signal: leaderStops.signal },
  );
  await eventually("the first candidate leads", async () => (await client.leader(name)) !== undefined, 5000);
  const giveUp = new AbortController();
  let ran = false;
  const waiting = client.runAsLeader(name, async () => void (ran = true), { signal: giveUp.signal });
  await sleep(200);
  giveUp.abort(new Error("not needed any more"));
  await assert.rejects(waiting, /not needed any more/);
  assert.equal(ran, false);
  leaderStops.abort(new Error("shutting down"));
  assert.match(await leading, /shutting down/);
  assert.equal(await client.leader(name), undefined);
});

test("observe reports CURRENT, ELECTED, PROCLAIMED and RESIGNED in order, and ends on abort", async () => {
  const name = unique("coordinator");
  const stop = new AbortController();
  const { events, done } = collect(client, name, stop.signal);
  await eventually("the current state observed", () => events.length === 1, 5000);
  let term = 0n;
  await client.runAsLeader(
    name,
    async (leadership) => {
      term = leadership.term;
      await eventually("the election observed", () => events.length === 2, 5000);
      await leadership.proclaim("node-b");
      await eventually("the proclamation observed", () => events.length === 3, 5000);
    },
    { value: "node-a", ttlMs: 5000 },
  );
  await eventually("the resignation observed", () => events.length === 4, 5000);
  stop.abort();
  await done;
  assert.deepEqual(
    events.map((event) => [event.kind, event.leader?.term, event.leader?.value.toString()]),
    [
      ["current", undefined, undefined],
      ["elected", term, "node-a"],
      ["proclaimed", term, "node-b"],
      ["resigned", term, "node-b"],
    ],
    summary(events),
  );
  assert.ok(events.every((event) => event.at instanceof Date));
});

test("observe reopens on another replica when one shuts down, starting again with CURRENT", { timeout: 60_000 }, async () => {
  const name = unique("router");
  const first = await environment.baton();
  const secondAddr = `127.0.0.1:${await freePort()}`;
  const observer = new BatonClient({ target: [first.addr, secondAddr] });
  const stop = new AbortController();
  try {
    // Only the first replica is up, so the stream opens there.
    const { events, done } = collect(observer, name, stop.signal);
    await eventually("the current state observed", () => events.length === 1, 5000);
    let finish!: () => void;
    const mayFinish = new Promise<void>((resolve) => (finish = resolve));
    let term = 0n;
    const leading = client.runAsLeader(name, async (leadership) => {
      term = leadership.term;
      await mayFinish;
    }, { value: "v1", ttlMs: 5000 });
    await eventually("the election observed", () => events.length === 2, 5000);
    await environment.baton(secondAddr);
    // Draining ends the stream UNAVAILABLE; the reopened one waits for the second replica.
    await first.terminate();
    await eventually("the reopened stream's current state observed", () => events.length === 3, 15_000);
    finish();
    await leading;
    await eventually("the resignation observed", () => events.length === 4, 5000);
    stop.abort();
    await done;
    assert.deepEqual(
      events.map((event) => [event.kind, event.leader?.term]),
      [
        ["current", undefined],
        ["elected", term],
        ["current", term],
        ["resigned", term],
      ],
      summary(events),
    );
  } finally {
    stop.abort();
    observer.close();
  }
});

test("observe rejects a bad name instead of reopening", async () => {
  const iteration = (async () => {
    for await (const event of client.observe("")) {
      assert.fail(`an event for an empty name: ${event.kind}`);
    }
  })();
  const outcome = await Promise.race([iteration.then(() => "ended", (error: unknown) => error), sleep(5000).then(() => "still open")]);
  assert.ok(outcome instanceof InvalidArgumentError, `observe(""): ${String(outcome)}`);
});
