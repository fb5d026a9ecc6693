import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient, FailedPreconditionError, Lease, LeaseLostError, LockNotAcquiredError } from "../src/index.js";
import { DescribeRequest, ReleaseRequest } from "../src/gen/baton/v1/lock.js";
import { unary } from "../src/unary.js";
import { Environment, freePort, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
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
  await first.release();
  assert.equal(first.signal.aborted, true);
  // A minute-long ttl means only the explicit release could have freed it this fast.
  const second = await Promise.race([waiter, sleep(5000).then(() => undefined)]);
  assert.ok(second instanceof Lease, "the waiter did not get the lock after release");
  assert.ok(second.fencingToken > first.fencingToken);
  await second.release();
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
  assert.equal(signalReason.cause.reason, "LEASE_NOT_HELD");
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
