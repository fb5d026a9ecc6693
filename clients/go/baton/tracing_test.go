package baton_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"github.com/baton-dev/baton/clients/go/baton"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

// tracedServer starts redis-server and a baton that traces every RPC (exporting to a closed
// local port: the export errors are only logged) and logs one "rpc served" line per call,
// with the call's trace id, at debug level.
func tracedServer(t *testing.T) *batontest.Baton {
	t.Helper()
	t.Setenv("RUST_LOG", "info,baton=debug")
	redis := batontest.StartRedis(t)
	closed := batontest.FreePort(t)
	return batontest.StartBaton(t, redis, "127.0.0.1:0", "--otlp-endpoint", fmt.Sprintf("http://127.0.0.1:%d", closed))
}

// tracing installs an SDK tracer provider recording into memory and the W3C trace-context
// propagator as the globals (which Consume's worker uses) for the test's duration.
func tracing(t *testing.T) (*sdktrace.TracerProvider, *tracetest.SpanRecorder) {
	t.Helper()
	recorder := tracetest.NewSpanRecorder()
	provider := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(recorder))
	previousProvider, previousPropagator := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(provider)
	otel.SetTextMapPropagator(propagation.TraceContext{})
	t.Cleanup(func() {
		otel.SetTracerProvider(previousProvider)
		otel.SetTextMapPropagator(previousPropagator)
		_ = provider.Shutdown(context.Background())
	})
	return provider, recorder
}

// otelClient connects with otelgrpc's client handler, as the README says.
func otelClient(t *testing.T, target string) *baton.Client {
	t.Helper()
	return connect(t, target, baton.WithDialOptions(grpc.WithStatsHandler(otelgrpc.NewClientHandler())))
}

// servedTraces is the trace id of every "rpc served" line baton has logged for method.
func servedTraces(replica *batontest.Baton, method string) map[string]bool {
	traces := map[string]bool{}
	scanner := bufio.NewScanner(bytes.NewReader(replica.Log()))
	scanner.Buffer(nil, 1<<20)
	for scanner.Scan() {
		var line struct {
			Message string `json:"message"`
			Span    struct {
				Method  string `json:"rpc.method"`
				TraceID string `json:"trace_id"`
			} `json:"span"`
		}
		if json.Unmarshal(scanner.Bytes(), &line) == nil && line.Message == "rpc served" && line.Span.Method == method {
			traces[line.Span.TraceID] = true
		}
	}
	return traces
}

func TestACallInsideASpanReachesBatonWithItsTraceID(t *testing.T) {
	replica := tracedServer(t)
	provider, _ := tracing(t)
	client := otelClient(t, replica.Addr)
	ctx, span := provider.Tracer("test").Start(testContext(t), "login")
	if _, err := client.Allow(ctx, unique("login"), 5, time.Minute); err != nil {
		t.Fatal(err)
	}
	span.End()
	traceID := span.SpanContext().TraceID().String()
	batontest.Eventually(t, 10*time.Second, "baton logs the Check call under the caller's trace id "+traceID, func() bool {
		return servedTraces(replica, "Check")[traceID]
	})
}

func TestAJobsTraceContinuesInTheWorkerAndItsAck(t *testing.T) {
	replica := tracedServer(t)
	provider, recorder := tracing(t)
	client := otelClient(t, replica.Addr)
	queue := unique("emails")
	ctx, enqueueSpan := provider.Tracer("test").Start(testContext(t), "signup")
	enqueued, err := client.Enqueue(ctx, queue, []byte("to:ada"))
	enqueueSpan.End()
	if err != nil {
		t.Fatal(err)
	}
	traceID := enqueueSpan.SpanContext().TraceID()

	handled := make(chan trace.SpanContext, 1)
	settled := make(chan error, 1)
	consumeInBackground(t, client, queue, 1, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		handled <- trace.SpanContextFromContext(ctx)
		return nil, nil
	}, baton.WithOnSettled(func(_ *baton.Job, err error) { settled <- err }))
	var inHandler trace.SpanContext
	select {
	case inHandler = <-handled:
	case <-time.After(10 * time.Second):
		t.Fatal("the job was not handled within 10 s")
	}
	if inHandler.TraceID() != traceID {
		t.Fatalf("the handler ran in trace %s, want the enqueuer's %s", inHandler.TraceID(), traceID)
	}
	if err := <-settled; err != nil {
		t.Fatalf("the job was not acked: %v", err)
	}
	// The handler ran in the worker's own span, "process <queue>", of kind consumer, which
	// ends once the job is settled.
	var process sdktrace.ReadOnlySpan
	batontest.Eventually(t, 10*time.Second, "the handler's span ends", func() bool {
		for _, ended := range recorder.Ended() {
			if ended.SpanContext().SpanID() == inHandler.SpanID() {
				process = ended
			}
		}
		return process != nil
	})
	if process.Name() != "process "+queue || process.SpanKind() != trace.SpanKindConsumer {
		t.Fatalf("the handler's span is %q of kind %s, want the consumer span \"process %s\"", process.Name(), process.SpanKind(), queue)
	}
	// The worker acks through AckBatch, each call under the trace of the first job it acks.
	batontest.Eventually(t, 10*time.Second, "baton logs the AckBatch under the enqueuer's trace id", func() bool {
		return servedTraces(replica, "AckBatch")[traceID.String()]
	})
	if !servedTraces(replica, "Enqueue")[traceID.String()] {
		t.Fatalf("baton did not log the Enqueue of job %s under trace id %s", enqueued.JobID, traceID)
	}
}
