// Processes and gRPC plumbing for the dashboard test: a private redis-server, a baton with
// --admin-listen, and promise-returning gRPC clients that seed and check real data.

import { spawn } from "node:child_process";
import { createHash } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync, writeFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { isAbsolute, join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";

export const REPO = resolve(import.meta.dirname, "..", "..");
const START_PATIENCE_MS = 60_000;

export function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

function canConnect(port) {
  return new Promise((done) => {
    const socket = createConnection({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      done(true);
    });
    socket.once("error", () => done(false));
  });
}

/** Polls `condition` (sync or async, truthy = done) until it holds or `patienceMs` passes. */
export async function eventually(what, condition, patienceMs = 10_000) {
  const deadline = Date.now() + patienceMs;
  let last;
  for (;;) {
    try {
      const value = await condition();
      if (value) return value;
    } catch (error) {
      last = error;
    }
    if (Date.now() > deadline) {
      throw new Error(`${what}: not true within ${patienceMs} ms${last ? ` (last error: ${last.message})` : ""}`);
    }
    await sleep(50);
  }
}

export const sha256Hex = (text) => createHash("sha256").update(text, "utf8").digest("hex");

/** A child process stopped by pid: SIGTERM, then SIGKILL if it has not exited in time. */
class Child {
  constructor(name, child, logPath) {
    this.name = name;
    this.child = child;
    this.logPath = logPath;
    this.exited = new Promise((done) => child.once("exit", (code, signal) => done({ code, signal })));
  }

  get running() {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  log() {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  async stop(graceMs = 10_000) {
    if (!this.running) return;
    process.kill(this.child.pid, "SIGTERM");
    const timer = setTimeout(() => this.running && process.kill(this.child.pid, "SIGKILL"), graceMs);
    await this.exited;
    clearTimeout(timer);
  }
}

/** $BATON_BIN (relative to the working directory, else to the repository root), or target/debug/baton. */
export function batonBinary() {
  const wanted = process.env.BATON_BIN || "target/debug/baton";
  if (isAbsolute(wanted)) return wanted;
  const fromCwd = resolve(process.cwd(), wanted);
  return existsSync(fromCwd) ? fromCwd : resolve(REPO, wanted);
}

/**
 * Starts redis-server and baton (gRPC, metrics and admin listeners on free loopback ports)
 * with a config holding the admin and reader API keys. Returns the ports and a `stop()`.
 */
export async function startServers({ adminKey, readerKey }) {
  const dir = mkdtempSync(join(tmpdir(), "baton-dashboard-test-"));
  const [redisPort, grpcPort, metricsPort, adminPort] = [await freePort(), await freePort(), await freePort(), await freePort()];

  const redisLog = join(dir, "redis.log");
  const redis = new Child(
    "redis-server",
    spawn("redis-server", ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
      stdio: ["ignore", openSync(redisLog, "w"), openSync(redisLog, "a")],
    }),
    redisLog,
  );
  const children = [redis];
  const stop = async () => {
    for (const child of children.reverse()) await child.stop();
  };
  try {
    await eventually("redis-server accepts connections", () => {
      if (!redis.running) throw new Error(`redis-server exited:\n${redis.log()}`);
      return canConnect(redisPort);
    }, START_PATIENCE_MS);

    const config = join(dir, "baton.toml");
    writeFileSync(
      config,
      `[policies.api]
algorithm = "fixed_window"
limit = 10
period = "1m"

[[api_keys]]
sha256 = "${sha256Hex(adminKey)}"
tenant = "default"
name = "ops-admin"
role = "admin"

[[api_keys]]
sha256 = "${sha256Hex(readerKey)}"
tenant = "default"
name = "reader"
`,
    );

    const batonLog = join(dir, "baton.log");
    const bin = batonBinary();
    if (!existsSync(bin)) throw new Error(`no baton binary at ${bin} (set BATON_BIN)`);
    const baton = new Child(
      "baton",
      spawn(
        bin,
        [
          "--listen", `127.0.0.1:${grpcPort}`,
          "--metrics-listen", `127.0.0.1:${metricsPort}`,
          "--admin-listen", `127.0.0.1:${adminPort}`,
          "--redis-url", `redis://127.0.0.1:${redisPort}`,
          "--config", config,
          "--shutdown-grace", "5s",
          "--shutdown-delay", "100ms",
        ],
        { stdio: ["ignore", openSync(batonLog, "w"), openSync(batonLog, "a")] },
      ),
      batonLog,
    );
    children.push(baton);

    const adminBase = `http://127.0.0.1:${adminPort}`;
    await eventually("baton's admin listener answers HTTP", async () => {
      if (!baton.running) throw new Error(`baton exited before serving:\n${baton.log()}`);
      const response = await fetch(`${adminBase}/queues`, { redirect: "manual", signal: AbortSignal.timeout(2000) });
      await response.arrayBuffer();
      return true;
    }, START_PATIENCE_MS);
    await eventually("baton's gRPC listener accepts connections", () => canConnect(grpcPort), START_PATIENCE_MS);

    return { dir, redisPort, grpcPort, metricsPort, adminPort, adminBase, redis, baton, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

// ---------------------------------------------------------------------------------------
// gRPC

const PROTO_FILES = ["queue", "lock", "election", "session", "ratelimit"].map((name) => `baton/v1/${name}.proto`);

export function loadBaton() {
  const definition = protoLoader.loadSync(PROTO_FILES, {
    keepCase: false,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
    includeDirs: [join(REPO, "proto")],
  });
  return grpc.loadPackageDefinition(definition).baton.v1;
}

/**
 * gRPC clients of one baton with `authorization: Bearer <key>` on every call. Each unary
 * method is wrapped as `await api.queue.enqueue({...})`; `api.queue.raw` is the client.
 */
export function grpcClients(address, key) {
  const pkg = loadBaton();
  const metadata = () => {
    const md = new grpc.Metadata();
    md.set("authorization", `Bearer ${key}`);
    return md;
  };
  const wrap = (Service) => {
    const client = new Service(address, grpc.credentials.createInsecure());
    const wrapped = { raw: client, metadata };
    for (const [name, method] of Object.entries(Service.service)) {
      if (method.requestStream || method.responseStream) continue;
      const lower = name[0].toLowerCase() + name.slice(1);
      wrapped[lower] = (request) =>
        new Promise((done, fail) =>
          client[name](request, metadata(), { deadline: Date.now() + 10_000 }, (error, response) =>
            error ? fail(error) : done(response),
          ),
        );
    }
    return wrapped;
  };
  const api = {
    queue: wrap(pkg.JobQueueService),
    lock: wrap(pkg.LockService),
    election: wrap(pkg.ElectionService),
    session: wrap(pkg.SessionStoreService),
    ratelimit: wrap(pkg.RateLimiterService),
    close() {
      for (const part of [api.queue, api.lock, api.election, api.session, api.ratelimit]) part.raw.close();
    },
  };
  return api;
}

export const NOT_FOUND = grpc.status.NOT_FOUND;

/**
 * Opens a Consume stream on `queue` for jobs of `type`, takes `count` deliveries and hands
 * each to `settle(delivery)` (which Acks or Nacks it), then drains the stream.
 */
export async function consume(api, { queue, type, count, settle }) {
  const call = api.queue.raw.consume(api.queue.metadata());
  const deliveries = [];
  const ended = new Promise((done, fail) => {
    call.on("error", (error) => (error.code === grpc.status.CANCELLED ? done() : fail(error)));
    call.on("end", done);
  });
  const got = new Promise((done, fail) => {
    call.on("data", (message) => {
      if (message.delivery) {
        deliveries.push(message.delivery);
        if (deliveries.length === count) done();
      }
    });
    ended.then(() => fail(new Error(`Consume ended after ${deliveries.length} of ${count} deliveries`)), fail);
  });
  call.write({ queue, types: [type], maxInFlight: count, consumer: "dashboard-test", visibilityTimeout: { seconds: 60 } });
  const timer = setTimeout(() => call.cancel(), 15_000);
  try {
    await got;
    for (const delivery of deliveries) await settle(delivery);
    call.write({ drain: true });
    call.end();
    await ended;
  } finally {
    clearTimeout(timer);
    call.cancel();
  }
  return deliveries;
}

/**
 * Enqueues `count` jobs of `type` with max_attempts 1, takes them with a Consume stream
 * filtered on `type` (so no other job is delivered) and fails each once: DEAD. Use a type
 * no READY job of the queue has.
 */
export async function makeDeadJobs(api, queue, count, type) {
  const ids = [];
  for (let i = 0; i < count; i++) {
    const { jobId } = await api.queue.enqueue({
      queue,
      type,
      maxAttempts: 1,
      payload: Buffer.from(JSON.stringify({ to: `bounce-${i}@example.com` })),
    });
    ids.push(jobId);
  }
  await consume(api, {
    queue,
    type,
    count,
    settle: async (delivery) => {
      const answer = await api.queue.nack({ leaseId: delivery.leaseId, error: "smtp 550: mailbox unavailable" });
      if (answer.state !== "JOB_STATE_DEAD") throw new Error(`Nack left job ${delivery.job.jobId} ${answer.state}, not DEAD`);
    },
  });
  return ids;
}

export async function jobState(api, jobId) {
  try {
    const { job } = await api.queue.getJob({ jobId });
    return job.state;
  } catch (error) {
    if (error.code === NOT_FOUND) return "NOT_FOUND";
    throw error;
  }
}

// ---------------------------------------------------------------------------------------
// Seed data

export const XSS_PAYLOAD = `<script>window.__xss=1</script><img src=x onerror="window.__xss=2">`;

/**
 * Seeds real data through the admin key: queue "emails" (ready jobs, one carrying
 * XSS_PAYLOAD, one large, one binary, one in group "tenant-a", four DEAD, one SUCCEEDED),
 * queue "reports" (one ready, one scheduled an hour out), lock "orders/42", election
 * "scheduler", two sessions of "user-7", and three hits on rate limit policy "api".
 */
export async function seed(api) {
  const ids = {};
  const enqueue = async (request) => (await api.queue.enqueue(request)).jobId;

  ids.ready = [];
  for (let i = 1; i <= 3; i++) {
    ids.ready.push(await enqueue({ queue: "emails", type: "welcome", payload: Buffer.from(JSON.stringify({ to: `user-${i}@example.com`, template: "welcome" })) }));
  }
  ids.xss = await enqueue({ queue: "emails", type: "welcome", payload: Buffer.from(XSS_PAYLOAD) });
  ids.large = await enqueue({ queue: "emails", type: "digest", payload: Buffer.alloc(300_000, "x") });
  ids.binary = await enqueue({ queue: "emails", type: "digest", payload: Buffer.from([0xff, 0x00, 0xfe, 0x80, 0x41]) });
  ids.grouped = await enqueue({ queue: "emails", type: "welcome", group: "tenant-a", payload: Buffer.from('{"to":"a@tenant-a.example"}') });

  // Succeeded: delivered and acked (type "quick", so no other job is delivered).
  ids.succeeded = await enqueue({ queue: "emails", type: "quick", payload: Buffer.from('{"ping":true}') });
  await consume(api, {
    queue: "emails",
    type: "quick",
    count: 1,
    settle: (delivery) => api.queue.ack({ leaseId: delivery.leaseId, result: Buffer.from("sent") }),
  });

  ids.dead = await makeDeadJobs(api, "emails", 4, "bounce");

  ids.reportsReady = await enqueue({ queue: "reports", type: "monthly", payload: Buffer.from('{"month":"2024-05"}') });
  ids.reportsScheduled = await enqueue({ queue: "reports", type: "monthly", delay: { seconds: 3600 }, payload: Buffer.from('{"month":"2024-06"}') });

  const lock = await api.lock.acquire({ name: "orders/42", ttl: { seconds: 60 }, owner: "billing-worker-1" });
  if (!lock.acquired) throw new Error("lock orders/42 was not acquired");
  ids.lock = lock.lease;

  const election = await api.election.campaign({
    name: "scheduler",
    ttl: { seconds: 60 },
    value: Buffer.from("scheduler-1.internal:8080"),
    owner: "scheduler-pod-1",
  });
  if (!election.elected) throw new Error("election scheduler: not elected");
  ids.election = election;

  ids.sessions = [];
  for (const agent of ["Firefox on Linux", "Safari on iPhone"]) {
    const { sessionId } = await api.session.createSession({
      subject: "user-7",
      data: { cart: Buffer.from("3 items") },
      attributes: { user_agent: agent },
      idleTimeout: { seconds: 3600 },
    });
    ids.sessions.push(sessionId);
  }

  for (let i = 0; i < 3; i++) {
    await api.ratelimit.check({ limits: [{ key: "dash-key", policy: "api" }] });
  }
  return ids;
}
