package baton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// ErrJobDead is what a [*JobError] from [Client.WaitJob] matches (errors.Is) when the job
// went to the dead-letter set: out of attempts, or nacked as dead. A cancelled job's matches
// [ErrJobCancelled].
var ErrJobDead = errors.New("baton: job dead")

// JobError is the error [Client.WaitJob] returns for a job that finished without
// succeeding. errors.Is(err, [ErrJobDead]) or errors.Is(err, [ErrJobCancelled]) tells which;
// errors.As gives the job itself.
type JobError struct {
	// Job is the finished job (without its payload), state DEAD — LastError says why — or
	// CANCELLED.
	Job *batonv1.Job
}

func (e *JobError) Error() string {
	if e.Job.GetState() == batonv1.JobState_JOB_STATE_DEAD {
		return fmt.Sprintf("baton: job %s is dead after %d attempts: %s", e.Job.GetJobId(), e.Job.GetAttempts(), e.Job.GetLastError())
	}
	return fmt.Sprintf("baton: job %s was cancelled", e.Job.GetJobId())
}

// Unwrap makes errors.Is(err, ErrJobDead) and errors.Is(err, ErrJobCancelled) work.
func (e *JobError) Unwrap() error {
	if e.Job.GetState() == batonv1.JobState_JOB_STATE_DEAD {
		return ErrJobDead
	}
	return ErrJobCancelled
}

// jobFinished: SUCCEEDED, DEAD and CANCELLED are the states a job ends in (a dead job only
// leaves its state when redriven, which WatchJob does not wait for).
func jobFinished(state batonv1.JobState) bool {
	switch state {
	case batonv1.JobState_JOB_STATE_SUCCEEDED, batonv1.JobState_JOB_STATE_DEAD, batonv1.JobState_JOB_STATE_CANCELLED:
		return true
	}
	return false
}

// WatchJob streams the job jobID as it changes, from any replica: first the job as it is,
// then the job again after each change (delivered, progress reported, failed and waiting to
// retry, handed back), and last the job in its finished state — SUCCEEDED with its Result,
// DEAD with its LastError, or CANCELLED — after which the iteration ends. A job already
// finished is yielded once. Payloads are left out (GetJob reads them); changes that follow
// each other closely may come as one job showing the latest.
//
//	for job, err := range client.WatchJob(ctx, id) {
//		if err != nil {
//			return err
//		}
//		if progress := job.GetProgress(); progress != nil {
//			log.Printf("%s: %s %.0f%%", job.GetJobId(), job.GetState(), progress.GetValue())
//		}
//	}
//
// When the stream ends with UNAVAILABLE (a replica draining, a broken connection) it is
// reopened on whichever replica the balancer picks after a short backoff (50 ms growing to
// 250 ms; none after the SHUTTING_DOWN that ends a draining replica's stream); the reopened
// stream starts with the job as it is then, so the changes in between are summed up rather
// than replayed, and a job unchanged since the last one yielded is not yielded again. The
// iteration ends when ctx ends, without an error, or after yielding an error no retry can
// fix: NOT_FOUND (reason JOB_NOT_FOUND) for an unknown job or one past retention,
// INVALID_ARGUMENT, UNAUTHENTICATED, ….
func (c *Client) WatchJob(ctx context.Context, jobID string) iter.Seq2[*batonv1.Job, error] {
	return func(yield func(*batonv1.Job, error) bool) {
		retry := newBackoff(streamBackoff)
		var last *batonv1.Job
		for {
			delivered, stopped, err := c.followWatchJob(ctx, jobID, &last, yield)
			if stopped || ctx.Err() != nil {
				return
			}
			if delivered {
				retry.reset()
			}
			if !retryableStreamEnd(err) {
				yield(nil, FromError(err))
				return
			}
			if !retry.sleep(ctx, err) {
				return
			}
		}
	}
}

// followWatchJob yields the jobs of one WatchJob stream, but for one equal to last, until
// the stream ends (err tells why; nil when it ended OK before a finished job, which Baton
// does not do) or the iteration is over (stopped: the job finished or the consumer
// stopped); delivered tells whether the stream sent anything.
func (c *Client) followWatchJob(ctx context.Context, jobID string, last **batonv1.Job, yield func(*batonv1.Job, error) bool) (delivered, stopped bool, err error) {
	streamCtx, closeStream := context.WithCancel(withWaitForReady(ctx))
	defer closeStream()
	stream, err := c.Queue.WatchJob(streamCtx, &batonv1.WatchJobRequest{JobId: jobID})
	if err != nil {
		return false, false, err
	}
	for {
		response, err := stream.Recv()
		if err != nil {
			if err == io.EOF {
				err = nil
			}
			return delivered, false, err
		}
		delivered = true
		job := response.GetJob()
		if job == nil || (*last != nil && proto.Equal(job, *last)) {
			continue
		}
		*last = job
		if !yield(job, nil) || jobFinished(job.GetState()) {
			return true, true, nil
		}
	}
}

// WaitJob waits until the job jobID finishes and returns it (without its payload): with a
// nil error when it SUCCEEDED — job.GetResult() is what its handler returned — or with a
// [*JobError] matching [ErrJobDead] or [ErrJobCancelled] when it did not. Request/response
// over the queue is one call each way:
//
//	enqueued, err := client.Enqueue(ctx, "thumbnails", request)
//	if err != nil {
//		return err
//	}
//	job, err := client.WaitJob(ctx, enqueued.JobID)
//	if errors.Is(err, baton.ErrJobDead) {
//		return fmt.Errorf("thumbnail failed: %s", job.GetLastError())
//	}
//
// It follows [Client.WatchJob], so it waits without polling, on any replica, and rides
// through a replica draining or a broken connection by watching again after a short
// backoff. It waits for as long as ctx allows (there is no default deadline: give ctx one),
// and then returns an error wrapping ctx's cause; it returns at once the errors no retry
// can fix (NOT_FOUND for an unknown job or one past retention, …).
func (c *Client) WaitJob(ctx context.Context, jobID string) (*batonv1.Job, error) {
	for job, err := range c.WatchJob(ctx, jobID) {
		if err != nil {
			return nil, err
		}
		switch job.GetState() {
		case batonv1.JobState_JOB_STATE_SUCCEEDED:
			return job, nil
		case batonv1.JobState_JOB_STATE_DEAD, batonv1.JobState_JOB_STATE_CANCELLED:
			return job, &JobError{Job: job}
		}
	}
	if ctx.Err() == nil {
		// WatchJob ends only with the job finished, an error, or ctx.
		return nil, &Error{Code: codes.Internal, Message: fmt.Sprintf("watching job %s ended before it finished", jobID)}
	}
	return nil, fmt.Errorf("baton: waiting for job %s: %w", jobID, context.Cause(ctx))
}

// QueueEventKind tells what a [QueueEvent] reports; see proto/baton/v1/queue.proto.
type QueueEventKind = batonv1.QueueEventKind

const (
	// JobEnqueued: added by Enqueue, EnqueueBatch or a schedule (READY or SCHEDULED; Type
	// is the job's type, RunAt set when SCHEDULED).
	JobEnqueued = batonv1.QueueEventKind_QUEUE_EVENT_KIND_ENQUEUED
	// JobActive: delivered to a worker (ACTIVE; Attempt is the delivery's).
	JobActive = batonv1.QueueEventKind_QUEUE_EVENT_KIND_ACTIVE
	// JobProgress: its worker reported progress (Progress).
	JobProgress = batonv1.QueueEventKind_QUEUE_EVENT_KIND_PROGRESS
	// JobSucceeded: acked (SUCCEEDED).
	JobSucceeded = batonv1.QueueEventKind_QUEUE_EVENT_KIND_SUCCEEDED
	// JobFailed: nacked and waiting to retry (FAILED; Error, RunAt).
	JobFailed = batonv1.QueueEventKind_QUEUE_EVENT_KIND_FAILED
	// JobDead: out of attempts or dead-lettered (DEAD; Error).
	JobDead = batonv1.QueueEventKind_QUEUE_EVENT_KIND_DEAD
	// JobStalled: its lease expired or its worker's stream ended without settling it; READY
	// again.
	JobStalled = batonv1.QueueEventKind_QUEUE_EVENT_KIND_STALLED
	// JobReturned: handed back unstarted by a stopping worker; READY again, the attempt not
	// charged.
	JobReturned = batonv1.QueueEventKind_QUEUE_EVENT_KIND_RETURNED
	// JobRedriven: moved from the dead-letter set back to READY by RetryDeadJobs.
	JobRedriven = batonv1.QueueEventKind_QUEUE_EVENT_KIND_REDRIVEN
	// JobCancelled: cancelled by CancelJob (CANCELLED).
	JobCancelled = batonv1.QueueEventKind_QUEUE_EVENT_KIND_CANCELLED
)

// QueueEvent is one message of a [QueueWatch]: one thing that happened to one job of the
// queue or, when Gap is set, word that events were lost.
type QueueEvent struct {
	// Kind is what happened; QUEUE_EVENT_KIND_UNSPECIFIED (zero) for a gap.
	Kind  QueueEventKind
	JobID string
	// State is the job's state after the event.
	State batonv1.JobState
	// Attempt is the job's delivery count after the event.
	Attempt uint32
	// At is when it happened, by the Redis server's clock.
	At time.Time
	// Progress is the progress reported, for JobProgress; nil otherwise.
	Progress *batonv1.Progress
	// Error is the Nack's error (or why the lease ended), for JobFailed and JobDead.
	Error string
	// RunAt is when the job is due, for JobEnqueued as SCHEDULED and JobFailed; zero
	// otherwise.
	RunAt time.Time
	// Type is the job's type, for JobEnqueued.
	Type string

	// Gap: this is not an event but a marker that events were lost between the previous
	// message and the next one — Missed of them, or an unknown number when Missed is 0: the
	// watcher read too slowly, Baton's replica fell behind Redis or lost it for a while, or
	// the stream was reopened on another replica (Missed is then always 0). Resynchronise
	// from the jobs themselves (GetJob, [Client.ListJobs]) if it matters: the watch is in
	// place again when the gap is yielded, so nothing after that is lost.
	Gap    bool
	Missed uint64
}

func timeOf(timestamp *timestamppb.Timestamp) time.Time {
	if timestamp == nil {
		return time.Time{}
	}
	return timestamp.AsTime()
}

// queueEventOf converts one WatchQueue message; false for a message of a kind these stubs
// do not know (from a newer server).
func queueEventOf(response *batonv1.WatchQueueResponse) (QueueEvent, bool) {
	if missed := response.GetMissed(); missed != nil {
		return QueueEvent{Gap: true, Missed: missed.GetCount()}, true
	}
	event := response.GetEvent()
	if event == nil {
		return QueueEvent{}, false
	}
	return QueueEvent{
		Kind:     event.GetKind(),
		JobID:    event.GetJobId(),
		State:    event.GetState(),
		Attempt:  event.GetAttempt(),
		At:       timeOf(event.GetAt()),
		Progress: event.GetProgress(),
		Error:    event.GetError(),
		RunAt:    timeOf(event.GetRunAt()),
		Type:     event.GetType(),
	}, true
}

// QueueWatch is a watch of one queue's events, from [Client.WatchQueue]. Range over
// [QueueWatch.Events] (from one goroutine at a time) and Close it when done.
type QueueWatch struct {
	client *Client
	queue  string
	ctx    context.Context // ends with the caller's ctx or Close
	close  context.CancelFunc
	retry  *backoff

	// The open stream, nil between streams.
	stream      grpc.ServerStreamingClient[batonv1.WatchQueueResponse]
	closeStream context.CancelFunc
	// delivered: the open stream has sent something (the next reopen starts the backoff
	// afresh).
	delivered bool
	// broken is why the last stream ended, for the backoff's advice.
	broken error
	// err is an error no retry can fix; every Events iteration then yields it.
	err error
}

// WatchQueue starts watching the events of queue — jobs enqueued, delivered, reporting
// progress, succeeded, failed, dead, stalled, handed back, redriven, cancelled, as they
// happen, whichever replica or worker caused them — and returns once the watch is in place:
// every event from then on is yielded by [QueueWatch.Events] (or counted in a gap). There
// is no replay of what came before. Baton records a queue's events only while somebody
// watches it.
//
//	watch, err := client.WatchQueue(ctx, "emails")
//	if err != nil {
//		return err
//	}
//	defer watch.Close()
//	for event, err := range watch.Events() {
//		if err != nil {
//			return err
//		}
//		if event.Gap {
//			resync() // event.Missed events lost (0: unknown)
//			continue
//		}
//		log.Printf("%s %s: %s", event.JobID, event.Kind, event.State)
//	}
//
// Opening is retried on UNAVAILABLE for as long as ctx allows (without a deadline: the
// client's default timeout). When the stream later ends with UNAVAILABLE (a replica
// draining, a broken connection) Events reopens it after a short backoff on whichever
// replica the balancer picks, for as long as ctx allows; the events of the gap are lost,
// and Events yields a gap (Gap set, Missed 0) once the new watch is in place, before its
// first event. The watch ends when ctx ends or Close is called.
func (c *Client) WatchQueue(ctx context.Context, queue string) (*QueueWatch, error) {
	watchCtx, closeWatch := context.WithCancel(ctx)
	w := &QueueWatch{client: c, queue: queue, ctx: watchCtx, close: closeWatch, retry: newBackoff(callBackoff)}
	patience := ctx
	if _, hasDeadline := ctx.Deadline(); !hasDeadline && c.defaultTimeout > 0 {
		var cancel context.CancelFunc
		patience, cancel = context.WithTimeout(ctx, c.defaultTimeout)
		defer cancel()
	}
	for {
		err := w.open(patience)
		switch {
		case err == nil:
			w.retry = newBackoff(streamBackoff)
			return w, nil
		case patience.Err() != nil:
			closeWatch()
			if codeOf(err) == codes.Unavailable {
				return nil, FromError(err)
			}
			return nil, fmt.Errorf("baton: watching queue %q: %w", queue, context.Cause(patience))
		case codeOf(err) != codes.Unavailable && err != io.EOF:
			closeWatch()
			return nil, FromError(err)
		case !w.retry.sleep(patience, err):
			closeWatch()
			return nil, FromError(err)
		}
	}
}

// open starts a stream and waits until Baton has answered it with its headers, which it
// sends once the watch is in place; patience bounds the wait. The stream becomes the open
// one.
func (w *QueueWatch) open(patience context.Context) error {
	streamCtx, closeStream := context.WithCancel(withWaitForReady(w.ctx))
	stopOpening := context.AfterFunc(patience, closeStream)
	stream, err := w.client.Queue.WatchQueue(streamCtx, &batonv1.WatchQueueRequest{Queue: w.queue})
	if err == nil {
		// Header answers nil when the stream ended without headers (Baton refused the
		// watch); Recv then tells why.
		if header, _ := stream.Header(); header == nil {
			_, err = stream.Recv()
		}
	}
	if !stopOpening() && err == nil {
		err = context.Cause(patience) // patience ran out as the stream opened: it is closed
	}
	if err != nil {
		closeStream()
		return err
	}
	w.stream, w.closeStream, w.delivered = stream, closeStream, false
	return nil
}

// reopen opens a new stream after the last one ended, with backoff, until it succeeds (true),
// fails with an error no retry can fix (then kept in w.err), or the watch ends.
func (w *QueueWatch) reopen() bool {
	cause := w.broken
	for {
		if !w.retry.sleep(w.ctx, cause) {
			return false
		}
		err := w.open(w.ctx)
		switch {
		case err == nil:
			return true
		case w.ctx.Err() != nil:
			return false
		case !retryableStreamEnd(err):
			w.err = FromError(err)
			return false
		}
		cause = err
	}
}

// Events yields the queue's events and gaps in the order they happened, until the watch
// ends (ctx ended or Close), without an error, or until it yields an error no retry can fix
// (later iterations yield that error again). Breaking out of the loop keeps the watch: a
// later Events goes on from where it stopped.
func (w *QueueWatch) Events() iter.Seq2[QueueEvent, error] {
	return func(yield func(QueueEvent, error) bool) {
		for {
			if w.err != nil {
				yield(QueueEvent{}, w.err)
				return
			}
			if w.ctx.Err() != nil {
				return
			}
			if w.stream == nil {
				if !w.reopen() {
					continue // w.err, or the watch ended
				}
				if !yield(QueueEvent{Gap: true}, nil) {
					return
				}
				continue
			}
			response, err := w.stream.Recv()
			if err != nil {
				w.closeStream()
				w.stream = nil
				if w.ctx.Err() != nil {
					return
				}
				if !retryableStreamEnd(err) {
					w.err = FromError(err)
					continue
				}
				if w.delivered {
					w.retry.reset()
				}
				w.broken = err
				continue
			}
			w.delivered = true
			if event, known := queueEventOf(response); known && !yield(event, nil) {
				return
			}
		}
	}
}

// Close ends the watch: a running Events iteration returns. Safe to call from any
// goroutine, more than once.
func (w *QueueWatch) Close() {
	w.close()
}

// ListJobs reads one page of the jobs of queue in state, payloads included: READY in
// delivery order, SCHEDULED (delayed, and FAILED waiting to retry) soonest first, ACTIVE
// by lease expiry, SUCCEEDED most recently finished first (as many as Baton keeps), DEAD
// oldest death first. pageSize 0 means Baton's default (100), at most 1000; pass the
// nextPageToken of the previous page as pageToken ("" for the first page); it is "" after
// the last page. A page that would not fit in one message is RESOURCE_EXHAUSTED (reason
// RESPONSE_TOO_LARGE): ask for fewer. Retried on UNAVAILABLE.
func (c *Client) ListJobs(ctx context.Context, queue string, state batonv1.JobState, pageSize uint32, pageToken string) (jobs []*batonv1.Job, nextPageToken string, err error) {
	var response *batonv1.ListJobsResponse
	err = c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Queue.ListJobs(ctx, &batonv1.ListJobsRequest{Queue: queue, State: state, PageSize: pageSize, PageToken: pageToken})
		return err
	})
	if err != nil {
		return nil, "", err
	}
	return response.GetJobs(), response.GetNextPageToken(), nil
}
