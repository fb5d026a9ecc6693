package baton_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

// served is how many calls of a JobQueueService method baton has answered, whatever their code.
func served(t *testing.T, replica *batontest.Baton, method string) int {
	t.Helper()
	return int(replica.Counter(t, "baton_grpc_requests_total",
		map[string]string{"service": "baton.v1.JobQueueService", "method": method}))
}

// ackBatchCall is one AckBatch call a client made: the leases it acked and Baton's answer.
type ackBatchCall struct {
	leases  []string
	results []*batonv1.AckResult
	err     error
}

// ackBatchSpy records the AckBatch calls of a client; hold, when set, runs before the n-th
// (from 0) goes out.
type ackBatchSpy struct {
	hold  func(n int)
	mu    sync.Mutex
	sent  int
	calls []ackBatchCall
}

func (s *ackBatchSpy) intercept(ctx context.Context, method string, request, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	if method != batonv1.JobQueueService_AckBatch_FullMethodName {
		return invoker(ctx, method, request, reply, cc, opts...)
	}
	s.mu.Lock()
	n := s.sent
	s.sent++
	s.mu.Unlock()
	if s.hold != nil {
		s.hold(n)
	}
	err := invoker(ctx, method, request, reply, cc, opts...)
	call := ackBatchCall{err: err}
	for _, ack := range request.(*batonv1.AckBatchRequest).GetAcks() {
		call.leases = append(call.leases, ack.GetLeaseId())
	}
	if err == nil {
		call.results = reply.(*batonv1.AckBatchResponse).GetResults()
	}
	s.mu.Lock()
	s.calls = append(s.calls, call)
	s.mu.Unlock()
	return err
}

func (s *ackBatchSpy) recorded() []ackBatchCall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.calls)
}

func TestConcurrentHandlersAckThroughFewAckBatchCalls(t *testing.T) {
	redis := batontest.StartRedis(t)
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0")
	client := connect(t, replica.Addr)
	queue := unique("coalesced")
	const total, concurrency = 500, 64
	ids := enqueueBatch(t, client, queue, total)

	var (
		runsMu sync.Mutex
		runs   = map[string]int{}
	)
	record := newSettlements()
	consumeInBackground(t, client, queue, concurrency, func(_ context.Context, job *baton.Job) ([]byte, error) {
		runsMu.Lock()
		runs[job.ID]++
		runsMu.Unlock()
		return []byte("done"), nil
	}, baton.WithOnSettled(record.record))
	batontest.Eventually(t, 20*time.Second, "500 jobs acked", func() bool { return record.ackedCount() == total })

	record.mu.Lock()
	for id, acks := range record.acked {
		if acks != 1 {
			t.Errorf("job %s reported acked %d times, want once", id, acks)
		}
	}
	if len(record.other) != 0 {
		t.Errorf("other settlements: %v", record.other)
	}
	record.mu.Unlock()
	runsMu.Lock()
	for _, id := range ids {
		if runs[id] != 1 {
			t.Errorf("job %s ran %d times, want once", id, runs[id])
		}
	}
	runsMu.Unlock()
	for _, id := range ids {
		if job := getJob(t, client, id); job.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || job.GetAttempts() != 1 || string(job.GetResult()) != "done" {
			t.Errorf("job %s: %s after %d attempts with result %q, want SUCCEEDED after 1 with \"done\"", id, job.GetState(), job.GetAttempts(), job.GetResult())
		}
	}
	batches, singles := served(t, replica, "AckBatch"), served(t, replica, "Ack")
	t.Logf("%d jobs acked in %d AckBatch calls", total, batches)
	if batches == 0 || batches >= total || singles != 0 {
		t.Fatalf("baton served %d AckBatch and %d Ack calls for %d jobs: want fewer AckBatch calls than jobs and no Ack", batches, singles, total)
	}
}

// TestALostLeaseInABatchIsReportedWhileTheOthersAreAcked: one job's lease is lost while its
// handler runs (another party nacks the delivery to the dead-letter set, which the worker is
// not told of), and its ack goes out in the same AckBatch call as six others. It is
// reported as its single Ack's refusal was (FAILED_PRECONDITION, JOB_NOT_LEASED), the six
// are acked, and nothing is retried.
func TestALostLeaseInABatchIsReportedWhileTheOthersAreAcked(t *testing.T) {
	// Queued acks wait for the call in flight, however long: the second call takes them all.
	defer baton.SetAckBatchDelay(time.Minute)()
	const jobs = 8
	var queued atomic.Int32
	allQueued := make(chan struct{})
	defer baton.ObserveAcksQueued(func() {
		if queued.Add(1) == jobs {
			close(allQueued)
		}
	})()
	firstCallOut := make(chan struct{})
	spy := &ackBatchSpy{hold: func(n int) {
		if n == 0 {
			// The first call waits until every other ack waits for it.
			close(firstCallOut)
			select {
			case <-allQueued:
			case <-time.After(10 * time.Second):
			}
		}
	}}
	redis := batontest.StartRedis(t)
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0")
	client := connect(t, replica.Addr, baton.WithDialOptions(grpc.WithChainUnaryInterceptor(spy.intercept)))
	queue := unique("lost")
	ids := enqueueBatch(t, client, queue, jobs)
	lost := ids[0]

	var (
		running   atomic.Int32
		release   = make(chan struct{})
		lostLease = make(chan string, 1)
		runsMu    sync.Mutex
		runs      = map[string]int{}
	)
	record := newSettlements()
	settledErrs := make(chan error, jobs)
	consumeInBackground(t, client, queue, jobs, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		runsMu.Lock()
		runs[job.ID]++
		runsMu.Unlock()
		if running.Add(1) == jobs {
			close(release)
		}
		<-release
		if job.ID != lost {
			return nil, nil
		}
		// The lease is lost behind the worker's back, then the handler succeeds once another
		// ack is in flight, so that its ack waits for the next call with the others.
		lostLease <- job.LeaseID()
		if _, err := client.Queue.Nack(ctx, &batonv1.NackRequest{LeaseId: job.LeaseID(), Error: "taken over", DeadLetter: true}); err != nil {
			return nil, err
		}
		select {
		case <-firstCallOut:
		case <-time.After(10 * time.Second): // the assertions below then fail
		}
		return nil, nil
	}, baton.WithOnSettled(func(job *baton.Job, err error) {
		record.record(job, err)
		if job.ID == lost {
			settledErrs <- err
		}
	}))

	var lostErr error
	select {
	case lostErr = <-settledErrs:
	case <-time.After(20 * time.Second):
		t.Fatal("the job whose lease was lost was not reported within 20 s")
	}
	var mapped *baton.Error
	if !errors.As(lostErr, &mapped) || mapped.Code != codes.FailedPrecondition || !errors.Is(lostErr, baton.ErrJobNotLeased) {
		t.Fatalf("the lost lease's ack was reported as %v, want FAILED_PRECONDITION (JOB_NOT_LEASED) as from Ack", lostErr)
	}
	batontest.Eventually(t, 10*time.Second, "the seven other jobs acked", func() bool { return record.ackedCount() == jobs-1 })

	leaseOfLost := <-lostLease
	calls := spy.recorded()
	if len(calls) != 2 {
		t.Fatalf("%d AckBatch calls, want 2 (one alone, then the seven that waited for it)", len(calls))
	}
	second := calls[1]
	if second.err != nil || len(second.leases) != jobs-1 || len(second.results) != jobs-1 {
		t.Fatalf("the second AckBatch call: %d acks, %d results, error %v; want 7 and 7", len(second.leases), len(second.results), second.err)
	}
	for i, lease := range second.leases {
		result := second.results[i]
		if lease == leaseOfLost {
			if result.GetAcked() || result.GetReason() != batonv1.ErrorReason_JOB_NOT_LEASED.String() {
				t.Errorf("the lost lease's result is %v, want not acked, JOB_NOT_LEASED", result)
			}
		} else if !result.GetAcked() {
			t.Errorf("lease %s in the same call was not acked: %v", lease, result)
		}
	}
	if !slices.Contains(second.leases, leaseOfLost) {
		t.Fatal("the lost lease's ack was not in the second call")
	}
	for _, id := range ids {
		job := getJob(t, client, id)
		want := batonv1.JobState_JOB_STATE_SUCCEEDED
		if id == lost {
			want = batonv1.JobState_JOB_STATE_DEAD
		}
		if job.GetState() != want || job.GetAttempts() != 1 {
			t.Errorf("job %s: %s after %d attempts, want %s after 1", id, job.GetState(), job.GetAttempts(), want)
		}
	}
	runsMu.Lock()
	defer runsMu.Unlock()
	for _, id := range ids {
		if runs[id] != 1 {
			t.Errorf("job %s ran %d times, want once", id, runs[id])
		}
	}
	if singles := served(t, replica, "Ack"); singles != 0 {
		t.Errorf("baton served %d single Acks, want none", singles)
	}
}

// TestAnAckRefusedWithItsBatchIsSentAloneForItsOwnOutcome: a result over Baton's limit makes
// Baton refuse a whole AckBatch (INVALID_ARGUMENT); the worker then acks each job of the
// call alone, so only that job fails, as its single Ack would have.
func TestAnAckRefusedWithItsBatchIsSentAloneForItsOwnOutcome(t *testing.T) {
	config := filepath.Join(t.TempDir(), "baton.toml")
	if err := os.WriteFile(config, []byte("[limits]\nmax_value_bytes = 1024\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	defer baton.SetAckBatchDelay(time.Minute)()
	const jobs = 6
	var queued atomic.Int32
	allQueued := make(chan struct{})
	defer baton.ObserveAcksQueued(func() {
		if queued.Add(1) == jobs {
			close(allQueued)
		}
	})()
	firstCallOut := make(chan struct{})
	spy := &ackBatchSpy{hold: func(n int) {
		if n == 0 {
			close(firstCallOut)
			select {
			case <-allQueued:
			case <-time.After(10 * time.Second):
			}
		}
	}}
	redis := batontest.StartRedis(t)
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0", "--config", config)
	client := connect(t, replica.Addr, baton.WithDialOptions(grpc.WithChainUnaryInterceptor(spy.intercept)))
	queue := unique("oversized")
	ids := enqueueBatch(t, client, queue, jobs)
	oversized := ids[0]

	var running atomic.Int32
	release := make(chan struct{})
	record := newSettlements()
	settledErrs := make(chan error, jobs)
	consumeInBackground(t, client, queue, jobs, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		if running.Add(1) == jobs {
			close(release)
		}
		<-release
		if job.ID != oversized {
			return []byte("ok"), nil
		}
		select {
		case <-firstCallOut:
		case <-time.After(10 * time.Second): // the assertions below then fail
		}
		return make([]byte, 2048), nil
	}, baton.WithOnSettled(func(job *baton.Job, err error) {
		record.record(job, err)
		if job.ID == oversized {
			settledErrs <- err
		}
	}))
	select {
	case err := <-settledErrs:
		var mapped *baton.Error
		if !errors.As(err, &mapped) || mapped.Code != codes.InvalidArgument || mapped.Field != "result" {
			t.Fatalf("the oversized result's ack was reported as %v, want INVALID_ARGUMENT on result, as from Ack", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the oversized result's job was not reported within 20 s")
	}
	batontest.Eventually(t, 10*time.Second, "the five other jobs acked", func() bool { return record.ackedCount() == jobs-1 })
	calls := spy.recorded()
	if len(calls) != 2 || codes.InvalidArgument != codeOf(calls[1].err) || len(calls[1].leases) != jobs-1 {
		t.Fatalf("AckBatch calls %+v: want one alone, then five refused as a whole", calls)
	}
	if singles := served(t, replica, "Ack"); singles != jobs-1 {
		t.Errorf("baton served %d single Acks, want the refused call's 5 sent alone", singles)
	}
	for _, id := range ids[1:] {
		if job := getJob(t, client, id); job.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
			t.Errorf("job %s: %s, want SUCCEEDED", id, job.GetState())
		}
	}
}

func codeOf(err error) codes.Code {
	var mapped *baton.Error
	if errors.As(baton.FromError(err), &mapped) {
		return mapped.Code
	}
	return codes.OK
}

func TestAckBatchSizeZeroSendsOneAckPerJob(t *testing.T) {
	redis := batontest.StartRedis(t)
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0")
	client := connect(t, replica.Addr)
	queue := unique("single")
	const total = 20
	enqueueBatch(t, client, queue, total)
	record := newSettlements()
	consumeInBackground(t, client, queue, 4, func(context.Context, *baton.Job) ([]byte, error) { return nil, nil },
		baton.WithOnSettled(record.record), baton.WithAckBatchSize(0))
	batontest.Eventually(t, 10*time.Second, "20 jobs acked", func() bool { return record.ackedCount() == total })
	if singles, batches := served(t, replica, "Ack"), served(t, replica, "AckBatch"); singles != total || batches != 0 {
		t.Fatalf("baton served %d Ack and %d AckBatch calls, want %d and 0", singles, batches, total)
	}
}
