package baton

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// CacheEntry is a cached value with its metadata.
type CacheEntry struct {
	Value []byte
	// Version changes on every write; pass it to [WithIfVersion] for compare-and-set.
	Version uint64
	// ExpiresAt is when the entry stops being fresh, by the Redis server's clock.
	ExpiresAt time.Time
	// Stale: served past ExpiresAt, within its stale ttl, while another caller refreshes it.
	Stale bool
}

func entryOf(entry *batonv1.CacheEntry) CacheEntry {
	return CacheEntry{
		Value:     entry.GetValue(),
		Version:   entry.GetVersion(),
		ExpiresAt: entry.GetExpiresAt().AsTime(),
		Stale:     entry.GetStale(),
	}
}

type cacheConfig struct {
	ifVersion   uint64
	ifAbsent    bool
	tags        []string
	staleTTL    time.Duration
	loadTimeout time.Duration
	wait        time.Duration
}

// CacheOption tunes [Client.CacheSet], [Client.CacheDelete] and [Client.GetOrLoad]; each
// says which options it reads.
type CacheOption func(*cacheConfig)

// WithIfVersion writes or deletes only if the entry is at exactly this version; otherwise the
// call fails with [ErrVersionMismatch].
func WithIfVersion(version uint64) CacheOption {
	return func(c *cacheConfig) { c.ifVersion = version }
}

// WithIfAbsent writes only if the key holds no fresh entry; otherwise [ErrAlreadyExists].
func WithIfAbsent() CacheOption {
	return func(c *cacheConfig) { c.ifAbsent = true }
}

// WithTags tags the entry for [Client.InvalidateTag].
func WithTags(tags ...string) CacheOption {
	return func(c *cacheConfig) { c.tags = tags }
}

// WithStaleTTL lets the entry be served, marked stale, for this long past its ttl while one
// [Client.GetOrLoad] caller refreshes it, so the others do not wait for the loader.
func WithStaleTTL(staleTTL time.Duration) CacheOption {
	return func(c *cacheConfig) { c.staleTTL = staleTTL }
}

// WithLoadTimeout is how long the other callers of [Client.GetOrLoad] wait for this one's
// loader before one of them is given the job instead (default 10 s: Baton's default fill lease).
func WithLoadTimeout(timeout time.Duration) CacheOption {
	return func(c *cacheConfig) { c.loadTimeout = timeout }
}

func optionalDuration(d time.Duration) *durationpb.Duration {
	if d <= 0 {
		return nil
	}
	return durationpb.New(d)
}

// CacheGet reads key; found is false when it holds no fresh entry. Retried on UNAVAILABLE.
func (c *Client) CacheGet(ctx context.Context, key string) (entry CacheEntry, found bool, err error) {
	var response *batonv1.GetResponse
	err = c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Cache.Get(ctx, &batonv1.GetRequest{Key: key})
		return err
	})
	if err != nil || !response.GetFound() {
		return CacheEntry{}, false, err
	}
	return entryOf(response.GetEntry()), true, nil
}

// CacheSet writes key for ttl. Options: [WithIfVersion], [WithIfAbsent], [WithTags],
// [WithStaleTTL]. Not retried: a conditional write whose answer was lost would fail its
// own retry.
func (c *Client) CacheSet(ctx context.Context, key string, value []byte, ttl time.Duration, options ...CacheOption) (CacheEntry, error) {
	var cfg cacheConfig
	for _, option := range options {
		option(&cfg)
	}
	response, err := c.Cache.Set(ctx, &batonv1.SetRequest{
		Key:       key,
		Value:     value,
		Ttl:       durationpb.New(ttl),
		IfVersion: cfg.ifVersion,
		IfAbsent:  cfg.ifAbsent,
		Tags:      cfg.tags,
		StaleTtl:  optionalDuration(cfg.staleTTL),
	})
	if err != nil {
		return CacheEntry{}, FromError(err)
	}
	return entryOf(response.GetEntry()), nil
}

// CacheDelete removes key; false when there was nothing to remove. Options: [WithIfVersion].
// Retried on UNAVAILABLE.
func (c *Client) CacheDelete(ctx context.Context, key string, options ...CacheOption) (bool, error) {
	var cfg cacheConfig
	for _, option := range options {
		option(&cfg)
	}
	var response *batonv1.DeleteResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Cache.Delete(ctx, &batonv1.DeleteRequest{Key: key, IfVersion: cfg.ifVersion})
		return err
	})
	return response.GetDeleted(), err
}

// InvalidateTag makes every entry written with tag read as missing.
func (c *Client) InvalidateTag(ctx context.Context, tag string) error {
	_, err := c.Cache.InvalidateTag(ctx, &batonv1.InvalidateTagRequest{Tag: tag})
	return FromError(err)
}

// fetchWait is how long one Fetch waits for another caller's loader before asking again.
// A waiting Fetch is only ever answered the value or a timeout, never the fill token, so
// this bounds how long a loader's failure (its abandoned token) keeps the waiters idle.
const fetchWait = time.Second

// GetOrLoad returns the cached value of key, or calls load, stores its value for ttl, and
// returns it. Across every caller of every process, one load runs per miss: the others wait
// for its value (Baton's Fetch/Fill), instead of all hitting the database at once. If load
// fails or panics, the duty passes at once to a waiting caller and its error is returned.
// If the entry is stale (see [WithStaleTTL]) the one caller that refreshes it runs load and
// the others get the stale value at once; when that refresh fails, its caller gets the
// stale value too. Options: [WithTags], [WithStaleTTL], [WithLoadTimeout].
func (c *Client) GetOrLoad(ctx context.Context, key string, ttl time.Duration, load func(ctx context.Context) ([]byte, error), options ...CacheOption) ([]byte, error) {
	cfg := cacheConfig{wait: fetchWait}
	for _, option := range options {
		option(&cfg)
	}
	for {
		response, err := c.fetch(ctx, key, cfg)
		if err != nil {
			return nil, err
		}
		token := response.GetFillToken()
		switch {
		case token != "":
			value, err := c.loadAndFill(ctx, key, token, ttl, load, cfg)
			if err != nil && response.GetFound() {
				return response.GetEntry().GetValue(), nil
			}
			return value, err
		case response.GetFound():
			return response.GetEntry().GetValue(), nil
		}
		// The wait ran out while another caller was loading; ask again (if that caller died,
		// its token expires after its load timeout and one of us gets the next).
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("baton: waiting for %q to be loaded: %w", key, context.Cause(ctx))
		}
	}
}

// fetch is one Fetch, retried on UNAVAILABLE (safe for reads), whose wait ends before ctx's
// deadline so that the answer arrives in time.
func (c *Client) fetch(ctx context.Context, key string, cfg cacheConfig) (*batonv1.FetchResponse, error) {
	wait := cfg.wait
	if deadline, ok := ctx.Deadline(); ok {
		wait = max(min(wait, time.Until(deadline)-100*time.Millisecond), 0)
	}
	request := &batonv1.FetchRequest{Key: key, LeaseTtl: optionalDuration(cfg.loadTimeout), WaitTimeout: durationpb.New(wait)}
	var response *batonv1.FetchResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) error {
		callCtx := ctx
		if _, hasDeadline := ctx.Deadline(); !hasDeadline && c.defaultTimeout > 0 {
			var cancel context.CancelFunc
			callCtx, cancel = context.WithTimeout(ctx, wait+c.defaultTimeout)
			defer cancel()
		}
		var err error
		response, err = c.Cache.Fetch(callCtx, request)
		return err
	})
	return response, err
}

func (c *Client) loadAndFill(ctx context.Context, key, token string, ttl time.Duration, load func(context.Context) ([]byte, error), cfg cacheConfig) (value []byte, err error) {
	loaded := false
	defer func() {
		if !loaded {
			// Hand the duty on at once rather than after the load timeout, even when ctx is
			// done or load panicked.
			c.abandon(context.WithoutCancel(ctx), key, token)
		}
	}()
	value, err = load(ctx)
	if err != nil {
		return nil, err
	}
	loaded = true
	request := &batonv1.FillRequest{
		Key:       key,
		FillToken: token,
		Value:     value,
		Ttl:       durationpb.New(ttl),
		Tags:      cfg.tags,
		StaleTtl:  optionalDuration(cfg.staleTTL),
	}
	// The loaded value is the caller's answer whatever Fill says: FILL_TOKEN_STALE means a
	// newer write won (or a retried Fill had been applied), and any other failure only
	// costs the next caller a load.
	_ = c.retryUnavailable(context.WithoutCancel(ctx), func(ctx context.Context) error {
		_, err := c.Cache.Fill(ctx, request)
		return err
	})
	return value, nil
}

func (c *Client) abandon(ctx context.Context, key, token string) {
	_ = c.retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := c.Cache.Fill(ctx, &batonv1.FillRequest{Key: key, FillToken: token, Abandon: true})
		return err
	})
}
