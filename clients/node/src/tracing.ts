// OpenTelemetry: the trace context sent with calls, and the worker's span per job.
//
// Only @opentelemetry/api is used, a no-op until the application registers an SDK (a tracer
// provider, a propagator and a context manager: NodeTracerProvider.register() does all
// three): the global propagator writes the active context into a call's metadata, and reads
// the context a job travelled with (Job.traceContext: the enqueuer's, or Baton's delivery
// span when Baton traces).

import type { Metadata } from "@grpc/grpc-js";
import {
  Context,
  context,
  isSpanContextValid,
  propagation,
  ROOT_CONTEXT,
  Span,
  SpanKind,
  SpanStatusCode,
  TextMapSetter,
  trace,
} from "@opentelemetry/api";

const TRACER_NAME = "@baton-dev/baton-client";

const metadataSetter: TextMapSetter<Metadata> = {
  set(metadata, key, value) {
    metadata.set(key.toLowerCase(), value);
  },
};

/** The context active now, to send with a call about to start (see `injectInto`). */
export function activeContext(): Context {
  return context.active();
}

/** Writes `ctx` (nothing outside a trace) into a call's metadata. */
export function injectInto(ctx: Context, metadata: Metadata): void {
  propagation.inject(ctx, metadata, metadataSetter);
}

/**
 * The context a job's work continues: the one it carries, else a new trace (not the span, if
 * any, that the worker itself was started in).
 */
export function jobContext(traceContext: Record<string, string>): Context {
  return propagation.extract(ROOT_CONTEXT, traceContext);
}

/**
 * The span a job's handler and its Ack or Nack run in: "process <queue>" (kind consumer),
 * child of the job's context, and the context to run them in (the job's own when no SDK
 * records the span).
 */
export function startProcessing(
  parent: Context,
  job: { id: string; queue: string; attempt: number },
): { span: Span; ctx: Context } {
  const span = trace.getTracer(TRACER_NAME).startSpan(
    `process ${job.queue}`,
    {
      kind: SpanKind.CONSUMER,
      attributes: {
        "messaging.system": "baton",
        "messaging.operation.type": "process",
        "messaging.destination.name": job.queue,
        "messaging.message.id": job.id,
        "baton.job.attempt": job.attempt,
      },
    },
    parent,
  );
  return { span, ctx: isSpanContextValid(span.spanContext()) ? trace.setSpan(parent, span) : parent };
}

/** Ends the span, failed when the handler rejected or the job could not be settled. */
export function endProcessing(span: Span, error: unknown): void {
  if (error !== undefined) {
    if (error instanceof Error) {
      span.recordException(error);
    }
    span.setStatus({
      code: SpanStatusCode.ERROR,
      message: error instanceof Error ? error.message || error.name : String(error),
    });
  }
  span.end();
}
