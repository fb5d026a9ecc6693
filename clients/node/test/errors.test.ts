import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Server, ServerCredentials, status as Status } from "@grpc/grpc-js";

import { BatonClient, BatonError, DeadlineExceededError, ErrorReason, FailedPreconditionError, fromGrpcError, InvalidArgumentError, reasonOf, UnavailableError } from "../src/index.js";
import { RenewRequest } from "../src/gen/baton/v1/lock.js";
import { CheckResponse, RateLimiterServiceServer, RateLimiterServiceService } from "../src/gen/baton/v1/ratelimit.js";
import { unary } from "../src/unary.js";
import { Environment, eventually, unique } from "./harness.js";

let environment: Environment;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  client = new BatonClient({ target: (await environment.baton()).addr });
  environment.onClose(() => client.close());
});
after(() => environment.close());

test("INVALID_ARGUMENT names the field", async () => {
  await assert.rejects(client.allow("", { limit: 5, periodMs: 60_000 }), (error) => {
    assert.ok(error instanceof InvalidArgumentError, String(error));
    assert.equal(reasonOf(error), ErrorReason.INVALID_FIELD);
    assert.equal(error.field, "limits[0].key");
    return true;
  });
});

test("FAILED_PRECONDITION from a generated stub maps to LEASE_NOT_HELD", async () => {
  const locks = client.stubs.locks;
  const request = RenewRequest.fromPartial({ name: unique("order"), leaseId: "0".repeat(32) });
  const raw = await unary(locks.renew.bind(locks), request).catch((e: unknown) => e);
  // reasonOf reads the stub's error as it is; the class needs it mapped first.
  assert.equal(reasonOf(raw), ErrorReason.LEASE_NOT_HELD);
  const error = fromGrpcError(raw);
  assert.ok(error instanceof FailedPreconditionError, String(error));
  assert.equal(reasonOf(error), ErrorReason.LEASE_NOT_HELD);
});

test("reasonOf reads every reason and maps the rest to ERROR_REASON_UNSPECIFIED", () => {
  const reasons = Object.entries(ErrorReason).filter(
    (entry): entry is [string, ErrorReason] => typeof entry[1] === "number" && entry[1] !== ErrorReason.UNRECOGNIZED,
  );
  assert.ok(reasons.length > 1, "the generated enum lists the reasons");
  for (const [name, value] of reasons) {
    assert.equal(reasonOf(new BatonError("refused", { code: Status.ABORTED, reason: name })), value, name);
  }
  // No reason (a transport failure), one a newer server sends, or no Baton error at all.
  for (const error of [
    new BatonError("refused", { code: Status.UNAVAILABLE }),
    new BatonError("refused", { code: Status.ABORTED, reason: "A_REASON_FROM_THE_FUTURE" }),
    new BatonError("refused", { code: Status.ABORTED, reason: "UNRECOGNIZED" }),
    new Error("not from gRPC"),
    undefined,
  ]) {
    assert.equal(reasonOf(error), ErrorReason.ERROR_REASON_UNSPECIFIED, String(error));
  }
});

// Last in this file: it stops the shared redis-server.
test("UNAVAILABLE while Redis is down carries a retry delay", async () => {
  await client.allow(unique("warmup"), { limit: 5, periodMs: 60_000 });
  await environment.redis.stop();
  let failure: unknown;
  await eventually("allow rejects with UnavailableError", async () => {
    failure = await client.allow(unique("login"), { limit: 5, periodMs: 60_000 }).catch((e: unknown) => e);
    return failure instanceof UnavailableError;
  });
  assert.ok(failure instanceof UnavailableError);
  assert.equal(reasonOf(failure), ErrorReason.STORAGE_UNAVAILABLE);
  assert.ok((failure.retryAfterMs ?? 0) > 0, `retryAfterMs ${failure.retryAfterMs}`);
});

async function fakeLimiter(delayMs: number, seen: { apiKey?: unknown }): Promise<[string, Server]> {
  const server = new Server();
  const limiter: RateLimiterServiceServer = {
    check: (call, callback) => {
      seen.apiKey = call.metadata.get("x-api-key")[0];
      setTimeout(() => callback(null, CheckResponse.fromPartial({ allowed: true })), delayMs);
    },
    reset: () => undefined,
  };
  server.addService(RateLimiterServiceService, limiter);
  const port = await new Promise<number>((done, fail) =>
    server.bindAsync("127.0.0.1:0", ServerCredentials.createInsecure(), (error, bound) => (error ? fail(error) : done(bound))),
  );
  return [`127.0.0.1:${port}`, server];
}

test("the API key travels in x-api-key metadata", async () => {
  const seen: { apiKey?: unknown } = {};
  const [addr, server] = await fakeLimiter(0, seen);
  const keyed = new BatonClient({ target: addr, apiKey: "k-123" });
  try {
    assert.equal((await keyed.allow("key", { limit: 1, periodMs: 1000 })).allowed, true);
    assert.equal(seen.apiKey, "k-123");
  } finally {
    keyed.close();
    server.forceShutdown();
  }
});

test("the default timeout bounds calls without a deadline", async () => {
  const [addr, server] = await fakeLimiter(5_000, {});
  const impatient = new BatonClient({ target: addr, timeoutMs: 100 });
  try {
    await assert.rejects(impatient.allow("key", { limit: 1, periodMs: 1000 }), DeadlineExceededError);
  } finally {
    impatient.close();
    server.forceShutdown();
  }
});
