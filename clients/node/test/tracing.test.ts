import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { context, SpanContext, SpanKind, trace } from "@opentelemetry/api";
import { InMemorySpanExporter, SimpleSpanProcessor } from "@opentelemetry/sdk-trace-base";
import { NodeTracerProvider } from "@opentelemetry/sdk-trace-node";

import { BatonClient } from "../src/index.js";
import { Baton, Environment, eventually, freePort, unique } from "./harness.js";

// As the README says: the SDK registered (tracer provider, W3C propagator, async context),
// then a client with `tracing: true`. Each test file runs in a process of its own.
const exporter = new InMemorySpanExporter();
const provider = new NodeTracerProvider({ spanProcessors: [new SimpleSpanProcessor(exporter)] });
provider.register();
const tracer = trace.getTracer("test");

let environment: Environment;
let baton: Baton;
let client: BatonClient;

before(async () => {
  environment = await Environment.start();
  // Traces every RPC (exporting to a closed local port: the export errors are only logged)
  // and logs one "rpc served" line per call, with its trace id, at debug level.
  const closed = await freePort();
  baton = await environment.baton("127.0.0.1:0", {
    args: ["--otlp-endpoint", `http://127.0.0.1:${closed}`],
    env: { RUST_LOG: "info,baton=debug" },
  });
  client = new BatonClient({ target: baton.addr, tracing: true });
  environment.onClose(() => client.close());
});
after(async () => {
  await environment.close();
  await provider.shutdown();
});

/** The trace id of every "rpc served" line baton has logged for `method`. */
function servedTraces(method: string): Set<string> {
  const traces = new Set<string>();
  for (const line of baton.log().split("\n")) {
    try {
      const entry = JSON.parse(line) as { message?: string; span?: { "rpc.method"?: string; trace_id?: string } };
      if (entry.message === "rpc served" && entry.span?.["rpc.method"] === method && entry.span.trace_id) {
        traces.add(entry.span.trace_id);
      }
    } catch {
      // not a JSON line
    }
  }
  return traces;
}

test("a call inside a span reaches baton with its trace id", async () => {
  const traceId = await tracer.startActiveSpan("login", async (span) => {
    try {
      await client.allow(unique("login"), { limit: 5, periodMs: 60_000 });
    } finally {
      span.end();
    }
    return span.spanContext().traceId;
  });
  await eventually(`baton logs the Check call under the caller's trace id ${traceId}`, () =>
    servedTraces("Check").has(traceId),
  );
});

test("a job's trace continues in the worker and its Ack", async () => {
  const queue = unique("emails");
  const traceId = await tracer.startActiveSpan("signup", async (span) => {
    try {
      await client.enqueue(queue, "to:ada");
    } finally {
      span.end();
    }
    return span.spanContext().traceId;
  });
  let handled!: (spanContext: SpanContext | undefined) => void;
  const inHandler = new Promise<SpanContext | undefined>((resolve) => (handled = resolve));
  let settled!: (error: unknown) => void;
  const settlement = new Promise<unknown>((resolve) => (settled = resolve));
  const stop = new AbortController();
  const consuming = client.consume(
    queue,
    async () => {
      handled(trace.getSpanContext(context.active()));
    },
    { signal: stop.signal, onSettled: (_job, error) => settled(error) },
  );
  try {
    const spanContext = await inHandler;
    assert.equal(spanContext?.traceId, traceId, "the handler runs in the enqueuer's trace");
    assert.equal(await settlement, undefined, "the job is acked");
    // The handler ran in the worker's own span, "process <queue>", of kind consumer, which
    // ends once the job is settled.
    await eventually("the handler's span ends", () =>
      exporter.getFinishedSpans().some((span) => span.spanContext().spanId === spanContext?.spanId),
    );
    const processing = exporter.getFinishedSpans().find((span) => span.spanContext().spanId === spanContext?.spanId);
    assert.equal(processing?.name, `process ${queue}`);
    assert.equal(processing?.kind, SpanKind.CONSUMER);
    // The worker acks through AckBatch, each call in the trace of the first job it acks.
    await eventually("baton logs the AckBatch under the enqueuer's trace id", () =>
      servedTraces("AckBatch").has(traceId),
    );
    assert.ok(servedTraces("Enqueue").has(traceId), "baton logs the Enqueue under the enqueuer's trace id");
  } finally {
    stop.abort();
    await consuming;
  }
});
