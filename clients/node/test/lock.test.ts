import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createInterface } from "node:readline";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient, ErrorReason, FailedPreconditionError, Lease, LeaseLostError, LockNotAcquiredError, reasonOf } from "../src/index.js";
import { DescribeRequest, KeepAliveResponse, ReleaseRequest } from "../src/gen/baton/v1/lock.js";
import { unary } from "../src/unary.js";
import { Baton, Environment, eventually, freePort, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;
let addr: string;
let server: Baton;

before(async () => {
  environment = await Environment.start();
  server = await environment.baton();
  addr = server.addr;
  client = new BatonClient({ target: addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

test("a contended lock is exclusive and its fencing tokens strictly increase", async () => {
  const name = unique("order");
  const tokens: bigint[] = []; // in the order the critical sections ran
  let holders = 0;
  let overlaps = 0;
  const worker = async (id: number) => {
    for (let round = 0; round < 4; round++) {
      await client.withLock(name, { ttlMs: 2000, owner: `worker-${id}` }, async (lease) => {
        holders++;
        overlaps += holders === 1 ? 0 : 1;
        tokens.push(lease.fencingToken);
        await sleep(5);
        holders--;
      });
    }
  };
  await Promise.all([0, 1, 2, 3, 4].map(worker));
  assert.equal(overlaps, 0, "two holders at once");
  assert.equal(tokens.length, 20);
  for (let i = 1; i < tokens.length; i++) {
    assert.ok(tokens[i] > tokens[i - 1], `tokens not strictly increasing: ${tokens.join(",")}`);
  }
});

test("a lock with waitMs gives up while held", async () => {
  const name = unique("report");
  await client.withLock(name, { ttlMs: 5000, owner: "first" }, async () => {
    const started = Date.now();
    await assert.rejects(client.lock(name, { ttlMs: 5000, waitMs: 300 }), (error) => {
      assert.ok(error instanceof LockNotAcquiredError);
      assert.equal(error.holderOwner, "first");
      return true;
    });
    const waited = Date.now() - started;
    assert.ok(waited >= 250 && waited < 3000, `gave up after ${waited} ms`);
  });
});

test("release hands the lock to a waiter at once", async () => {
  const name = unique("invoice");
  const first = await client.lock(name, { ttlMs: 60_000 });
  const waiter = client.lock(name, { ttlMs: 60_000, waitMs: 10_000 });
  await sleep(200);
  const watched = first.signal; // read while held: the release aborts it
  await first.release();
  assert.equal(watched.aborted, true);
  assert.match(String(watched.reason), /released/);
  // A minute-long ttl means only the explicit release could have freed it this fast.
  const second = await Promise.race([waiter, sleep(5000).then(() => undefined)]);
  assert.ok(second instanceof Lease, "the waiter did not get the lock after release");
  assert.ok(second.fencingToken > first.fencingToken);
  await second.release();
  // First read after the release: already aborted, with the same reason.
  assert.equal(second.signal.aborted, true);
  assert.match(String(second.signal.reason), /released/);
});

test("losing the lease aborts its signal and rejects withLock", async () => {
  let signalReason: unknown;
  const outcome = client.withLock(unique("pay"), { ttlMs: 1000 }, async (lease) => {
    // Someone else holding the lease id releases it: the next renewal finds it gone.
    const locks = client.stubs.locks;
    const request = ReleaseRequest.fromPartial({ name: lease.name, leaseId: lease.leaseId });
    assert.equal((await unary(locks.release.bind(locks), request)).released, true);
    // Baton may notice the release before its answer reaches us: the signal can be aborted
    // already.
    const aborted = new Promise((done) =>
      lease.signal.aborted ? done(undefined) : lease.signal.addEventListener("abort", done, { once: true }),
    );
    await Promise.race([aborted, sleep(5000)]);
    signalReason = lease.signal.reason;
    assert.equal(lease.lost, true);
  });
  await assert.rejects(outcome, LeaseLostError);
  assert.ok(signalReason instanceof LeaseLostError, `signal reason: ${String(signalReason)}`);
  assert.ok(signalReason.cause instanceof FailedPreconditionError);
  assert.equal(reasonOf(signalReason.cause), ErrorReason.LEASE_NOT_HELD);
});

test("KeepAlive resumes on another replica when one shuts down", async () => {
  const first = await environment.baton();
  const secondAddr = `127.0.0.1:${await freePort()}`;
  const replicas = new BatonClient({ target: [first.addr, secondAddr] });
  try {
    // Only the first replica is up, so the lease and its KeepAlive stream live there.
    const ttlMs = 2000;
    const lease = await replicas.lock(unique("migration"), { ttlMs });
    await environment.baton(secondAddr);
    // Leave time for the channel's reconnect backoff to find the second replica.
    await sleep(1500);
    await first.terminate();
    await sleep(2 * ttlMs);
    assert.equal(lease.lost, false, `lease lost: ${String(lease.loss)}`);
    const locks = replicas.stubs.locks;
    const described = await unary(locks.describe.bind(locks), DescribeRequest.fromPartial({ name: lease.name }));
    assert.deepEqual(described.holders.map((holder) => holder.fencingToken), [lease.fencingToken]);
    await lease.release();
  } finally {
    replicas.close();
  }
});

test("heartbeats keep a short lease held, and heldUntil follows the last renewed one", async () => {
  const ttlMs = 600;
  let renewals = 0;
  const lease = await client.lock(unique("heartbeat"), { ttlMs, onRenew: () => renewals++ });
  try {
    assert.equal(lease.lossMarginMs, 60); // max(ttl/10, 50 ms)
    // Four ttls: without a heartbeat every ttl/3 the lease would be gone three times over.
    const started = performance.now();
    while (performance.now() - started < 4 * ttlMs) {
      await sleep(25);
      const ahead = lease.heldUntil - performance.now();
      assert.ok(ahead > 0 && ahead <= ttlMs, `heldUntil ${ahead.toFixed(1)} ms ahead`);
    }
    assert.equal(lease.lost, false, `lease lost: ${String(lease.loss)}`);
    assert.ok(renewals >= 8, `only ${renewals} renewals in ${4 * ttlMs} ms`);
    const locks = client.stubs.locks;
    const described = await unary(locks.describe.bind(locks), DescribeRequest.fromPartial({ name: lease.name }));
    assert.deepEqual(described.holders.map((holder) => holder.fencingToken), [lease.fencingToken]);
  } finally {
    await lease.release();
  }
});

test("a lease granted after a wait longer than its ttl is proven by KeepAlive, not lost", async () => {
  const name = unique("handover");
  const first = await client.lock(name, { ttlMs: 5000 });
  // The waiter's grant comes ~1 s after its Acquire was sent: more than its own ttl.
  const waiter = client.lock(name, { ttlMs: 400, waitMs: 10_000 });
  await sleep(1000);
  await first.release();
  const second = await waiter;
  assert.equal(second.lost, false, `lost at once: ${String(second.loss)}`);
  await sleep(800); // two ttls
  assert.equal(second.lost, false, `lost: ${String(second.loss)}`);
  await second.release();
});

test("a SIGSTOPped holder's lease goes to a waiter within 2 s, after the holder's own loss instant", async () => {
  const name = unique("frozen");
  const holder = spawn(process.execPath, [`${import.meta.dirname}/lock-holder.js`, addr, name], {
    stdio: ["ignore", "pipe", "inherit"],
  });
  try {
    const held: number[] = []; // the wall-clock loss instants the holder reported
    let lostAt: number | undefined;
    createInterface({ input: holder.stdout }).on("line", (line) => {
      const [what, at] = line.split(" ");
      if (what === "held") {
        held.push(Number(at));
      } else if (what === "lost") {
        lostAt = Number(at);
      }
    });
    await eventually("the holder has renewed a few times", () => held.length >= 4, 15_000);
    const stoppedAt = Date.now();
    holder.kill("SIGSTOP");
    const waiter = new BatonClient({ target: addr });
    let grantedAt: number;
    try {
      const lease = await waiter.lock(name, { ttlMs: 5000, waitMs: 5000 });
      grantedAt = Date.now();
      await lease.release();
    } finally {
      waiter.close();
    }
    const lastLossAt = Math.max(...held);
    console.log(
      `frozen holder: grant ${grantedAt - stoppedAt} ms after SIGSTOP, ` +
        `${(grantedAt - lastLossAt).toFixed(0)} ms after the holder's last reported loss instant`,
    );
    assert.ok(grantedAt - stoppedAt < 2000, `granted ${grantedAt - stoppedAt} ms after SIGSTOP`);
    assert.ok(lastLossAt < grantedAt, `the holder counted itself holder until ${lastLossAt}, granted at ${grantedAt}`);
    assert.equal(lostAt, undefined, "the holder reported a loss while stopped");
    const continuedAt = Date.now();
    holder.kill("SIGCONT");
    await eventually("the resumed holder reports its loss", () => lostAt !== undefined, 5000);
    console.log(`resumed holder: loss reported ${lostAt! - continuedAt} ms after SIGCONT`);
    assert.ok(lostAt! - continuedAt < 500, `loss reported ${lostAt! - continuedAt} ms after SIGCONT`);
  } finally {
    holder.kill("SIGKILL");
  }
});

/** One KeepAlive answer, with `heldUntil` of the lease just before and just after it. */
interface Answer {
  renewed: boolean;
  heldUntilBefore: number;
  heldUntilAfter: number;
}

/**
 * A client whose KeepAlive answers are recorded in `answers`; `lease()` names the lease whose
 * `heldUntil` they are compared with.
 */
function watchedClient(lease: () => Lease | undefined): { watched: BatonClient; answers: Answer[] } {
  const watched = new BatonClient({ target: addr });
  environment.onClose(() => watched.close());
  const answers: Answer[] = [];
  const stub = watched.stubs.locks;
  const keepAlive = stub.keepAlive.bind(stub);
  stub.keepAlive = ((...args: Parameters<typeof keepAlive>) => {
    const call = keepAlive(...args);
    // Registered before the lease's own listener, which runs in the same emit: the microtask
    // reads heldUntil once the lease has handled the answer.
    call.on("data", (response: KeepAliveResponse) => {
      const answer = { renewed: response.renewed, heldUntilBefore: lease()?.heldUntil ?? NaN, heldUntilAfter: NaN };
      answers.push(answer);
      queueMicrotask(() => (answer.heldUntilAfter = lease()?.heldUntil ?? NaN));
    });
    return call;
  }) as typeof stub.keepAlive;
  return { watched, answers };
}

test("heartbeats answered renewed=false during a Redis stall leave heldUntil, and the lease is kept", async () => {
  // A heartbeat every 2 s; Baton gives up on a frozen Redis after its 1 s redis timeout and
  // answers renewed=false. Frozen from just after a renewal (sent at t0) until t0 + 3.5 s:
  // the heartbeat of t0 + 2 s is answered renewed=false at about t0 + 3 s, the one of t0 + 4 s
  // renews, well before the loss instant t0 + 5.4 s (ttl - margin).
  const ttlMs = 6000;
  let lease: Lease | undefined;
  const { watched, answers } = watchedClient(() => lease);
  let renewals = 0;
  lease = await watched.lock(unique("stall"), { ttlMs, onRenew: () => renewals++ });
  try {
    await eventually("a first renewal answered", () => renewals >= 1, 5000);
    const heldUntilBefore = lease.heldUntil;
    const renewedSentAt = heldUntilBefore - ttlMs;
    environment.redis.freeze();
    try {
      await sleep(renewedSentAt + 3500 - performance.now());
    } finally {
      environment.redis.thaw();
    }
    const unrenewed = answers.filter((answer) => !answer.renewed);
    assert.ok(unrenewed.length >= 1, `no heartbeat answered renewed=false during the stall: ${JSON.stringify(answers)}`);
    for (const answer of unrenewed) {
      assert.equal(answer.heldUntilBefore, heldUntilBefore, "heldUntil moved before the renewed=false answer");
      assert.equal(answer.heldUntilAfter, heldUntilBefore, "a renewed=false answer moved heldUntil");
    }
    await eventually("a heartbeat renewed again", () => lease!.heldUntil > heldUntilBefore + ttlMs / 3, 5000);
    console.log(
      `redis stall: ${unrenewed.length} heartbeat(s) answered renewed=false, heldUntil unmoved; renewed again ` +
        `${(heldUntilBefore - lease.lossMarginMs - performance.now()).toFixed(0)} ms before the loss instant`,
    );
    assert.equal(lease.lost, false, `lease lost: ${String(lease.loss)}`);
    const locks = client.stubs.locks;
    const described = await unary(locks.describe.bind(locks), DescribeRequest.fromPartial({ name: lease.name }));
    assert.deepEqual(described.holders.map((holder) => holder.fencingToken), [lease.fencingToken]);
  } finally {
    await lease.release();
  }
});

test("heartbeats answered renewed=false do not keep a lease: lost locally before Baton could grant it", async () => {
  // A heartbeat every second; Redis frozen from just after a renewal (sent at t0) for good:
  // the heartbeat of t0 + 1 s is answered renewed=false at about t0 + 2 s, before the loss
  // instant t0 + 2.7 s. Had that answer moved heldUntil, the loss would come a second later.
  const ttlMs = 3000;
  let lease: Lease | undefined;
  const { watched, answers } = watchedClient(() => lease);
  let renewals = 0;
  lease = await watched.lock(unique("stalled"), { ttlMs, onRenew: () => renewals++ });
  let reportedAt = NaN;
  let reportedAtWall = NaN;
  lease.signal.addEventListener("abort", () => ((reportedAt = performance.now()), (reportedAtWall = Date.now())));
  await eventually("a first renewal answered", () => renewals >= 1, 5000);
  const heldUntil = lease.heldUntil;
  const expiresAt = lease.expiresAt!.getTime(); // by the Redis server's clock (this machine's)
  environment.redis.freeze();
  try {
    await eventually("the loss reported", () => lease!.lost, 5000);
    const unrenewed = answers.filter((answer) => !answer.renewed);
    console.log(
      `stalled redis: ${unrenewed.length} renewed=false answer(s) before the loss, reported ` +
        `${(heldUntil - reportedAt).toFixed(0)} ms before heldUntil, ${expiresAt - reportedAtWall} ms before ` +
        `Redis's expiry`,
    );
    assert.ok(unrenewed.length >= 1, `no renewed=false answer before the loss: ${JSON.stringify(answers)}`);
    assert.ok(unrenewed.every((answer) => answer.heldUntilAfter === heldUntil), "a renewed=false answer moved heldUntil");
    assert.equal(lease.heldUntil, heldUntil);
    assert.ok(reportedAt >= heldUntil - lease.lossMarginMs - 1, "loss reported before its instant");
    assert.ok(reportedAt < heldUntil, `loss reported ${(reportedAt - heldUntil).toFixed(0)} ms after heldUntil`);
    assert.ok(reportedAtWall < expiresAt, `loss reported ${reportedAtWall - expiresAt} ms after Redis's expiry`);
    assert.equal(lease.loss?.cause, undefined, `the loss came from the stream: ${String(lease.loss?.cause)}`);
  } finally {
    environment.redis.thaw();
  }
  await assert.rejects(lease.release(), LeaseLostError);
});

test("a lock cycle is one KeepAlive stream: no Acquire, no Release", async () => {
  const calls = (method: string) =>
    server.counter("baton_grpc_requests_total", { service: "baton.v1.LockService", method });
  const before = { acquire: await calls("Acquire"), release: await calls("Release"), keepAlive: await calls("KeepAlive") };
  const cycles = 20;
  for (let i = 0; i < cycles; i++) {
    const lease = await client.lock(unique(`cycle-${i}`), { ttlMs: 5000 });
    assert.ok(lease.lossAt - performance.now() > 4000, "a lease granted at once is dated by the call");
    await lease.release();
  }
  await eventually("every stream counted", async () => (await calls("KeepAlive")) - before.keepAlive >= cycles);
  assert.equal((await calls("KeepAlive")) - before.keepAlive, cycles);
  assert.equal((await calls("Acquire")) - before.acquire, 0);
  assert.equal((await calls("Release")) - before.release, 0);
});
