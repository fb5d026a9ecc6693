package baton

import (
	"context"
	"crypto/tls"
	"fmt"
	"time"

	"google.golang.org/grpc"
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

// WithDialOptions appends raw gRPC dial options (keepalive, interceptors, …).
func WithDialOptions(options ...grpc.DialOption) Option {
	return func(c *config) { c.dialOptions = append(c.dialOptions, options...) }
}

// New connects lazily to target, which is any gRPC target — "dns:///baton.prod.svc:50051",
// "127.0.0.1:50051" — or a fixed list of replicas, "ipv4:10.0.0.1:50051,10.0.0.2:50051"
// (as in gRPC's C core and grpc-js). Calls fail over between the replicas the target names.
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
		Cache:          batonv1.NewCacheServiceClient(conn),
		Sessions:       batonv1.NewSessionStoreServiceClient(conn),
		Queue:          batonv1.NewJobQueueServiceClient(conn),
	}, nil
}

// Close closes the connection. Leases still held stop being kept alive and expire after
// their ttl; Unlock them first to hand them over at once.
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
		return invoker(withAPIKey(ctx, apiKey), method, req, reply, cc, opts...)
	}
}

func streamDefaults(apiKey string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		return streamer(withAPIKey(ctx, apiKey), desc, cc, method, opts...)
	}
}
