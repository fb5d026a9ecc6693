// An email job queue with a worker: the sign-up handler enqueues a welcome email (once per
// user, thanks to the dedup key, however often the request is retried), and workers send
// them, retried with backoff when the mail server fails.
//
// Run against `make run`'s baton (from the repository root, in other terminals):
//
//   cd clients/node && npm ci && npx tsc -p . && node dist/dev/examples/email-queue.js worker   # Ctrl-C stops it
//   cd clients/node && node dist/dev/examples/email-queue.js enqueue ada@example.com
//
// BATON_TARGET overrides the default localhost:50051.

import { setTimeout as sleep } from "node:timers/promises";

import { BatonClient, Job } from "@baton-dev/baton-client";

const QUEUE = "emails";

async function enqueue(client: BatonClient, address: string): Promise<void> {
  const job = await client.enqueue(QUEUE, address, {
    type: "welcome",
    dedupKey: `welcome:${address}`,
    dedupTtlMs: 24 * 3600_000,
    maxAttempts: 5,
    retryBackoff: { initialMs: 1000, maxMs: 60_000 },
  });
  console.log(`job ${job.jobId} (duplicate: ${job.duplicate})`);
}

async function sendWelcome(job: Job, signal: AbortSignal): Promise<string> {
  if (Math.random() < 0.3) {
    throw new Error("smtp: 421 service not available"); // nacked: retried after backoff
  }
  await sleep(200, undefined, { signal }); // aborted when cancelled or shutting down: not acked
  return `sent to ${job.payload.toString()}`;
}

async function work(client: BatonClient): Promise<void> {
  // SIGTERM (Kubernetes) or Ctrl-C: a graceful stop. No more deliveries; jobs in hand that
  // never started go back to the queue at once, their attempt not charged; the ones running
  // get 10 s to finish and be acked, and consume resolves as soon as they are done.
  const stop = new AbortController();
  process.once("SIGINT", () => stop.abort());
  process.once("SIGTERM", () => stop.abort());
  console.log("worker ready");
  await client.consume(QUEUE, sendWelcome, {
    concurrency: 4,
    signal: stop.signal,
    shutdownGraceMs: 10_000,
    onSettled: (job, error) => console.log(`job ${job.id} attempt ${job.attempt}: ${error ?? "acked"}`),
  });
}

async function main(): Promise<void> {
  const client = new BatonClient({ target: process.env.BATON_TARGET ?? "localhost:50051" });
  const [command, address] = process.argv.slice(2);
  try {
    if (command === "worker") {
      await work(client);
    } else if (command === "enqueue" && address) {
      await enqueue(client, address);
    } else {
      console.error("usage: email-queue.js worker | enqueue ADDRESS");
      process.exitCode = 2;
    }
  } finally {
    client.close();
  }
}

void main();
