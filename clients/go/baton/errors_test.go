package baton_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

func TestInvalidArgumentNamesTheField(t *testing.T) {
	client, _ := server(t)
	_, err := client.Allow(testContext(t), "", 5, time.Minute)
	var batonErr *baton.Error
	if !errors.Is(err, baton.ErrInvalidArgument) || !errors.As(err, &batonErr) {
		t.Fatalf("empty key: got %v, want an INVALID_ARGUMENT *baton.Error", err)
	}
	if baton.ReasonOf(err) != batonv1.ErrorReason_INVALID_FIELD || batonErr.Field != "limits[0].key" {
		t.Fatalf("got reason %q field %q, want INVALID_FIELD on limits[0].key", batonErr.Reason, batonErr.Field)
	}
}

func TestFailedPreconditionFromAGeneratedStub(t *testing.T) {
	client, _ := server(t)
	_, err := client.Locks.Renew(testContext(t), &batonv1.RenewRequest{
		Name:    unique("order"),
		LeaseId: "0123456789abcdef0123456789abcdef",
	})
	// ReasonOf reads the stub's error as it is; the sentinels need it mapped first.
	if reason := baton.ReasonOf(err); reason != batonv1.ErrorReason_LEASE_NOT_HELD {
		t.Fatalf("ReasonOf a stub's error: got %v, want LEASE_NOT_HELD", reason)
	}
	err = baton.FromError(err)
	if !errors.Is(err, baton.ErrLeaseNotHeld) || !errors.Is(err, baton.ErrFailedPrecondition) {
		t.Fatalf("renewing a lease never granted: got %v, want FAILED_PRECONDITION LEASE_NOT_HELD", err)
	}
}

func TestUnavailableWhenRedisIsDownCarriesRetryAfter(t *testing.T) {
	client, redis := server(t)
	ctx := testContext(t)
	if _, err := client.Allow(ctx, unique("warmup"), 5, time.Minute); err != nil {
		t.Fatal(err)
	}
	redis.Stop()
	var batonErr *baton.Error
	batontest.Eventually(t, 10*time.Second, "Allow fails UNAVAILABLE", func() bool {
		_, err := client.Allow(ctx, unique("login"), 5, time.Minute)
		return errors.Is(err, baton.ErrUnavailable) && errors.As(err, &batonErr)
	})
	if baton.ReasonOf(batonErr) != batonv1.ErrorReason_STORAGE_UNAVAILABLE || batonErr.RetryAfter <= 0 {
		t.Fatalf("got reason %q retry after %s, want STORAGE_UNAVAILABLE with a positive RetryAfter",
			batonErr.Reason, batonErr.RetryAfter)
	}
}

func TestReasonOfReadsEveryReasonAndMapsTheRestToUnspecified(t *testing.T) {
	for value, name := range batonv1.ErrorReason_name {
		stubErr, err := status.New(codes.FailedPrecondition, "refused").
			WithDetails(&errdetails.ErrorInfo{Reason: name, Domain: "baton.v1"})
		if err != nil {
			t.Fatal(err)
		}
		if got := baton.ReasonOf(stubErr.Err()); got != batonv1.ErrorReason(value) {
			t.Errorf("ReasonOf an ErrorInfo reason %q: got %v, want %v", name, got, batonv1.ErrorReason(value))
		}
	}
	wrapped := fmt.Errorf("settling: %w", baton.ErrJobNotLeased)
	if got := baton.ReasonOf(wrapped); got != batonv1.ErrorReason_JOB_NOT_LEASED {
		t.Errorf("ReasonOf a wrapped *Error: got %v, want JOB_NOT_LEASED", got)
	}
	for _, err := range []error{
		nil,
		errors.New("not from gRPC"),
		status.Error(codes.Unavailable, "no ErrorInfo"),
		// A reason a newer server may send: unknown here, yet still readable as a string.
		&baton.Error{Code: codes.FailedPrecondition, Reason: "A_REASON_FROM_THE_FUTURE"},
	} {
		if got := baton.ReasonOf(err); got != batonv1.ErrorReason_ERROR_REASON_UNSPECIFIED {
			t.Errorf("ReasonOf(%v): got %v, want ERROR_REASON_UNSPECIFIED", err, got)
		}
	}
	// The one spelled-out reason: the wire string is the enum value's name, so a sentinel
	// built from a constant matches what the server sends.
	if baton.ErrSessionNotFound.Reason != "SESSION_NOT_FOUND" {
		t.Errorf("a sentinel's Reason must be the wire string: got %q", baton.ErrSessionNotFound.Reason)
	}
}

// recordingLimiter answers Check after an optional delay and keeps the last call's metadata.
type recordingLimiter struct {
	batonv1.UnimplementedRateLimiterServiceServer
	delay    time.Duration
	metadata chan metadata.MD
}

func (r *recordingLimiter) Check(ctx context.Context, _ *batonv1.CheckRequest) (*batonv1.CheckResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	r.metadata <- md
	select {
	case <-time.After(r.delay):
	case <-ctx.Done():
	}
	return &batonv1.CheckResponse{Allowed: true}, nil
}

func fakeLimiter(t *testing.T, limiter *recordingLimiter) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	grpcServer := grpc.NewServer()
	batonv1.RegisterRateLimiterServiceServer(grpcServer, limiter)
	go grpcServer.Serve(listener)
	t.Cleanup(grpcServer.Stop)
	return listener.Addr().String()
}

func TestAPIKeyTravelsInMetadata(t *testing.T) {
	limiter := &recordingLimiter{metadata: make(chan metadata.MD, 1)}
	client := connect(t, fakeLimiter(t, limiter), baton.WithAPIKey("k-123"))
	if _, err := client.Allow(testContext(t), "key", 1, time.Second); err != nil {
		t.Fatal(err)
	}
	if got := (<-limiter.metadata).Get(baton.APIKeyHeader); len(got) != 1 || got[0] != "k-123" {
		t.Fatalf("x-api-key metadata: got %q, want [k-123]", got)
	}
}

func TestDefaultTimeoutBoundsCallsWithoutDeadline(t *testing.T) {
	limiter := &recordingLimiter{delay: 5 * time.Second, metadata: make(chan metadata.MD, 1)}
	client := connect(t, fakeLimiter(t, limiter), baton.WithDefaultTimeout(100*time.Millisecond))
	started := time.Now()
	_, err := client.Allow(context.Background(), "key", 1, time.Second)
	if !errors.Is(err, baton.ErrDeadlineExceeded) || time.Since(started) > 3*time.Second {
		t.Fatalf("got %v after %s, want DEADLINE_EXCEEDED after about 100ms", err, time.Since(started))
	}
}

func TestFailedPreconditionForAStaleFillTokenAndJobLease(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	key := unique("profile")
	fetched, err := client.Cache.Fetch(ctx, &batonv1.FetchRequest{Key: key})
	if err != nil || fetched.GetFillToken() == "" {
		t.Fatalf("Fetch of a missing key: %v %v, want a fill token", fetched, err)
	}
	if _, err := client.CacheSet(ctx, key, []byte("newer"), time.Minute); err != nil {
		t.Fatal(err)
	}
	_, err = client.Cache.Fill(ctx, &batonv1.FillRequest{Key: key, FillToken: fetched.GetFillToken(), Value: []byte("older"), Ttl: durationpb.New(time.Minute)})
	if err = baton.FromError(err); !errors.Is(err, baton.ErrFillTokenStale) {
		t.Fatalf("Fill after a Set: got %v, want FAILED_PRECONDITION FILL_TOKEN_STALE", err)
	}

	queue := unique("emails")
	if _, err := client.Enqueue(ctx, queue, nil, baton.WithMaxAttempts(1)); err != nil {
		t.Fatal(err)
	}
	nacked := make(chan string, 1)
	consumeInBackground(t, client, queue, 1, func(_ context.Context, job *baton.Job) ([]byte, error) {
		return nil, errors.New("failed")
	}, baton.WithOnSettled(func(job *baton.Job, _ error) { nacked <- job.LeaseID() }))
	_, err = client.Queue.Ack(ctx, &batonv1.AckRequest{LeaseId: <-nacked})
	if err = baton.FromError(err); !errors.Is(err, baton.ErrJobNotLeased) {
		t.Fatalf("Ack after Nack: got %v, want FAILED_PRECONDITION JOB_NOT_LEASED", err)
	}
}
