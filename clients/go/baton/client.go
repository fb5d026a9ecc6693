package baton

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	grpcbackoff "google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// APIKeyHeader is the metadata key that carries the API key on every call.
const APIKeyHeader = "x-api-key"

// DefaultTimeout bounds unary calls whose context has no deadline of its own.
const DefaultTimeout = 10 * time.Second

// Client is a connection to a Baton deployment. It is safe for concurrent use; create one
// per process and Close it at exit.
type Client struct {
	conn           *grpc.ClientConn
	defaultTimeout time.Duration

	// The generated stubs, for RPCs the helpers do not cover. Calls made through them carry
	// the API key and the default deadline, but their errors are plain gRPC statuses: wrap
	// them with [FromError] to get an [*Error].
	RateLimits batonv1.RateLimiterServiceClient
	Locks      batonv1.LockServiceClient
	Elections  batonv1.ElectionServiceClient
	Cache      batonv1.CacheServiceClient
	Sessions   batonv1.SessionStoreServiceClient
	Queue      batonv1.JobQueueServiceClient
}

type config struct {
	transport      credentials.TransportCredentials
	apiKey         string
	defaultTimeout time.Duration
	loadBalancing  string
	dialOptions    []grpc.DialOption
}

// Option configures [New].
type Option func(*config)

// WithTLS encrypts the connection; a nil config uses the system's root certificates.
// Without it the connection is plaintext.
func WithTLS(tlsConfig *tls.Config) Option {
	return func(c *config) {
		if tlsConfig == nil {
			tlsConfig = &tls.Config{MinVersion: tls.VersionTLS12}
		}
		c.transport = credentials.NewTLS(tlsConfig)
	}
}

// WithAPIKey sends key in the x-api-key header of every call. Use it with [WithTLS]
// outside a trusted network: on a plaintext connection the key travels in clear.
func WithAPIKey(key string) Option {
	return func(c *config) { c.apiKey = key }
}

// WithDefaultTimeout replaces [DefaultTimeout]; 0 leaves calls without a deadline unbounded.
func WithDefaultTimeout(timeout time.Duration) Option {
	return func(c *config) { c.defaultTimeout = timeout }
}

// WithLoadBalancing picks the gRPC load-balancing policy: "round_robin" (the default)
// spreads calls over every address the target resolves to — every pod behind a headless
// Service, or each address of an "ipv4:" list; "pick_first" sticks to one.
func WithLoadBalancing(policy string) Option {
	return func(c *config) { c.loadBalancing = policy }
}

// WithDialOptions appends raw gRPC dial options (keepalive, interceptors, …); they come
// after the client's own, so grpc.WithConnectParams here replaces the reconnect backoff.
// grpc.WithStatsHandler(otelgrpc.NewClientHandler()) sends every call's OpenTelemetry trace
// context to Baton (W3C traceparent, with the global propagator).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, options...) }
}

// reconnectBackoff paces reconnection to a replica that went away. gRPC's default starts at
// 1 s and grows to 2 min, so a replica back from a rolling restart would wait seconds for its
// clients; 100 ms growing to 250 ms finds it within about a quarter of a second, for the
// price of a few refused connection attempts per second while it is down.
var reconnectBackoff = grpc.ConnectParams{
	Backoff:           grpcbackoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 250 * time.Millisecond},
	MinConnectTimeout: 5 * time.Second,
}

// New connects lazily to target, which is any gRPC target — "dns:///baton.prod.svc:50051",
// "127.0.0.1:50051" — or a fixed list of replicas, "ipv4:10.0.0.1:50051,10.0.0.2:50051"
// (as in gRPC's C core and grpc-js). Calls fail over between the replicas the target names,
// and a replica that comes back (a rolling restart) is reconnected to within about 250 ms.
func New(target string, options ...Option) (*Client, error) {
	cfg := config{
		transport:      insecure.NewCredentials(),
		defaultTimeout: DefaultTimeout,
		loadBalancing:  "round_robin",
	}
	for _, option := range options {
		option(&cfg)
	}
	dialOptions := []grpc.DialOption{
		grpc.WithTransportCredentials(cfg.transport),
		grpc.WithResolvers(addressListResolver{scheme: "ipv4"}, addressListResolver{scheme: "ipv6"}),
		grpc.WithDefaultServiceConfig(fmt.Sprintf(`{"loadBalancingConfig":[{%q:{}}]}`, cfg.loadBalancing)),
		grpc.WithConnectParams(reconnectBackoff),
		grpc.WithChainUnaryInterceptor(unaryDefaults(cfg.apiKey, cfg.defaultTimeout)),
		grpc.WithChainStreamInterceptor(streamDefaults(cfg.apiKey)),
	}
	conn, err := grpc.NewClient(target, append(dialOptions, cfg.dialOptions...)...)
	if err != nil {
		return nil, fmt.Errorf("baton: connecting to %q: %w", target, err)
	}
	return &Client{
		conn:           conn,
		defaultTimeout: cfg.defaultTimeout,
		RateLimits:     batonv1.NewRateLimiterServiceClient(conn),
		Locks:          batonv1.NewLockServiceClient(conn),
		Elections:      batonv1.NewElectionServiceClient(conn),
		Cache:          batonv1.NewCacheServiceClient(conn),
		Sessions:       batonv1.NewSessionStoreServiceClient(conn),
		Queue:          batonv1.NewJobQueueServiceClient(conn),
	}, nil
}

// Close closes the connection. Leases and leaderships still held end with their KeepAlive
// streams (Baton gives them up, and they are reported lost at their deadline) and running
// Consume calls lose their streams (Baton hands their jobs back, attempts charged): Unlock
// leases, return from RunAsLeader's work and stop consumers first.
func (c *Client) Close() error {
	return c.conn.Close()
}

// Conn is the underlying connection, for services outside Baton's (e.g. grpc.health.v1).
func (c *Client) Conn() *grpc.ClientConn {
	return c.conn
}

func withAPIKey(ctx context.Context, apiKey string) context.Context {
	if apiKey == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, APIKeyHeader, apiKey)
}

// Streams get no default deadline: KeepAlive and Consume are meant to stay open.
func unaryDefaults(apiKey string, defaultTimeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, hasDeadline := ctx.Deadline(); !hasDeadline && defaultTimeout > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
			defer cancel()
		}
		return invoker(withAPIKey(ctx, apiKey), method, req, reply, cc, callOptions(ctx, opts)...)
	}
}

func streamDefaults(apiKey string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(withAPIKey(ctx, apiKey), desc, cc, method, callOptions(ctx, opts)...)
	}
}

// waitForReadyKey marks a context whose calls wait for a ready connection instead of
// failing at once while every replica is unreachable.
type waitForReadyKey struct{}

// withWaitForReady makes the calls made with ctx wait for a ready connection (gRPC's
// wait-for-ready) rather than fail UNAVAILABLE at once while no replica is reachable — so a
// call made during a restart goes out the moment a replica is back. Only for calls that are
// safe to repeat and bounded by a deadline (or, for streams, by a context that ends): a
// call that waits may reach the server long after it was made.
func withWaitForReady(ctx context.Context) context.Context {
	return context.WithValue(ctx, waitForReadyKey{}, true)
}

// callOptions adds wait-for-ready to the calls of a context marked by withWaitForReady; the
// helpers reach the generated stubs through closures, so the mark travels in the context.
func callOptions(ctx context.Context, opts []grpc.CallOption) []grpc.CallOption {
	if ctx.Value(waitForReadyKey{}) == nil {
		return opts
	}
	return append([]grpc.CallOption{grpc.WaitForReady(true)}, opts...)
}

// retryBudget bounds the retries of a call the API declares safe to repeat.
type retryBudget struct {
	// total bounds every attempt and wait together; 0 means ctx's own deadline, else the
	// client's default timeout.
	total time.Duration
	// attempt bounds each attempt, so that one replica that stopped answering (frozen,
	// partitioned) does not use up the whole budget; an attempt cut short by it is retried
	// like an UNAVAILABLE one. 0 means no bound of its own.
	attempt time.Duration
}

// settleBudget is for Ack, Nack, Extend and Release (and the lock helper's Release): they
// outlast a 5 s outage — a replica restarting, a Redis failover — because giving up sooner
// turns a finished job into a second run of it, or a released lock into one held for its
// whole ttl. Each attempt gets 3 s, three times Baton's default Redis timeout.
var settleBudget = retryBudget{total: 10 * time.Second, attempt: 3 * time.Second}

// retryUnavailable runs call until it succeeds or fails with anything but UNAVAILABLE, with
// backoff, for as long as ctx allows (without a deadline: the default timeout). Only for
// calls the API declares safe to retry.
func (c *Client) retryUnavailable(ctx context.Context, call func(context.Context) error) error {
	return c.retry(ctx, retryBudget{}, call)
}

// retry runs call, waiting for a ready connection, until it succeeds, fails with an error
// no retry can fix, or budget runs out; it returns the last error as an [*Error]. Only for
// calls the API declares safe to retry.
func (c *Client) retry(ctx context.Context, budget retryBudget, call func(context.Context) error) error {
	_, hasDeadline := ctx.Deadline()
	switch {
	case budget.total > 0:
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, budget.total)
		defer cancel()
	case !hasDeadline && c.defaultTimeout > 0:
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.defaultTimeout)
		defer cancel()
	}
	ctx = withWaitForReady(ctx)
	retry := newBackoff(callBackoff)
	for {
		err := attempt(ctx, budget.attempt, call)
		if err == nil {
			return nil
		}
		attemptTimedOut := budget.attempt > 0 && codeOf(err) == codes.DeadlineExceeded && ctx.Err() == nil
		if (codeOf(err) != codes.Unavailable && !attemptTimedOut) || !retry.sleep(ctx, err) {
			return FromError(err)
		}
	}
}

func attempt(ctx context.Context, timeout time.Duration, call func(context.Context) error) error {
	if timeout <= 0 {
		return call(ctx)
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	return call(ctx)
}

// backoffSchedule is a capped exponential schedule of waits between attempts.
type backoffSchedule struct {
	first, max time.Duration
}

var (
	// callBackoff paces the retries of unary calls (Acquire, Ack, Release, reads, …).
	callBackoff = backoffSchedule{first: 100 * time.Millisecond, max: 500 * time.Millisecond}
	// streamBackoff paces reopening a KeepAlive, Consume or Observe stream that keeps failing
	// (the first reopen after a stream that worked is immediate): a lease has only its ttl to
	// find another replica. WatchJob and WatchQueue streams are reopened on it too, but
	// after a wait even when they worked (none after a SHUTTING_DOWN).
	streamBackoff = backoffSchedule{first: 50 * time.Millisecond, max: 250 * time.Millisecond}
)

// backoff walks a schedule with jitter (each wait is between half and one and a half
// times the step), never waiting less than the server's RetryInfo advice — itself capped at
// the schedule's maximum, since the advice is about the replica that gave it and the
// retry may reach another.
type backoff struct {
	schedule backoffSchedule
	next     time.Duration
	// skippedForShutdown: the one immediate retry after a SHUTTING_DOWN answer is used up.
	skippedForShutdown bool
}

func newBackoff(schedule backoffSchedule) *backoff {
	return &backoff{schedule: schedule, next: schedule.first}
}

func (b *backoff) reset() {
	b.next = b.schedule.first
	b.skippedForShutdown = false
}

// sleep waits before the next attempt; false when ctx ended first.
func (b *backoff) sleep(ctx context.Context, cause error) bool {
	var mapped *Error
	isBatonError := errors.As(FromError(cause), &mapped)
	if isBatonError && mapped.reason() == batonv1.ErrorReason_SHUTTING_DOWN && !b.skippedForShutdown {
		// A draining replica refuses new work for a moment (its shutdown delay) before its
		// clients' balancers drop it; the balancer picks another replica for the next
		// attempt, so the first retry does not wait.
		b.skippedForShutdown = true
		return ctx.Err() == nil
	}
	delay := time.Duration(mathrand.Int64N(int64(b.next))) + b.next/2
	if isBatonError {
		delay = max(delay, min(mapped.RetryAfter, b.schedule.max))
	}
	b.next = min(b.next*2, b.schedule.max)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// reconnectObserver, when set (by the tests), hears how long a KeepAlive ("keepalive"),
// Consume ("consume") or Observe ("observe") stream was down: from the end of a stream that
// worked to the first answer (KeepAlive, Observe) or the opening (Consume) of the next one.
var reconnectObserver atomic.Pointer[func(kind string, gap time.Duration)]

func observeReconnect(kind string, gap time.Duration) {
	if observer := reconnectObserver.Load(); observer != nil {
		(*observer)(kind, gap)
	}
}

// keepAliveAnswerObserver, when set (by the tests), hears every answer to a KeepAlive
// message: whether Baton renewed the lease on it.
var keepAliveAnswerObserver atomic.Pointer[func(renewed bool)]

func observeKeepAliveAnswer(renewed bool) {
	if observer := keepAliveAnswerObserver.Load(); observer != nil {
		(*observer)(renewed)
	}
}
