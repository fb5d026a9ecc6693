package baton_test

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// groupTracker watches handlers run: how many jobs of each group run at once, and in what
// order each group's jobs start. A handler calls start first and end (deferred) last, so
// end comes before Consume acks the job: two jobs of one group seen running together were
// both ACTIVE on Baton together.
type groupTracker struct {
	mu         sync.Mutex
	active     map[string]int
	maxActive  map[string]int
	running    int
	maxRunning int
	// started lists each group's starts as "<index>#<attempt>", the index read from the
	// payload "<group>/<index>".
	started  map[string][]string
	problems []string
}

func newGroupTracker() *groupTracker {
	return &groupTracker{active: map[string]int{}, maxActive: map[string]int{}, started: map[string][]string{}}
}

func (g *groupTracker) start(job *baton.Job) {
	g.mu.Lock()
	defer g.mu.Unlock()
	group, index, _ := strings.Cut(string(job.Payload), "/")
	if job.Group != group {
		g.problems = append(g.problems, fmt.Sprintf("job %q delivered with Group %q", job.Payload, job.Group))
	}
	g.active[group]++
	g.maxActive[group] = max(g.maxActive[group], g.active[group])
	g.running++
	g.maxRunning = max(g.maxRunning, g.running)
	g.started[group] = append(g.started[group], fmt.Sprintf("%s#%d", index, job.Attempt))
}

func (g *groupTracker) end(job *baton.Job) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.active[job.Group]--
	g.running--
}

// hold is a handler's simulated work.
func hold(ctx context.Context, work time.Duration) error {
	select {
	case <-time.After(work):
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// awaitClosed waits for done, failing the test when ctx (the test's safety timeout) ends
// first.
func awaitClosed(ctx context.Context, t *testing.T, done <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestStrictFIFOGroupsRunOneJobAtATimeInEnqueueOrder(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("fifo")
	if err := client.ConfigureQueue(ctx, queue, baton.QueueConfig{GroupFIFO: true}); err != nil {
		t.Fatal(err)
	}
	groups := []string{"tenant-a", "tenant-b", "tenant-c"}
	const perGroup = 10
	// Interleaved, so that enqueue order within a group is not the order of the queue as a
	// whole.
	for i := range perGroup {
		for _, group := range groups {
			_, err := client.Enqueue(ctx, queue, fmt.Appendf(nil, "%s/%d", group, i),
				baton.WithGroup(group), baton.WithRetryBackoff(20*time.Millisecond, 20*time.Millisecond, 1))
			if err != nil {
				t.Fatal(err)
			}
		}
	}

	tracker := newGroupTracker()
	var succeeded atomic.Int32
	done := make(chan struct{})
	consumeInBackground(t, client, queue, 8, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		tracker.start(job)
		defer tracker.end(job)
		if err := hold(ctx, 10*time.Millisecond); err != nil {
			return nil, err
		}
		// A job that fails and waits to retry holds its group: 4 must not overtake 3.
		if string(job.Payload) == "tenant-b/3" && job.Attempt == 1 {
			return nil, errors.New("transient failure")
		}
		if succeeded.Add(1) == int32(len(groups)*perGroup) {
			close(done)
		}
		return nil, nil
	})
	awaitClosed(ctx, t, done, "every job to succeed")

	tracker.mu.Lock()
	defer tracker.mu.Unlock()
	for _, problem := range tracker.problems {
		t.Error(problem)
	}
	for _, group := range groups {
		var want []string
		for i := range perGroup {
			want = append(want, fmt.Sprintf("%d#1", i))
			if group == "tenant-b" && i == 3 {
				want = append(want, "3#2")
			}
		}
		if got := tracker.started[group]; !slices.Equal(got, want) {
			t.Errorf("group %s started %v, want %v (index#attempt, in enqueue order)", group, got, want)
		}
		if tracker.maxActive[group] != 1 {
			t.Errorf("group %s had %d jobs running at once, want 1", group, tracker.maxActive[group])
		}
	}
	if tracker.maxRunning < 2 {
		t.Errorf("at most %d job ran at a time: the groups should run side by side", tracker.maxRunning)
	}
}

func TestGroupConcurrencyBoundsEachGroupsRunningJobs(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("tenants")
	if err := client.ConfigureQueue(ctx, queue, baton.QueueConfig{GroupConcurrency: 2}); err != nil {
		t.Fatal(err)
	}
	groups := []string{"a", "b", "c", "d"}
	const perGroup = 12
	// One EnqueueBatch, its requests filled by the Enqueue options.
	var requests []*batonv1.EnqueueRequest
	for i := range perGroup {
		for _, group := range groups {
			request := &batonv1.EnqueueRequest{Queue: queue, Payload: fmt.Appendf(nil, "%s/%d", group, i)}
			baton.WithGroup(group)(request)
			requests = append(requests, request)
		}
	}
	if _, err := client.Queue.EnqueueBatch(ctx, &batonv1.EnqueueBatchRequest{Requests: requests}); err != nil {
		t.Fatal(baton.FromError(err))
	}

	tracker := newGroupTracker()
	var succeeded atomic.Int32
	done := make(chan struct{})
	consumeInBackground(t, client, queue, 16, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		tracker.start(job)
		defer tracker.end(job)
		if err := hold(ctx, 15*time.Millisecond); err != nil {
			return nil, err
		}
		if succeeded.Add(1) == int32(len(requests)) {
			close(done)
		}
		return nil, nil
	})
	awaitClosed(ctx, t, done, "every job to succeed")

	tracker.mu.Lock()
	defer tracker.mu.Unlock()
	for _, problem := range tracker.problems {
		t.Error(problem)
	}
	reachedTwo := false
	for _, group := range groups {
		if tracker.maxActive[group] > 2 {
			t.Errorf("group %s had %d jobs running at once, want at most 2", group, tracker.maxActive[group])
		}
		reachedTwo = reachedTwo || tracker.maxActive[group] == 2
		if len(tracker.started[group]) != perGroup {
			t.Errorf("group %s: %d starts, want %d", group, len(tracker.started[group]), perGroup)
		}
	}
	if !reachedTwo {
		t.Errorf("no group ever ran 2 jobs at once (max per group %v): the limit is 2, not 1", tracker.maxActive)
	}
	if tracker.maxRunning <= 2 {
		t.Errorf("at most %d jobs ran at a time: the groups should run side by side", tracker.maxRunning)
	}
}

func TestAStartLimitSpacesHandlerStarts(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("throttled")
	const limit, total = 20, 50
	err := client.ConfigureQueue(ctx, queue, baton.QueueConfig{
		StartLimit: &baton.Limit{Algorithm: baton.SlidingWindow, Limit: limit, Period: time.Second},
	})
	if err != nil {
		t.Fatal(err)
	}
	ids := enqueueBatch(t, client, queue, total)

	var mu sync.Mutex
	var starts []time.Time // time.Now carries the monotonic clock
	handled := map[string]bool{}
	done := make(chan struct{})
	consumeInBackground(t, client, queue, 32, func(_ context.Context, job *baton.Job) ([]byte, error) {
		mu.Lock()
		defer mu.Unlock()
		starts = append(starts, time.Now())
		handled[job.ID] = true
		if len(handled) == total {
			close(done)
		}
		return nil, nil
	})
	awaitClosed(ctx, t, done, "every job to run")

	mu.Lock()
	defer mu.Unlock()
	for _, id := range ids {
		if !handled[id] {
			t.Errorf("job %s never ran", id)
		}
	}
	// A handler starts a little after Baton delivers its job, by a varying delay, so the
	// windows checked are a quarter of a second shorter than the limit's period.
	const margin = 250 * time.Millisecond
	first := starts[0]
	inFirstSecond := 0
	for _, start := range starts {
		if start.Sub(first) < time.Second-margin {
			inFirstSecond++
		}
	}
	if inFirstSecond > limit {
		t.Errorf("%d handlers started within %v of the first, want at most %d", inFirstSecond, time.Second-margin, limit)
	}
	for i := 0; i+limit < len(starts); i++ {
		if gap := starts[i+limit].Sub(starts[i]); gap < time.Second-margin {
			t.Errorf("starts %d and %d are %v apart: %d starts within a second", i, i+limit, gap, limit+1)
			break
		}
	}
}

func TestGetQueueConfigReturnsWhatWasSet(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("configured")
	config, err := client.GetQueueConfig(ctx, queue)
	if err != nil || !reflect.DeepEqual(config, baton.QueueConfig{}) {
		t.Fatalf("a queue never configured: %+v, %v; want the zero QueueConfig", config, err)
	}
	for _, want := range []baton.QueueConfig{
		{
			GroupConcurrency:   3,
			GroupFIFO:          true,
			StartLimit:         &baton.Limit{Algorithm: baton.TokenBucket, Limit: 100, Period: time.Minute, Burst: 10},
			StartLimitPerGroup: true,
		},
		// The whole configuration is replaced: what is left zero is turned off.
		{GroupConcurrency: 10_000, StartLimit: &baton.Limit{Algorithm: baton.FixedWindow, Limit: 7, Period: 250 * time.Millisecond}},
		{StartLimit: &baton.Limit{Algorithm: baton.SlidingWindow, Limit: 20, Period: time.Second}},
		{},
	} {
		if err := client.ConfigureQueue(ctx, queue, want); err != nil {
			t.Fatalf("ConfigureQueue(%+v): %v", want, err)
		}
		got, err := client.GetQueueConfig(ctx, queue)
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("GetQueueConfig after ConfigureQueue(%s): %s", describeConfig(want), describeConfig(got))
		}
	}
}

func describeConfig(config baton.QueueConfig) string {
	limit := "none"
	if config.StartLimit != nil {
		limit = fmt.Sprintf("%+v", *config.StartLimit)
	}
	return fmt.Sprintf("{GroupConcurrency:%d GroupFIFO:%t StartLimit:%s StartLimitPerGroup:%t}",
		config.GroupConcurrency, config.GroupFIFO, limit, config.StartLimitPerGroup)
}

func TestAnInvalidQueueConfigIsRefusedNamingTheField(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("misconfigured")
	valid := baton.QueueConfig{GroupConcurrency: 4}
	if err := client.ConfigureQueue(ctx, queue, valid); err != nil {
		t.Fatal(err)
	}
	for _, invalid := range []struct {
		config baton.QueueConfig
		field  string
	}{
		{baton.QueueConfig{GroupConcurrency: 10_001}, "config.group_concurrency"},
		{baton.QueueConfig{StartLimit: &baton.Limit{Limit: 20, Period: time.Second}}, "config.start_limit.algorithm"},
		{baton.QueueConfig{StartLimit: &baton.Limit{Algorithm: baton.SlidingWindow, Limit: 20}}, "config.start_limit.period"},
	} {
		err := client.ConfigureQueue(ctx, queue, invalid.config)
		var batonErr *baton.Error
		if !errors.Is(err, baton.ErrInvalidArgument) || !errors.As(err, &batonErr) {
			t.Fatalf("ConfigureQueue(%s): got %v, want an INVALID_ARGUMENT *baton.Error", describeConfig(invalid.config), err)
		}
		if baton.ReasonOf(err) != batonv1.ErrorReason_INVALID_FIELD || batonErr.Field != invalid.field {
			t.Errorf("ConfigureQueue(%s): reason %q field %q, want INVALID_FIELD on %s",
				describeConfig(invalid.config), batonErr.Reason, batonErr.Field, invalid.field)
		}
	}
	// Nothing was written.
	if got, err := client.GetQueueConfig(ctx, queue); err != nil || !reflect.DeepEqual(got, valid) {
		t.Fatalf("after the refused configurations: %s, %v; want %s", describeConfig(got), err, describeConfig(valid))
	}
}
