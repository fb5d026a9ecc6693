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
