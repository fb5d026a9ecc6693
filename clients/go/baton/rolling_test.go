package baton_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

// TestRollingRestartLosesNoLeaseAndRunsNoJobTwice restarts each of three replicas in turn
// (SIGTERM, wait for exit, start again on the same port) while three lock holders and three
// workers use all three through one address list.
func TestRollingRestartLosesNoLeaseAndRunsNoJobTwice(t *testing.T) {
	if testing.Short() {
		t.Skip("restarts three replicas under load")
	}
	redis := batontest.StartRedis(t)
	batonArgs := []string{"--shutdown-grace", "5s"} // and the harness's --shutdown-delay 200ms
	var addrs []string
	var replicas []*batontest.Baton
	for range 3 {
		addr := fmt.Sprintf("127.0.0.1:%d", batontest.FreePort(t))
		addrs = append(addrs, addr)
		replicas = append(replicas, batontest.StartBaton(t, redis, addr, batonArgs...))
	}
	target := "ipv4:" + strings.Join(addrs, ",")
	ctx := testContext(t)

	var (
		gapsMu  sync.Mutex
		longest = map[string]time.Duration{}
		counts  = map[string]int{}
	)
	defer baton.ObserveReconnects(func(kind string, gap time.Duration) {
		gapsMu.Lock()
		defer gapsMu.Unlock()
		longest[kind] = max(longest[kind], gap)
		counts[kind]++
	})()

	// Three lock holders: each takes its own lock for 1-4 s at a time, so that holds span
	// the restarts, and counts a lease ended by anything but its own Unlock. Each has its
	// own client on all three replicas, pick_first with replica i first: every restart then
	// ends at least one KeepAlive stream (with round_robin, all may happen to be elsewhere).
	// pick_first resumes only once the draining replica closes the connection (after its
	// 200 ms shutdown delay); long holds make a hold that ends first, unobserved, rare.
	var (
		holds, lostLeases atomic.Int32
		holdersDone       = make(chan struct{})
		holders           sync.WaitGroup
		lossesMu          sync.Mutex
		losses            []error
	)
	for holder := range 3 {
		holders.Add(1)
		rotated := append(append([]string{}, addrs[holder:]...), addrs[:holder]...)
		locks := connect(t, "ipv4:"+strings.Join(rotated, ","), baton.WithLoadBalancing("pick_first"))
		go func() {
			defer holders.Done()
			name := unique(fmt.Sprint("rolling-lock-", holder))
			var lastToken uint64
			for {
				select {
				case <-holdersDone:
					return
				default:
				}
				lease, err := locks.Lock(ctx, name, 2*time.Second, baton.WithOwner(fmt.Sprint("holder-", holder)))
				if err != nil {
					t.Errorf("holder %d: Lock: %v", holder, err)
					return
				}
				if lease.FencingToken() <= lastToken {
					t.Errorf("holder %d: fencing token %d after %d", holder, lease.FencingToken(), lastToken)
				}
				lastToken = lease.FencingToken()
				select {
				case <-lease.Done():
				case <-time.After(time.Duration(1000+rand.IntN(3000)) * time.Millisecond):
				}
				if err := lease.Unlock(); err != nil {
					if errors.Is(err, baton.ErrLeaseLost) {
						lostLeases.Add(1)
					}
					lossesMu.Lock()
					losses = append(losses, fmt.Errorf("holder %d: %w", holder, err))
					lossesMu.Unlock()
				}
				holds.Add(1)
			}
		}()
	}

	// Three workers, each on its own connection, recording every run of every job.
	const jobs = 1500
	queue := unique("rolling")
	var (
		runsMu sync.Mutex
		runs   = map[string]int{}
	)
	record := newSettlements()
	handler := func(_ context.Context, job *baton.Job) ([]byte, error) {
		runsMu.Lock()
		runs[job.ID]++
		runsMu.Unlock()
		time.Sleep(time.Duration(5+rand.IntN(16)) * time.Millisecond)
		return nil, nil
	}
	workersCtx, stopWorkers := context.WithCancel(context.Background())
	defer stopWorkers()
	workerErrs := make(chan error, 3)
	for worker := range 3 {
		client := connect(t, target)
		go func() {
			workerErrs <- client.Consume(workersCtx, queue, 4, handler,
				baton.WithConsumerName(fmt.Sprint("worker-", worker)), baton.WithOnSettled(record.record),
				baton.WithShutdownGrace(5*time.Second))
		}()
	}

	// The jobs arrive during the restarts, so that deliveries and acks are in flight
	// throughout; the dedup key makes each Enqueue safe to retry.
	producer := connect(t, target)
	var (
		idsMu sync.Mutex
		ids   = map[string]bool{}
	)
	produced := make(chan struct{})
	go func() {
		defer close(produced)
		const period = 5 * time.Millisecond // about 7.5 s for all the jobs
		next := time.Now()
		for i := range jobs {
			enqueued, err := producer.Enqueue(ctx, queue, []byte(fmt.Sprint(i)),
				baton.WithDedupKey(fmt.Sprint("job-", i), time.Hour), baton.WithMaxAttempts(5))
			if err != nil {
				t.Errorf("enqueueing job %d: %v", i, err)
				return
			}
			idsMu.Lock()
			ids[enqueued.JobID] = true
			idsMu.Unlock()
			next = next.Add(period)
			time.Sleep(time.Until(next))
		}
	}()

	time.Sleep(time.Second)
	rollStarted := time.Now()
	for i, addr := range addrs {
		replicas[i].Terminate()
		replicas[i] = batontest.StartBaton(t, redis, addr, batonArgs...)
		time.Sleep(time.Second)
	}
	rollTook := time.Since(rollStarted)
	<-produced
	close(holdersDone)
	holders.Wait()
	batontest.Eventually(t, 30*time.Second, "every job acked", func() bool { return record.ackedCount() == jobs })
	stopWorkers()
	for range 3 {
		if err := <-workerErrs; err != nil {
			t.Errorf("Consume: %v", err)
		}
	}

	duplicates := 0
	runsMu.Lock()
	for id, n := range runs {
		if n > 1 {
			duplicates++
			t.Errorf("job %s ran %d times", id, n)
		}
	}
	runsMu.Unlock()
	_, others := record.notStarted()
	for _, err := range others {
		t.Errorf("settlement: %v", err)
	}
	// Every job SUCCEEDED on its first attempt: no attempt charged for a job never started.
	idsMu.Lock()
	jobIDs := make([]string, 0, len(ids))
	for id := range ids {
		jobIDs = append(jobIDs, id)
	}
	idsMu.Unlock()
	if len(jobIDs) != jobs {
		t.Errorf("%d distinct jobs enqueued, want %d", len(jobIDs), jobs)
	}
	var (
		checks      sync.WaitGroup
		notFirstRun atomic.Int32
		next        atomic.Int32
	)
	for range 8 {
		checks.Add(1)
		go func() {
			defer checks.Done()
			for i := int(next.Add(1)) - 1; i < len(jobIDs); i = int(next.Add(1)) - 1 {
				response, err := producer.Queue.GetJob(ctx, &batonv1.GetJobRequest{JobId: jobIDs[i]})
				if err != nil {
					t.Errorf("GetJob: %v", baton.FromError(err))
					return
				}
				if job := response.GetJob(); job.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || job.GetAttempts() != 1 {
					notFirstRun.Add(1)
					t.Errorf("job %s: %s with %d attempts, want SUCCEEDED with 1", job.GetJobId(), job.GetState(), job.GetAttempts())
				}
			}
		}()
	}
	checks.Wait()

	lossesMu.Lock()
	for _, err := range losses {
		t.Errorf("Unlock: %v", err)
	}
	lossesMu.Unlock()
	gapsMu.Lock()
	defer gapsMu.Unlock()
	t.Logf("rolling restart of 3 replicas took %s: %d jobs, %d ran twice, %d not SUCCEEDED on attempt 1; "+
		"%d lock holds, %d lost; reconnects: %d KeepAlive (longest gap %s), %d Consume (longest gap %s)",
		rollTook, jobs, duplicates, notFirstRun.Load(), holds.Load(), lostLeases.Load(),
		counts["keepalive"], longest["keepalive"], counts["consume"], longest["consume"])
	// Each replica's shutdown ended streams on it: a test in which nothing reconnected
	// proves nothing.
	if counts["keepalive"] == 0 || counts["consume"] == 0 {
		t.Errorf("reconnects: %v; want streams of both kinds to have moved replica", counts)
	}
	// Two live replicas remain at every step: a stream finds one at once, not after seconds.
	for kind, gap := range longest {
		if gap > time.Second {
			t.Errorf("a %s stream took %s to reconnect, want well under a second", kind, gap)
		}
	}
}
