package baton

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// Algorithm chooses how a limit counts; see proto/baton/v1/ratelimit.proto.
type Algorithm = batonv1.Algorithm

const (
	// FixedWindow admits at most limit per window; a window starts at the key's first hit.
	FixedWindow = batonv1.Algorithm_ALGORITHM_FIXED_WINDOW
	// SlidingWindow is an exact sliding log: in every span of one period at most limit are
	// admitted. It keeps one entry per admitted unit, so the server refuses a limit above
	// its max_sliding_window_limit (10,000 by default) with INVALID_ARGUMENT; use
	// TokenBucket for larger ones. The default of [Client.Allow].
	SlidingWindow = batonv1.Algorithm_ALGORITHM_SLIDING_WINDOW
	// TokenBucket (GCRA) admits a burst at once, then one every period/limit.
	TokenBucket = batonv1.Algorithm_ALGORITHM_TOKEN_BUCKET
)

// Decision is the verdict of [Client.Allow]. A denial is a Decision with Allowed false,
// never an error.
type Decision struct {
	Allowed bool
	// Limit is the limit's size (for a token bucket, its burst).
	Limit uint64
	// Remaining is what is left after this request (after it would have been, if denied).
	Remaining uint64
	// RetryAfter is when a request of the same cost could pass; zero when allowed.
	RetryAfter time.Duration
	// ResetAfter is when the limit is fully replenished.
	ResetAfter time.Duration
	// Degraded: answered without Redis because fail-open applied during an outage.
	Degraded bool
}

type allowConfig struct {
	algorithm Algorithm
	burst     uint64
	cost      uint64
	failOpen  bool
	dryRun    bool
}

// AllowOption tunes [Client.Allow] and [Client.AllowPolicy].
type AllowOption func(*allowConfig)

// WithAlgorithm picks the algorithm of an inline limit (default [SlidingWindow]).
func WithAlgorithm(algorithm Algorithm) AllowOption {
	return func(c *allowConfig) { c.algorithm = algorithm }
}

// WithBurst sets a token bucket's burst (default: the limit).
func WithBurst(burst uint64) AllowOption {
	return func(c *allowConfig) { c.burst = burst }
}

// WithCost makes the request consume cost units instead of 1.
func WithCost(cost uint64) AllowOption {
	return func(c *allowConfig) { c.cost = cost }
}

// WithFailOpen answers allowed (with Degraded set) instead of failing while Redis is down.
func WithFailOpen() AllowOption {
	return func(c *allowConfig) { c.failOpen = true }
}

// WithDryRun evaluates the limit without consuming anything.
func WithDryRun() AllowOption {
	return func(c *allowConfig) { c.dryRun = true }
}

// Allow consumes one unit (or [WithCost]) of the limit "limit per period" on key, shared by
// every replica of every caller. It is not retried: a Check whose answer was lost may
// already have consumed.
func (c *Client) Allow(ctx context.Context, key string, limit uint64, period time.Duration, options ...AllowOption) (Decision, error) {
	cfg := allowConfig{algorithm: SlidingWindow}
	for _, option := range options {
		option(&cfg)
	}
	source := &batonv1.LimitRequest_Limit{Limit: &batonv1.Limit{
		Algorithm: cfg.algorithm,
		Limit:     limit,
		Period:    durationpb.New(period),
		Burst:     cfg.burst,
	}}
	return c.check(ctx, &batonv1.LimitRequest{Key: key, Source: source, Cost: cfg.cost}, cfg)
}

// AllowPolicy is [Client.Allow] with a limit named in the server's configuration.
func (c *Client) AllowPolicy(ctx context.Context, key, policy string, options ...AllowOption) (Decision, error) {
	var cfg allowConfig
	for _, option := range options {
		option(&cfg)
	}
	source := &batonv1.LimitRequest_Policy{Policy: policy}
	return c.check(ctx, &batonv1.LimitRequest{Key: key, Source: source, Cost: cfg.cost}, cfg)
}

func (c *Client) check(ctx context.Context, limit *batonv1.LimitRequest, cfg allowConfig) (Decision, error) {
	response, err := c.RateLimits.Check(ctx, &batonv1.CheckRequest{
		Limits:   []*batonv1.LimitRequest{limit},
		DryRun:   cfg.dryRun,
		FailOpen: cfg.failOpen,
	})
	if err != nil {
		return Decision{}, FromError(err)
	}
	decision := Decision{
		Allowed:    response.GetAllowed(),
		RetryAfter: response.GetRetryAfter().AsDuration(),
		Degraded:   response.GetDegraded(),
	}
	// A degraded answer carries no per-limit results.
	if results := response.GetResults(); len(results) == 1 {
		decision.Limit = results[0].GetLimit()
		decision.Remaining = results[0].GetRemaining()
		decision.ResetAfter = results[0].GetResetAfter().AsDuration()
	}
	return decision, nil
}
