package baton_test

import (
	"context"
	"errors"
	"iter"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

// waited is the outcome of a WaitJob run in the background.
type waited struct {
	job *batonv1.Job
	err error
}

func waitInBackground(ctx context.Context, client *baton.Client, jobID string) <-chan waited {
	done := make(chan waited, 1)
	go func() {
		job, err := client.WaitJob(ctx, jobID)
		done <- waited{job, err}
	}()
	return done
}

// pullJobs turns WatchJob into a function returning the next job; it fails the test when
// the watch yields an error or ends (the test's context bounds every wait).
func pullJobs(t *testing.T, watch iter.Seq2[*batonv1.Job, error]) func() *batonv1.Job {
	t.Helper()
	next, stop := iter.Pull2(watch)
	t.Cleanup(stop)
	return func() *batonv1.Job {
		t.Helper()
		job, err, ok := next()
		if err != nil {
			t.Fatalf("WatchJob: %v", err)
		}
		if !ok {
			t.Fatal("WatchJob ended before the job finished")
		}
		return job
	}
}

// stateRank orders the states a job runs through here; it never goes back.
var stateRank = map[batonv1.JobState]int{
	batonv1.JobState_JOB_STATE_READY:     1,
	batonv1.JobState_JOB_STATE_ACTIVE:    2,
	batonv1.JobState_JOB_STATE_SUCCEEDED: 3,
}

func TestProgressReachesWatchJobAndWaitJobReturnsTheResult(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("thumbnails")
	enqueued, err := client.Enqueue(ctx, queue, []byte("cat.png"))
	if err != nil {
		t.Fatal(err)
	}
	result := waitInBackground(ctx, client, enqueued.JobID)
	next := pullJobs(t, client.WatchJob(ctx, enqueued.JobID))
	first := next()
	if first.GetJobId() != enqueued.JobID || first.GetState() != batonv1.JobState_JOB_STATE_READY ||
		first.GetProgress() != nil || len(first.GetPayload()) != 0 {
		t.Fatalf("first snapshot %v: want the job READY, without progress or payload", first)
	}

	proceed := make(chan struct{})
	handled := make(chan *baton.Job, 1)
	consumeInBackground(t, client, queue, 1, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		if err := job.Progress(ctx, 50, []byte("resized")); err != nil {
			return nil, err
		}
		select {
		case <-proceed: // the watcher has seen the progress
		case <-ctx.Done():
			return nil, ctx.Err()
		}
		handled <- job
		return []byte("thumb:" + string(job.Payload)), nil
	})

	rank := stateRank[first.GetState()]
	var last *batonv1.Job
	for last == nil || last.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		job := next()
		if stateRank[job.GetState()] < rank || stateRank[job.GetState()] == 0 {
			t.Fatalf("snapshot %s after %d: a state out of order", job.GetState(), rank)
		}
		rank = stateRank[job.GetState()]
		if progress := job.GetProgress(); progress != nil && (last == nil || last.GetProgress() == nil) {
			if progress.GetValue() != 50 || string(progress.GetDetail()) != "resized" || progress.GetReportedAt() == nil {
				t.Fatalf("progress %v, want 50 \"resized\" with its time", progress)
			}
			if job.GetState() != batonv1.JobState_JOB_STATE_ACTIVE {
				t.Fatalf("the progress came with state %s, want ACTIVE: the handler waits for it to be seen", job.GetState())
			}
			close(proceed)
		}
		last = job
	}
	if last.GetProgress() == nil {
		t.Fatal("the job succeeded without its progress ever being seen")
	}
	if string(last.GetResult()) != "thumb:cat.png" || last.GetFinishedAt() == nil {
		t.Fatalf("finished snapshot %v: want the handler's result", last)
	}
	// The watch ends with the finished job.
	next2, stop := iter.Pull2(client.WatchJob(ctx, enqueued.JobID))
	defer stop()
	if job, err, _ := next2(); err != nil || job.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("watching a finished job: %v, %v; want it once", job, err)
	}
	if job, err, ok := next2(); ok {
		t.Fatalf("watching a finished job went on with %v, %v", job, err)
	}

	got := <-result
	if got.err != nil || got.job.GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED || string(got.job.GetResult()) != "thumb:cat.png" {
		t.Fatalf("WaitJob: %v, %v; want the succeeded job with the handler's result", got.job, got.err)
	}
	if got.job.GetProgress().GetValue() != 50 {
		t.Fatalf("WaitJob's job has progress %v, want the last one reported kept", got.job.GetProgress())
	}

	// The delivery's lease ended with the ack: its progress is refused.
	job := <-handled
	err = job.Progress(ctx, 100, nil)
	if !errors.Is(err, baton.ErrJobNotLeased) || !errors.Is(err, baton.ErrJobLeaseLost) {
		t.Fatalf("progress after the ack: %v, want ErrJobNotLeased wrapped in ErrJobLeaseLost", err)
	}
}

func TestWaitJobReturnsATypedErrorForADeadOrCancelledJob(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("renders")
	held := make(chan *baton.Job, 1)
	consumeInBackground(t, client, queue, 2, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		if string(job.Payload) == "fail" {
			return nil, errors.New("render: out of memory")
		}
		held <- job
		<-ctx.Done()
		return nil, context.Cause(ctx)
	})

	doomed, err := client.Enqueue(ctx, queue, []byte("fail"), baton.WithMaxAttempts(1))
	if err != nil {
		t.Fatal(err)
	}
	job, err := client.WaitJob(ctx, doomed.JobID)
	var jobErr *baton.JobError
	if !errors.Is(err, baton.ErrJobDead) || errors.Is(err, baton.ErrJobCancelled) || !errors.As(err, &jobErr) {
		t.Fatalf("WaitJob on a job out of attempts: %v, want a *JobError matching ErrJobDead", err)
	}
	if job == nil || jobErr.Job != job || job.GetState() != batonv1.JobState_JOB_STATE_DEAD ||
		job.GetLastError() != "render: out of memory" || job.GetAttempts() != 1 {
		t.Fatalf("dead job %v (error's %v): want DEAD after 1 attempt with the handler's error", job, jobErr.Job)
	}

	running, err := client.Enqueue(ctx, queue, []byte("hold"))
	if err != nil {
		t.Fatal(err)
	}
	delivery := <-held
	result := waitInBackground(ctx, client, running.JobID)
	if _, err := client.Queue.CancelJob(ctx, &batonv1.CancelJobRequest{JobId: running.JobID}); err != nil {
		t.Fatal(baton.FromError(err))
	}
	got := <-result
	if !errors.Is(got.err, baton.ErrJobCancelled) || errors.Is(got.err, baton.ErrJobDead) || !errors.As(got.err, &jobErr) ||
		got.job.GetState() != batonv1.JobState_JOB_STATE_CANCELLED {
		t.Fatalf("WaitJob on a cancelled job: %v, %v; want the CANCELLED job and a *JobError matching ErrJobCancelled", got.job, got.err)
	}
	// Its worker's progress is refused as cancelled (the handler context the helper gave is
	// cancelled already, so it reports on a context of its own).
	err = delivery.Progress(ctx, 10, nil)
	if !errors.Is(err, baton.ErrJobCancelled) || baton.ReasonOf(err) != batonv1.ErrorReason_JOB_CANCELLED {
		t.Fatalf("progress on a cancelled job: %v, want ErrJobCancelled with reason JOB_CANCELLED", err)
	}
}

// nextJobEvent returns the next event of watch about jobID, skipping other jobs'; it fails the
// test on a gap, an error, or the end of the watch.
func nextJobEvent(t *testing.T, next func() (baton.QueueEvent, error, bool), jobID string) baton.QueueEvent {
	t.Helper()
	for {
		event, err, ok := next()
		switch {
		case err != nil:
			t.Fatalf("WatchQueue: %v", err)
		case !ok:
			t.Fatal("WatchQueue ended")
		case event.Gap:
			t.Fatalf("WatchQueue: %d events missed", event.Missed)
		case event.JobID == jobID:
			return event
		}
	}
}

func TestWatchQueueSeesAJobsEventsInOrder(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("resize")
	watch, err := client.WatchQueue(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	next, stop := iter.Pull2(watch.Events())
	defer stop()

	// In place once WatchQueue returns: the enqueue that follows is seen.
	enqueued, err := client.Enqueue(ctx, queue, []byte("cat.png"), baton.WithJobType("thumbnail"))
	if err != nil {
		t.Fatal(err)
	}
	consumeInBackground(t, client, queue, 1, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		return []byte("ok"), job.Progress(ctx, 0.5, []byte("half"))
	})

	want := []struct {
		kind  baton.QueueEventKind
		state batonv1.JobState
	}{
		{baton.JobEnqueued, batonv1.JobState_JOB_STATE_READY},
		{baton.JobActive, batonv1.JobState_JOB_STATE_ACTIVE},
		{baton.JobProgress, batonv1.JobState_JOB_STATE_ACTIVE},
		{baton.JobSucceeded, batonv1.JobState_JOB_STATE_SUCCEEDED},
	}
	var previous baton.QueueEvent
	for i, expected := range want {
		event := nextJobEvent(t, next, enqueued.JobID)
		if event.Kind != expected.kind || event.State != expected.state {
			t.Fatalf("event %d: %s (%s), want %s (%s)", i, event.Kind, event.State, expected.kind, expected.state)
		}
		if event.At.IsZero() || event.At.Before(previous.At) {
			t.Fatalf("event %d at %s, after one at %s", i, event.At, previous.At)
		}
		switch event.Kind {
		case baton.JobEnqueued:
			if event.Type != "thumbnail" || event.Attempt != 0 {
				t.Fatalf("enqueued event %+v: want type thumbnail, attempt 0", event)
			}
		case baton.JobActive, baton.JobSucceeded:
			if event.Attempt != 1 {
				t.Fatalf("%s event attempt %d, want 1", event.Kind, event.Attempt)
			}
		case baton.JobProgress:
			if event.Progress.GetValue() != 0.5 || string(event.Progress.GetDetail()) != "half" || event.Attempt != 1 {
				t.Fatalf("progress event %+v: want 0.5 \"half\" on attempt 1", event)
			}
		}
		if event.Kind != baton.JobProgress && event.Progress != nil {
			t.Fatalf("%s event carries progress %v", event.Kind, event.Progress)
		}
		previous = event
	}

	watch.Close()
	if event, err, ok := next(); ok {
		t.Fatalf("the watch went on after Close with %+v, %v", event, err)
	}
}

func TestWatchQueueRefusesAnEmptyQueueName(t *testing.T) {
	client, _ := server(t)
	_, err := client.WatchQueue(testContext(t), "")
	var batonErr *baton.Error
	if !errors.As(err, &batonErr) || !errors.Is(err, baton.ErrInvalidArgument) || batonErr.Field != "queue" {
		t.Fatalf("watching an empty queue name: %v, want INVALID_ARGUMENT on queue", err)
	}
}

func TestListJobsListsSucceededJobsMostRecentFirst(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("reports")
	consumeInBackground(t, client, queue, 1, func(_ context.Context, job *baton.Job) ([]byte, error) {
		return append([]byte("done:"), job.Payload...), nil
	})
	var ids []string
	for _, payload := range []string{"first", "second"} {
		enqueued, err := client.Enqueue(ctx, queue, []byte(payload))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.WaitJob(ctx, enqueued.JobID); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, enqueued.JobID)
	}

	page, token, err := client.ListJobs(ctx, queue, batonv1.JobState_JOB_STATE_SUCCEEDED, 1, "")
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 1 || page[0].GetJobId() != ids[1] || token == "" {
		t.Fatalf("first page %v (next %q): want the second job, the latest to finish, and a next page", page, token)
	}
	if string(page[0].GetPayload()) != "second" || string(page[0].GetResult()) != "done:second" ||
		page[0].GetState() != batonv1.JobState_JOB_STATE_SUCCEEDED {
		t.Fatalf("listed job %v: want it SUCCEEDED with its payload and result", page[0])
	}
	page, token, err = client.ListJobs(ctx, queue, batonv1.JobState_JOB_STATE_SUCCEEDED, 1, token)
	if err != nil {
		t.Fatal(err)
	}
	if len(page) != 1 || page[0].GetJobId() != ids[0] || token != "" {
		t.Fatalf("second page %v (next %q): want the first job and no next page", page, token)
	}
	if page, _, err := client.ListJobs(ctx, queue, batonv1.JobState_JOB_STATE_READY, 0, ""); err != nil || len(page) != 0 {
		t.Fatalf("ready jobs: %v, %v; want none", page, err)
	}

	_, _, err = client.ListJobs(ctx, queue, batonv1.JobState_JOB_STATE_FAILED, 0, "")
	var batonErr *baton.Error
	if !errors.As(err, &batonErr) || !errors.Is(err, baton.ErrInvalidArgument) || batonErr.Field != "state" {
		t.Fatalf("listing FAILED jobs: %v, want INVALID_ARGUMENT on state", err)
	}
}

// TestWatchesResumeOnAnotherReplicaWhenOneDrains: a WatchJob and a WatchQueue on a replica
// that shuts down go on through the other one; the queue watch says that it may have
// missed events.
func TestWatchesResumeOnAnotherReplicaWhenOneDrains(t *testing.T) {
	redis := batontest.StartRedis(t)
	first := batontest.StartBaton(t, redis, "127.0.0.1:0")
	second := batontest.StartBaton(t, redis, "127.0.0.1:0")
	// pick_first: the watches are on the first replica until it shuts down.
	watcher := connect(t, "ipv4:"+first.Addr+","+second.Addr, baton.WithLoadBalancing("pick_first"))
	worker := connect(t, second.Addr)
	ctx := testContext(t)
	queue := unique("drain")

	watch, err := watcher.WatchQueue(ctx, queue)
	if err != nil {
		t.Fatal(err)
	}
	defer watch.Close()
	nextQueueEvent, stop := iter.Pull2(watch.Events())
	defer stop()
	enqueued, err := worker.Enqueue(ctx, queue, []byte("job"))
	if err != nil {
		t.Fatal(err)
	}
	if event := nextJobEvent(t, nextQueueEvent, enqueued.JobID); event.Kind != baton.JobEnqueued {
		t.Fatalf("first event %s, want enqueued", event.Kind)
	}
	nextJob := pullJobs(t, watcher.WatchJob(ctx, enqueued.JobID))
	if job := nextJob(); job.GetState() != batonv1.JobState_JOB_STATE_READY {
		t.Fatalf("first snapshot %s, want READY", job.GetState())
	}

	first.Terminate() // both streams end UNAVAILABLE (SHUTTING_DOWN)

	event, err, ok := nextQueueEvent()
	if err != nil || !ok || !event.Gap || event.Missed != 0 {
		t.Fatalf("after the drain: %+v, %v, %v; want a gap of unknown size", event, err, ok)
	}
	// The gap is yielded once the new watch is in place: what follows is seen.
	consumeInBackground(t, worker, queue, 1, func(context.Context, *baton.Job) ([]byte, error) {
		return []byte("through the second replica"), nil
	})
	for _, want := range []baton.QueueEventKind{baton.JobActive, baton.JobSucceeded} {
		if event := nextJobEvent(t, nextQueueEvent, enqueued.JobID); event.Kind != want {
			t.Fatalf("event %s, want %s", event.Kind, want)
		}
	}
	for {
		job := nextJob()
		if job.GetState() == batonv1.JobState_JOB_STATE_SUCCEEDED {
			if string(job.GetResult()) != "through the second replica" {
				t.Fatalf("result %q", job.GetResult())
			}
			break
		}
	}
}

// TestARefusedProgressCancelsTheHandler: a handler whose lease ended without its worker
// being told (here, nacked through the raw stub) learns it from its next progress report:
// the report fails and the handler's context ends, as when an Extend is refused.
func TestARefusedProgressCancelsTheHandler(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	queue := unique("orphan")
	if _, err := client.Enqueue(ctx, queue, nil); err != nil {
		t.Fatal(err)
	}
	type outcome struct{ progress, cause error }
	lease := make(chan string)
	nacked := make(chan struct{})
	outcomes := make(chan outcome, 1)
	record := newSettlements()
	consumeInBackground(t, client, queue, 1, func(ctx context.Context, job *baton.Job) ([]byte, error) {
		lease <- job.LeaseID()
		<-nacked
		err := job.Progress(ctx, 1, nil)
		outcomes <- outcome{err, context.Cause(ctx)}
		return nil, err
	}, baton.WithOnSettled(record.record))
	if _, err := client.Queue.Nack(ctx, &batonv1.NackRequest{LeaseId: <-lease, Error: "taken away", DeadLetter: true}); err != nil {
		t.Fatal(baton.FromError(err))
	}
	close(nacked)
	got := <-outcomes
	if !errors.Is(got.progress, baton.ErrJobLeaseLost) || !errors.Is(got.progress, baton.ErrJobNotLeased) {
		t.Fatalf("progress on a lease nacked meanwhile: %v, want ErrJobLeaseLost wrapping ErrJobNotLeased", got.progress)
	}
	if !errors.Is(got.cause, baton.ErrJobLeaseLost) {
		t.Fatalf("the handler's context: %v, want it cancelled with ErrJobLeaseLost", got.cause)
	}
	batontest.Eventually(t, 5*time.Second, "the loss reported, nothing acked", func() bool {
		record.mu.Lock()
		defer record.mu.Unlock()
		return len(record.other) == 1 && errors.Is(record.other[0], baton.ErrJobLeaseLost)
	})
	if record.ackedCount() != 0 {
		t.Fatal("a job whose lease was lost was acked")
	}
}
