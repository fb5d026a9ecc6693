package baton_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

// settlements records what Consume reported for each delivery.
type settlements struct {
	mu    sync.Mutex
	acked map[string]int // job id -> successful acks
	other []error
}

func newSettlements() *settlements { return &settlements{acked: map[string]int{}} }

func (s *settlements) record(job *baton.Job, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err == nil {
		s.acked[job.ID]++
	} else {
		s.other = append(s.other, err)
	}
}

// notStarted counts the deliveries handed back unstarted; others are the remaining errors.
func (s *settlements) notStarted() (handedBack int, others []error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, err := range s.other {
		if errors.Is(err, baton.ErrJobNotStarted) {
			handedBack++
		} else {
			others = append(others, err)
		}
	}
	return handedBack, others
}

func (s *settlements) ackedCount() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.acked)
}

// consumeInBackground runs Consume until the test ends and fails the test if it returns an error.
func consumeInBackground(t *testing.T, client *baton.Client, queue string, concurrency int, handler baton.Handler, options ...baton.ConsumeOption) {
	t.Helper()
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- client.Consume(ctx, queue, concurrency, handler, options...) }()
	t.Cleanup(func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("Consume: %v", err)
		}
	})
}

func getJob(t *testing.T, client *baton.Client, id string) *batonv1.Job {
	t.Helper()
	response, err := client.Queue.GetJob(testContext(t), &batonv1.GetJobRequest{JobId: id})
	if err != nil {
		t.Fatal(baton.FromError(err))
	}
	return response.GetJob()
}

func TestEnqueueWithDedupKeyAnswersTheFirstJob(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("emails")
	first, err := client.Enqueue(ctx, queue, []byte("welcome"), baton.WithDedupKey("signup:42", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	second, err := client.Enqueue(ctx, queue, []byte("welcome"), baton.WithDedupKey("signup:42", time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	if first.Duplicate || !second.Duplicate || second.JobID != first.JobID {
		t.Fatalf("got %+v then %+v, want the second to be a duplicate of the first", first, second)
	}
}

func TestConsumeAcksSuccessAndNacksFailureWithItsText(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("emails")
	enqueued, err := client.Enqueue(ctx, queue, []byte("to:ada"), baton.WithRetryBackoff(10*time.Millisecond, 10*time.Millisecond, 1))
	if err != nil {
		t.Fatal(err)
	}
	seen := make(chan baton.Job, 2)
	record := newSettlements()
	consumeInBackground(t, client, queue, 1, func(_ context.Context, job *baton.Job) ([]byte, error) {
		seen <- *job
		if job.Attempt == 1 {
			return nil, errors.New("smtp: 421 try again later")
		}
		return []byte("sent"), nil
	}, baton.WithOnSettled(record.record))
	first, second := <-seen, <-seen
	if first.Attempt != 1 || second.Attempt != 2 || string(second.Payload) != "to:ada" {
		t.Fatalf("deliveries %+v, %+v: want attempts 1 then 2 of the payload", first, second)
	}
	if second.LastError != "smtp: 421 try again later" {
		t.Fatalf("the retry's LastError is %q, want the first attempt's error text", second.LastError)
	}
	batontest.Eventually(t, 5*time.Second, "job succeeded", func() bool {
		job := getJob(t, client, enqueued.JobID)
		return job.GetState() == batonv1.JobState_JOB_STATE_SUCCEEDED && string(job.GetResult()) == "sent"
	})
}

func TestALongHandlerKeepsItsLeaseByExtendingIt(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("reports")
	enqueued, err := client.Enqueue(ctx, queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	var deliveries atomic.Int32
	record := newSettlements()
	handler := func(ctx context.Context, job *baton.Job) ([]byte, error) {
		deliveries.Add(1)
		select {
		case <-time.After(2500 * time.Millisecond): // 2.5 visibility timeouts
			return nil, nil
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
	// Two workers: without extension the lease would expire and the idle one get the job.
	for range 2 {
		consumeInBackground(t, client, queue, 1, handler, baton.WithVisibilityTimeout(time.Second), baton.WithOnSettled(record.record))
	}
	batontest.Eventually(t, 10*time.Second, "job acked", func() bool { return record.ackedCount() == 1 })
	if n := deliveries.Load(); n != 1 {
		t.Fatalf("delivered %d times, want once: the lease was not extended", n)
	}
	if job := getJob(t, client, enqueued.JobID); job.GetAttempts() != 1 {
		t.Fatalf("attempts %d, want 1", job.GetAttempts())
	}
}

func TestCancelJobAbortsItsHandlerAndItIsNotAcked(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("exports")
	enqueued, err := client.Enqueue(ctx, queue, nil)
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	aborted := make(chan error, 1)
	record := newSettlements()
	consumeInBackground(t, client, queue, 1, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		close(started)
		<-ctx.Done()
		aborted <- context.Cause(ctx)
		return nil, ctx.Err()
	}, baton.WithOnSettled(record.record))
	<-started
	if _, err := client.Queue.CancelJob(ctx, &batonv1.CancelJobRequest{JobId: enqueued.JobID}); err != nil {
		t.Fatal(baton.FromError(err))
	}
	select {
	case cause := <-aborted:
		if !errors.Is(cause, baton.ErrJobCancelled) {
			t.Fatalf("handler context ended with %v, want ErrJobCancelled", cause)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the handler was not told of the cancellation")
	}
	batontest.Eventually(t, 5*time.Second, "cancellation reported", func() bool {
		record.mu.Lock()
		defer record.mu.Unlock()
		return len(record.other) == 1 && errors.Is(record.other[0], baton.ErrJobCancelled)
	})
	if record.ackedCount() != 0 || getJob(t, client, enqueued.JobID).GetState() != batonv1.JobState_JOB_STATE_CANCELLED {
		t.Fatal("a cancelled job was acked")
	}
}

// runDoomedWorker is what TestTwoWorkersOneKilledMidJob runs in a child process (see
// TestMain): it takes jobs, says so on stdout, and hangs until it is killed.
func runDoomedWorker(target, queue string) {
	client, err := baton.New(target)
	if err != nil {
		panic(err)
	}
	_ = client.Consume(context.Background(), queue, 2, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		fmt.Printf("started %s\n", job.ID)
		<-ctx.Done()
		return nil, ctx.Err()
	})
}

func TestTwoWorkersOneKilledMidJob(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("emails")
	const jobs = 20
	enqueued := map[string]bool{}
	for i := range jobs {
		job, err := client.Enqueue(ctx, queue, []byte(fmt.Sprint("email-", i)))
		if err != nil {
			t.Fatal(err)
		}
		enqueued[job.JobID] = true
	}

	doomed := exec.Command(os.Args[0])
	doomed.Env = append(os.Environ(), "DOOMED_WORKER_TARGET="+client.Conn().Target(), "DOOMED_WORKER_QUEUE="+queue)
	stdout, err := doomed.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := doomed.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = doomed.Process.Kill(); _ = doomed.Wait() })
	inDoomedHands := map[string]bool{}
	lines := bufio.NewScanner(stdout)
	for len(inDoomedHands) < 2 && lines.Scan() {
		if id, ok := strings.CutPrefix(lines.Text(), "started "); ok {
			inDoomedHands[id] = true
		}
	}
	if len(inDoomedHands) != 2 {
		t.Fatalf("the doomed worker took %d jobs, want 2", len(inDoomedHands))
	}

	record := newSettlements()
	var mu sync.Mutex
	attempts := map[string]uint32{}
	consumeInBackground(t, client, queue, 4, func(_ context.Context, job *baton.Job) ([]byte, error) {
		mu.Lock()
		attempts[job.ID] = job.Attempt
		mu.Unlock()
		time.Sleep(20 * time.Millisecond)
		return nil, nil
	}, baton.WithOnSettled(record.record))
	// Killed mid-job: its connection drops and Baton hands its two jobs back at once,
	// long before their 30 s visibility timeout.
	batontest.Eventually(t, 10*time.Second, "the survivor acked the other jobs", func() bool { return record.ackedCount() >= jobs-2 })
	if err := doomed.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	batontest.Eventually(t, 10*time.Second, "every job acked", func() bool { return record.ackedCount() == jobs })

	record.mu.Lock()
	defer record.mu.Unlock()
	for id := range enqueued {
		if record.acked[id] != 1 {
			t.Errorf("job %s acked %d times, want exactly once", id, record.acked[id])
		}
	}
	if len(record.other) != 0 {
		t.Errorf("unexpected settlements: %v", record.other)
	}
	for id := range inDoomedHands {
		if attempts[id] != 2 {
			t.Errorf("job %s held by the killed worker was delivered as attempt %d, want 2", id, attempts[id])
		}
	}
}

func TestConsumeReconnectsAfterAShutdownAndAcksTheJobInHand(t *testing.T) {
	redis := batontest.StartRedis(t)
	first := batontest.StartBaton(t, redis, "127.0.0.1:0")
	second := batontest.StartBaton(t, redis, "127.0.0.1:0")
	// pick_first: the stream is on the first replica until it shuts down.
	worker := connect(t, "ipv4:"+first.Addr+","+second.Addr, baton.WithLoadBalancing("pick_first"))
	producer := connect(t, second.Addr)
	ctx := testContext(t)
	queue := unique("emails")

	release := make(chan struct{})
	started := make(chan string, 2)
	record := newSettlements()
	consumeInBackground(t, worker, queue, 1, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		started <- string(job.Payload)
		if string(job.Payload) == "in hand" {
			<-release
		}
		return nil, nil
	}, baton.WithOnSettled(record.record))
	if _, err := producer.Enqueue(ctx, queue, []byte("in hand")); err != nil {
		t.Fatal(err)
	}
	if got := <-started; got != "in hand" {
		t.Fatalf("started %q", got)
	}
	first.Terminate() // the stream ends UNAVAILABLE (SHUTTING_DOWN); the lease is kept
	close(release)
	batontest.Eventually(t, 10*time.Second, "the job in hand acked through the other replica", func() bool { return record.ackedCount() == 1 })
	if _, err := producer.Enqueue(ctx, queue, []byte("after")); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-started:
		if got != "after" {
			t.Fatalf("started %q, want the job enqueued after the shutdown", got)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not reconnect to the other replica")
	}
	batontest.Eventually(t, 10*time.Second, "both acked", func() bool { return record.ackedCount() == 2 })
}

func TestConsumeReturnsAnErrorNoRetryCanFix(t *testing.T) {
	client, _ := server(t)
	err := client.Consume(testContext(t), "", 1, func(context.Context, *baton.Job) ([]byte, error) { return nil, nil })
	var batonErr *baton.Error
	if !errors.As(err, &batonErr) || !errors.Is(err, baton.ErrInvalidArgument) || batonErr.Field != "queue" {
		t.Fatalf("consuming an empty queue name: got %v, want INVALID_ARGUMENT on queue", err)
	}
}

// enqueueBatch adds n jobs to queue in one call and returns their ids in order.
func enqueueBatch(t *testing.T, client *baton.Client, queue string, n int) []string {
	t.Helper()
	requests := make([]*batonv1.EnqueueRequest, n)
	for i := range requests {
		requests[i] = &batonv1.EnqueueRequest{Queue: queue, Payload: []byte(fmt.Sprint("job-", i))}
	}
	response, err := client.Queue.EnqueueBatch(testContext(t), &batonv1.EnqueueBatchRequest{Requests: requests})
	if err != nil {
		t.Fatal(baton.FromError(err))
	}
	ids := make([]string, n)
	for i, result := range response.GetResults() {
		ids[i] = result.GetJobId()
	}
	return ids
}

// activeJobs is the number of leased jobs of queue.
func activeJobs(t *testing.T, client *baton.Client, queue string) uint64 {
	t.Helper()
	stats, err := client.Queue.GetQueueStats(testContext(t), &batonv1.GetQueueStatsRequest{Queue: queue})
	if err != nil {
		t.Fatal(baton.FromError(err))
	}
	return stats.GetActive()
}

func startedCount(mu *sync.Mutex, started map[string]bool) int {
	mu.Lock()
	defer mu.Unlock()
	return len(started)
}

// checkStartedJobsSucceededAndOthersUncharged asserts that exactly the started jobs
// SUCCEEDED on their first attempt and that every other job is READY with no attempt charged.
func checkStartedJobsSucceededAndOthersUncharged(t *testing.T, client *baton.Client, ids []string, started map[string]bool) {
	t.Helper()
	for _, id := range ids {
		job := getJob(t, client, id)
		switch {
		case started[id] && (job.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || job.GetAttempts() != 1):
			t.Errorf("started job %s: %s with %d attempts, want SUCCEEDED with 1", id, job.GetState(), job.GetAttempts())
		case !started[id] && (job.GetState() != batonv1.JobState_JOB_STATE_READY || job.GetAttempts() != 0):
			t.Errorf("job %s never started: %s with %d attempts, want READY with 0", id, job.GetState(), job.GetAttempts())
		}
	}
}

func TestStopFinishesTheHundredJobsInHandAndTakesNoMore(t *testing.T) {
	client, _ := server(t)
	queue := unique("stop")
	const inFlight, total = 100, 250
	ids := enqueueBatch(t, client, queue, total)

	var (
		mu      sync.Mutex
		started = map[string]bool{}
		running atomic.Int32
	)
	record := newSettlements()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- client.Consume(ctx, queue, inFlight, func(ctx context.Context, job *baton.Job) ([]byte, error) {
			mu.Lock()
			started[job.ID] = true
			mu.Unlock()
			running.Add(1)
			defer running.Add(-1)
			select {
			case <-time.After(300 * time.Millisecond):
				return []byte("done"), nil
			case <-ctx.Done():
				return nil, context.Cause(ctx)
			}
		}, baton.WithShutdownGrace(20*time.Second), baton.WithOnSettled(record.record))
	}()
	batontest.Eventually(t, 10*time.Second, "100 handlers running", func() bool { return running.Load() == inFlight })
	stoppedAt := time.Now()
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Consume: %v", err)
		}
	case <-time.After(25 * time.Second):
		t.Fatal("Consume did not return after its handlers finished")
	}
	took := time.Since(stoppedAt)
	handedBack, others := record.notStarted()
	t.Logf("stop took %s; %d acked, %d handed back unstarted", took, record.ackedCount(), handedBack)
	// The handlers need 300 ms; the 20 s grace is a bound, not a wait.
	if took > 3*time.Second {
		t.Errorf("Consume returned %s after the stop, want as soon as its handlers were done", took)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(started) != inFlight || record.ackedCount() != inFlight || len(others) != 0 {
		t.Fatalf("started %d, acked %d, other settlements %v: want the 100 in hand finished and acked, no more taken",
			len(started), record.ackedCount(), others)
	}
	checkStartedJobsSucceededAndOthersUncharged(t, client, ids, started)
}

func TestStopHandsPrefetchedJobsBackWithoutChargingThem(t *testing.T) {
	client, _ := server(t)
	queue := unique("prefetch")
	const concurrency, prefetch, total = 2, 3, 10
	ids := enqueueBatch(t, client, queue, total)

	var (
		mu      sync.Mutex
		started = map[string]bool{}
	)
	finish := make(chan struct{})
	record := newSettlements()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- client.Consume(ctx, queue, concurrency, func(ctx context.Context, job *baton.Job) ([]byte, error) {
			mu.Lock()
			started[job.ID] = true
			mu.Unlock()
			<-finish
			return nil, nil
		}, baton.WithPrefetch(prefetch), baton.WithShutdownGrace(10*time.Second), baton.WithOnSettled(record.record))
	}()
	// Two running, three leased and waiting for a slot.
	batontest.Eventually(t, 10*time.Second, "two jobs running, five leased", func() bool {
		return startedCount(&mu, started) == concurrency && activeJobs(t, client, queue) == concurrency+prefetch
	})
	stop()
	// The prefetched jobs go back while the handlers still run.
	batontest.Eventually(t, 5*time.Second, "three jobs handed back", func() bool {
		handedBack, _ := record.notStarted()
		return handedBack == prefetch
	})
	batontest.Eventually(t, 5*time.Second, "only the running jobs leased", func() bool {
		return activeJobs(t, client, queue) == concurrency
	})
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("Consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if _, others := record.notStarted(); len(started) != concurrency || record.ackedCount() != concurrency || len(others) != 0 {
		t.Fatalf("started %d, acked %d, other settlements %v: want the 2 running finished", len(started), record.ackedCount(), others)
	}
	checkStartedJobsSucceededAndOthersUncharged(t, client, ids, started)
}

func TestHandlersCutShortByTheGraceAreRetriedAtOnce(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("grace")
	enqueued, err := client.Enqueue(ctx, queue, nil, baton.WithRetryBackoff(time.Hour, time.Hour, 1))
	if err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	record := newSettlements()
	workerCtx, stop := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- client.Consume(workerCtx, queue, 1, func(ctx context.Context, _ *baton.Job) ([]byte, error) {
			close(started)
			<-ctx.Done()
			return nil, context.Cause(ctx)
		}, baton.WithShutdownGrace(100*time.Millisecond), baton.WithOnSettled(record.record))
	}()
	<-started
	stop()
	if err := <-done; err != nil {
		t.Fatalf("Consume: %v", err)
	}
	// Not after its one-hour backoff: the failure was the shutdown's, not the job's.
	job := getJob(t, client, enqueued.JobID)
	if job.GetState() != batonv1.JobState_JOB_STATE_READY && job.GetState() != batonv1.JobState_JOB_STATE_FAILED ||
		job.GetRunAt().AsTime().After(time.Now().Add(time.Minute)) {
		t.Fatalf("job cut short by the grace: %s due %s, want due again at once", job.GetState(), job.GetRunAt().AsTime())
	}
}

// TestStopHandsBackJobsDeliveredOnAnEarlierStream: jobs prefetched on a stream that a
// draining replica ended are handed back, when the worker stops, through the stream opened
// since on another replica — uncharged, like the new stream's own.
func TestStopHandsBackJobsDeliveredOnAnEarlierStream(t *testing.T) {
	redis := batontest.StartRedis(t)
	first := batontest.StartBaton(t, redis, "127.0.0.1:0")
	second := batontest.StartBaton(t, redis, "127.0.0.1:0")
	// pick_first: the first stream is on the first replica until it shuts down.
	worker := connect(t, "ipv4:"+first.Addr+","+second.Addr, baton.WithLoadBalancing("pick_first"))
	producer := connect(t, second.Addr)
	queue := unique("earlier")
	const concurrency, prefetch, total = 1, 3, 12
	ids := enqueueBatch(t, producer, queue, total)

	var (
		mu      sync.Mutex
		started = map[string]bool{}
	)
	finish := make(chan struct{})
	record := newSettlements()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- worker.Consume(ctx, queue, concurrency, func(ctx context.Context, job *baton.Job) ([]byte, error) {
			mu.Lock()
			started[job.ID] = true
			mu.Unlock()
			<-finish
			return nil, nil
		}, baton.WithPrefetch(prefetch), baton.WithOnSettled(record.record))
	}()
	active := func() uint64 { return activeJobs(t, producer, queue) }
	batontest.Eventually(t, 10*time.Second, "one job running, the first stream's four leased", func() bool {
		return startedCount(&mu, started) == concurrency && active() == concurrency+prefetch
	})
	// The first stream ends UNAVAILABLE and keeps its leases; the worker keeps its jobs and
	// opens a second stream, which gets four jobs more (Baton counts credit per stream).
	first.Terminate()
	const inHand = 2 * (concurrency + prefetch)
	batontest.Eventually(t, 10*time.Second, "the second stream's four jobs leased", func() bool { return active() == inHand })

	stop()
	// Seven jobs never started, three of them from the first stream, whose replica is gone:
	// all go back at once, while the one handler still runs.
	batontest.Eventually(t, 5*time.Second, "seven jobs handed back", func() bool {
		handedBack, _ := record.notStarted()
		return handedBack == inHand-concurrency
	})
	batontest.Eventually(t, 5*time.Second, "only the running job leased", func() bool { return active() == concurrency })
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("Consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if _, others := record.notStarted(); len(started) != concurrency || record.ackedCount() != concurrency || len(others) != 0 {
		t.Fatalf("started %d, acked %d, other settlements %v: want the one running finished", len(started), record.ackedCount(), others)
	}
	checkStartedJobsSucceededAndOthersUncharged(t, producer, ids, started)
}

// TestStopBetweenStreamsHandsBackThroughANewStream stops a worker while no stream is open
// (its only replica drained, the next one still starting): the jobs it holds but has not
// started go back uncharged through a stream opened for them.
func TestStopBetweenStreamsHandsBackThroughANewStream(t *testing.T) {
	redis := batontest.StartRedis(t)
	first := batontest.StartBaton(t, redis, "127.0.0.1:0")
	secondAddr := fmt.Sprintf("127.0.0.1:%d", batontest.FreePort(t))
	worker := connect(t, "ipv4:"+first.Addr+","+secondAddr)
	queue := unique("between")
	const concurrency, prefetch, total = 1, 3, 8
	ids := enqueueBatch(t, worker, queue, total)

	var (
		mu      sync.Mutex
		started = map[string]bool{}
	)
	finish := make(chan struct{})
	record := newSettlements()
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() {
		done <- worker.Consume(ctx, queue, concurrency, func(ctx context.Context, job *baton.Job) ([]byte, error) {
			mu.Lock()
			started[job.ID] = true
			mu.Unlock()
			<-finish
			return nil, nil
		}, baton.WithPrefetch(prefetch), baton.WithOnSettled(record.record))
	}()
	batontest.Eventually(t, 10*time.Second, "one job running, four leased", func() bool {
		return startedCount(&mu, started) == concurrency && activeJobs(t, worker, queue) == concurrency+prefetch
	})
	first.Terminate() // its stream ends, and no replica is there to open the next one
	time.Sleep(300 * time.Millisecond)
	stop()
	second := batontest.StartBaton(t, redis, secondAddr)
	// The three held, and the one delivery the new stream may make before it reads the drain.
	batontest.Eventually(t, 5*time.Second, "three jobs handed back", func() bool {
		handedBack, _ := record.notStarted()
		return handedBack >= prefetch
	})
	close(finish)
	if err := <-done; err != nil {
		t.Fatalf("Consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if _, others := record.notStarted(); len(started) != concurrency || record.ackedCount() != concurrency || len(others) != 0 {
		t.Fatalf("started %d, acked %d, other settlements %v: want the one running finished", len(started), record.ackedCount(), others)
	}
	checkStartedJobsSucceededAndOthersUncharged(t, connect(t, second.Addr), ids, started)
}

// A server from before batch_deliveries sends one job a message: the worker takes every job
// once either way.
func TestTheWorkerTakesJobsOneOrManyToAMessage(t *testing.T) {
	for _, oneAMessage := range []bool{false, true} {
		t.Run(fmt.Sprintf("oneAMessage=%v", oneAMessage), func(t *testing.T) {
			if oneAMessage {
				t.Cleanup(baton.AskOneDeliveryAMessage())
			}
			client, _ := server(t)
			queue := unique("one-or-many")
			const jobs = 300
			requests := make([]*batonv1.EnqueueRequest, jobs)
			for n := range requests {
				requests[n] = &batonv1.EnqueueRequest{Queue: queue, Payload: []byte(fmt.Sprint(n))}
			}
			if _, err := client.Queue.EnqueueBatch(testContext(t), &batonv1.EnqueueBatchRequest{Requests: requests}); err != nil {
				t.Fatal(baton.FromError(err))
			}
			record := newSettlements()
			consumeInBackground(t, client, queue, 32, func(context.Context, *baton.Job) ([]byte, error) {
				return nil, nil
			}, baton.WithOnSettled(record.record))
			batontest.Eventually(t, 10*time.Second, "every job acked", func() bool { return record.ackedCount() == jobs })
			record.mu.Lock()
			defer record.mu.Unlock()
			for id, acks := range record.acked {
				if acks != 1 {
					t.Errorf("job %s acked %d times, want once", id, acks)
				}
			}
			if len(record.other) > 0 {
				t.Errorf("settlements other than acks: %v", record.other)
			}
		})
	}
}
