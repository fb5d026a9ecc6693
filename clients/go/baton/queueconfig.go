package baton

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// QueueConfig says how a queue delivers its jobs; see [Client.ConfigureQueue]. The zero
// value is what a queue never configured has: no group limit, no start limit. Groups are
// set per job with [WithGroup].
type QueueConfig struct {
	// GroupConcurrency bounds the jobs of one group ACTIVE at once, on every replica
	// together; 0 means no limit, at most 10,000.
	GroupConcurrency uint32
	// GroupFIFO makes each group strict FIFO (as SQS FIFO message groups): one job of a group
	// at a time, in enqueue order. A job that failed and waits to retry holds its group until
	// it is delivered again, so the next job never overtakes it; a job that goes dead or is
	// cancelled releases it. It implies GroupConcurrency 1.
	GroupFIFO bool
	// StartLimit, when set, bounds job starts (deliveries) per period, counted with the rate
	// limiter's own algorithms (a [SlidingWindow] limit holds in every span of one period,
	// exactly). A limited queue keeps jobs READY until the limit allows them. nil means none.
	StartLimit *Limit
	// StartLimitPerGroup applies StartLimit to each group on its own (the jobs without a
	// group counting as one more group) instead of to the whole queue.
	StartLimitPerGroup bool
}

// Limit is a rate limit: at most Limit per Period, counted by Algorithm (baton.v1.Limit).
type Limit struct {
	// Algorithm must be set: [FixedWindow], [SlidingWindow] or [TokenBucket]. A
	// SlidingWindow Limit above Baton's max_sliding_window_limit (10,000 by default) is
	// refused.
	Algorithm Algorithm
	// Limit is how many are admitted per Period; at least 1.
	Limit uint64
	// Period is from 1 ms up to Baton's maximum (30 days by default).
	Period time.Duration
	// Burst is how many may pass at once, for a TokenBucket only; 0 means Limit.
	Burst uint64
}

func (l *Limit) toProto() *batonv1.Limit {
	if l == nil {
		return nil
	}
	return &batonv1.Limit{Algorithm: l.Algorithm, Limit: l.Limit, Period: durationpb.New(l.Period), Burst: l.Burst}
}

func limitOf(limit *batonv1.Limit) *Limit {
	if limit == nil {
		return nil
	}
	return &Limit{
		Algorithm: limit.GetAlgorithm(),
		Limit:     limit.GetLimit(),
		Period:    limit.GetPeriod().AsDuration(),
		Burst:     limit.GetBurst(),
	}
}

// ConfigureQueue sets how queue delivers, replacing its whole configuration (the rules
// config leaves zero are turned off; QueueConfig{} restores the defaults). It takes effect
// on the next delivery of every replica; jobs already delivered are not affected. The
// configuration is kept until changed.
//
//	err := client.ConfigureQueue(ctx, "invoices", baton.QueueConfig{
//		GroupConcurrency: 2, // at most 2 jobs of one tenant at once
//		StartLimit:       &baton.Limit{Algorithm: baton.SlidingWindow, Limit: 100, Period: time.Second},
//	})
//
// An invalid config is INVALID_ARGUMENT with [Error.Field] naming the field:
// "config.group_concurrency" over 10,000, "config.start_limit.algorithm" (and the other
// fields of config.start_limit, as for [Client.Allow]). Retried on UNAVAILABLE (it sets the
// whole configuration, so a repeat is harmless).
func (c *Client) ConfigureQueue(ctx context.Context, queue string, config QueueConfig) error {
	request := &batonv1.ConfigureQueueRequest{Queue: queue, Config: &batonv1.QueueConfig{
		GroupConcurrency:   config.GroupConcurrency,
		GroupFifo:          config.GroupFIFO,
		StartLimit:         config.StartLimit.toProto(),
		StartLimitPerGroup: config.StartLimitPerGroup,
	}}
	return c.retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := c.Queue.ConfigureQueue(ctx, request)
		return err
	})
}

// GetQueueConfig reads queue's configuration, as [Client.ConfigureQueue] last set it; a
// queue never configured has the zero QueueConfig. Retried on UNAVAILABLE.
func (c *Client) GetQueueConfig(ctx context.Context, queue string) (QueueConfig, error) {
	var response *batonv1.GetQueueConfigResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Queue.GetQueueConfig(ctx, &batonv1.GetQueueConfigRequest{Queue: queue})
		return err
	})
	if err != nil {
		return QueueConfig{}, err
	}
	config := response.GetConfig()
	return QueueConfig{
		GroupConcurrency:   config.GetGroupConcurrency(),
		GroupFIFO:          config.GetGroupFifo(),
		StartLimit:         limitOf(config.GetStartLimit()),
		StartLimitPerGroup: config.GetStartLimitPerGroup(),
	}, nil
}
