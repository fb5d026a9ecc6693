package baton

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	otelcodes "go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// tracerName names the worker's spans' instrumentation scope.
const tracerName = "github.com/baton-dev/baton/clients/go/baton"

// jobTraceContext is parent with the trace context a job travelled with (Job.trace_context:
// the enqueuer's, or Baton's delivery span when Baton traces) in place of parent's own
// span, extracted with the global propagator (otel.SetTextMapPropagator; a no-op until the
// application sets one). Without one the job's work starts a trace of its own rather than
// joining whatever span Consume was called in.
func jobTraceContext(parent context.Context, carrier map[string]string) context.Context {
	detached := trace.ContextWithSpanContext(parent, trace.SpanContext{})
	if len(carrier) == 0 {
		return detached
	}
	return otel.GetTextMapPropagator().Extract(detached, propagation.MapCarrier(carrier))
}

// startProcessSpan starts the span a job's handler and its Ack or Nack run in: "process
// <queue>", kind consumer, child of the job's trace context. Without an SDK (the global
// tracer provider's default) it records nothing and only carries that context on.
func startProcessSpan(ctx context.Context, job *Job) (context.Context, trace.Span) {
	return otel.Tracer(tracerName).Start(ctx, "process "+job.Queue,
		trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "baton"),
			attribute.String("messaging.operation.type", "process"),
			attribute.String("messaging.destination.name", job.Queue),
			attribute.String("messaging.message.id", job.ID),
			attribute.Int64("baton.job.attempt", int64(job.Attempt)),
		))
}

// endProcessSpan ends the span with an error status when the handler failed or its job
// could not be settled.
func endProcessSpan(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(otelcodes.Error, err.Error())
	}
	span.End()
}
