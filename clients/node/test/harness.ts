// Real redis-server and baton processes for the client's tests.

import { ChildProcess, execFileSync, spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { existsSync, mkdtempSync, openSync, readFileSync } from "node:fs";
import { createConnection, createServer } from "node:net";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";

// This file runs as dist/dev/test/harness.js.
const REPO = resolve(import.meta.dirname, "..", "..", "..", "..", "..");
const START_PATIENCE_MS = 30_000;

export function freePort(): Promise<number> {
  return new Promise((done, fail) => {
    const server = createServer();
    server.once("error", fail);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      server.close(() => done(typeof address === "object" && address ? address.port : 0));
    });
  });
}

function canConnect(port: number): Promise<boolean> {
  return new Promise((done) => {
    const socket = createConnection({ port, host: "127.0.0.1" });
    socket.once("connect", () => {
      socket.destroy();
      done(true);
    });
    socket.once("error", () => done(false));
  });
}

export async function eventually(what: string, condition: () => Promise<boolean> | boolean, patienceMs = 10_000) {
  const deadline = Date.now() + patienceMs;
  while (!(await condition())) {
    if (Date.now() > deadline) {
      throw new Error(`${what}: not true within ${patienceMs} ms`);
    }
    await sleep(20);
  }
}

/** Stops a child with a signal (unless it has exited) and waits for its exit. */
function stop(child: ChildProcess, signal: NodeJS.Signals): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) {
    return Promise.resolve();
  }
  const exited = new Promise<void>((done) => child.once("exit", () => done()));
  child.kill(signal);
  return exited;
}

/** A private, non-persistent redis-server on a free loopback port. */
export class Redis {
  private constructor(
    readonly port: number,
    private readonly child: ChildProcess,
  ) {}

  static async start(): Promise<Redis> {
    const port = await freePort();
    const child = spawn(
      "redis-server",
      ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
      { stdio: "ignore" },
    );
    const redis = new Redis(port, child);
    await eventually("redis-server accepts connections", () => canConnect(port), START_PATIENCE_MS);
    return redis;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  /** SIGSTOP: Redis stops answering while its connections stay open — a stall. */
  freeze(): void {
    this.child.kill("SIGSTOP");
  }

  thaw(): void {
    this.child.kill("SIGCONT");
  }

  /** SIGKILL: an outage, not a shutdown. */
  stop(): Promise<void> {
    return stop(this.child, "SIGKILL");
  }
}

/** $BATON_BIN, else <repo>/target/debug/baton, built if missing. */
function batonBinary(): string {
  if (process.env.BATON_BIN) {
    return process.env.BATON_BIN;
  }
  const binary = join(REPO, "target", "debug", "baton");
  if (!existsSync(binary)) {
    execFileSync("cargo", ["build", "--bin", "baton"], { cwd: REPO, stdio: "inherit" });
  }
  return binary;
}

/** What to start baton with beyond the harness's own flags. */
export interface BatonOptions {
  /** After the harness's flags, which they must not repeat. */
  args?: string[];
  /** Over this process's environment. */
  env?: Record<string, string>;
}

/** One baton server process; `addr` comes from its JSON "serving" log line. */
export class Baton {
  private constructor(
    readonly addr: string,
    /** The Prometheus endpoint's host:port, from the same log line. */
    readonly metricsAddr: string,
    private readonly child: ChildProcess,
    private readonly logPath: string,
  ) {}

  static async start(redis: Redis, listen = "127.0.0.1:0", options: BatonOptions = {}): Promise<Baton> {
    // A file, not a pipe: a pipe nobody drains would block baton once full.
    const logPath = join(mkdtempSync(join(tmpdir(), "baton-node-test-")), "baton.log");
    const log = openSync(logPath, "w");
    const child = spawn(
      batonBinary(),
      ["--listen", listen, "--metrics-listen", "127.0.0.1:0", "--log-format", "json",
        "--redis-url", redis.url, "--shutdown-grace", "5s", "--shutdown-delay", "200ms", ...(options.args ?? [])],
      { stdio: ["ignore", log, log], env: { ...process.env, ...options.env } },
    );
    let addr: string | undefined;
    let metricsAddr: string | undefined;
    await eventually(
      "baton logs its grpc_addr",
      () => {
        if (child.exitCode !== null) {
          throw new Error(`baton exited before serving:\n${readFileSync(logPath, "utf8")}`);
        }
        const logged = readFileSync(logPath, "utf8");
        addr = /"grpc_addr":"([^"]+)"/.exec(logged)?.[1];
        metricsAddr = /"metrics_addr":"([^"]+)"/.exec(logged)?.[1];
        return addr !== undefined;
      },
      START_PATIENCE_MS,
    );
    return new Baton(addr!, metricsAddr ?? "", child, logPath);
  }

  /**
   * The sum of the samples of the counter `name` on the replica's /metrics whose labels
   * include `labels` (0 when there are none).
   */
  async counter(name: string, labels: Record<string, string> = {}): Promise<number> {
    const page = await (await fetch(`http://${this.metricsAddr}/metrics`)).text();
    let total = 0;
    for (const line of page.split("\n")) {
      const space = line.indexOf(" ");
      const sample = line.slice(0, space);
      if (space < 0 || (sample !== name && !sample.startsWith(`${name}{`))) {
        continue;
      }
      if (Object.entries(labels).every(([label, want]) => sample.includes(`${label}="${want}"`))) {
        total += Number(line.slice(space + 1).trim().split(" ")[0]); // then any exemplar
      }
    }
    return total;
  }

  /** What baton has logged so far (JSON lines). */
  log(): string {
    return readFileSync(this.logPath, "utf8");
  }

  /** SIGTERM: a graceful shutdown; waits for the exit. */
  terminate(): Promise<void> {
    return stop(this.child, "SIGTERM");
  }

  kill(): Promise<void> {
    return stop(this.child, "SIGKILL");
  }
}

/** Redis, baton replicas and clients for one test, all stopped by `close`. */
export class Environment {
  private readonly batons: Baton[] = [];
  private readonly closers: (() => void)[] = [];

  private constructor(readonly redis: Redis) {}

  static async start(): Promise<Environment> {
    return new Environment(await Redis.start());
  }

  async baton(listen?: string, options?: BatonOptions): Promise<Baton> {
    const baton = await Baton.start(this.redis, listen, options);
    this.batons.push(baton);
    return baton;
  }

  onClose(closer: () => void): void {
    this.closers.push(closer);
  }

  async close(): Promise<void> {
    this.closers.forEach((closer) => closer());
    await Promise.all(this.batons.map((baton) => baton.kill()));
    await this.redis.stop();
  }
}

/** Names unique per test keep tests independent. */
export function unique(prefix: string): string {
  return `${prefix}:${randomBytes(6).toString("hex")}`;
}
