package baton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

var (
	// ErrJobCancelled is the cause of a handler's context when CancelJob was called for its
	// job: stop working on it. The job is not acked (Baton would refuse the Ack anyway).
	ErrJobCancelled = errors.New("baton: job cancelled")
	// ErrJobLeaseLost is the cause of a handler's context when Baton refused to extend the
	// job's lease (JOB_NOT_LEASED): it expired or the job was handed to another worker, whose
	// result is the one that counts.
	ErrJobLeaseLost = errors.New("baton: job lease lost")
	// ErrJobNotLeased: Ack, Nack or Extend with a lease that is no longer the job's current one.
	ErrJobNotLeased = &Error{Code: codes.FailedPrecondition, Reason: "JOB_NOT_LEASED"}
)

// EnqueueOption tunes [Client.Enqueue].
type EnqueueOption func(*batonv1.EnqueueRequest)

// WithJobType sets the job's type, which [WithJobTypes] consumers filter on.
func WithJobType(jobType string) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) { r.Type = jobType }
}

// WithDelay makes the job ready after delay.
func WithDelay(delay time.Duration) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) {
		r.Schedule = &batonv1.EnqueueRequest_Delay{Delay: durationpb.New(delay)}
	}
}

// WithRunAt makes the job ready at runAt, by the Redis server's clock.
func WithRunAt(runAt time.Time) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) {
		r.Schedule = &batonv1.EnqueueRequest_RunAt{RunAt: timestamppb.New(runAt)}
	}
}

// WithPriority delivers the job before every job of lower priority (default 0).
func WithPriority(priority int32) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) { r.Priority = priority }
}

// WithMaxAttempts bounds the deliveries before the job goes to the dead-letter set.
func WithMaxAttempts(attempts uint32) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) { r.MaxAttempts = attempts }
}

// WithRetryBackoff sets the wait before retry n to initial·multiplier^(n-1), at most max.
func WithRetryBackoff(initial, max time.Duration, multiplier float64) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) {
		r.Backoff = &batonv1.Backoff{Initial: durationpb.New(initial), Max: durationpb.New(max), Multiplier: multiplier}
	}
}

// WithDedupKey makes Enqueue idempotent: within ttl (0: the server's default), another
// Enqueue to the queue with the same key returns the first job's id with Duplicate set.
// It is also what makes Enqueue safe to retry, so only jobs with a key are retried.
func WithDedupKey(key string, ttl time.Duration) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) {
		r.DedupKey = key
		if ttl > 0 {
			r.DedupTtl = durationpb.New(ttl)
		}
	}
}

// Enqueued identifies the job an [Client.Enqueue] added.
type Enqueued struct {
	JobID string
	// Duplicate: the dedup key matched an earlier job, whose id JobID is; nothing was added.
	Duplicate bool
}

// Enqueue adds a job to queue. With [WithDedupKey] it retries on UNAVAILABLE (a retry of an
// applied Enqueue answers the same job as a duplicate); without one it does not, because a
// retry after a lost answer could enqueue the job twice.
func (c *Client) Enqueue(ctx context.Context, queue string, payload []byte, options ...EnqueueOption) (Enqueued, error) {
	request := &batonv1.EnqueueRequest{Queue: queue, Payload: payload}
	for _, option := range options {
		option(request)
	}
	var response *batonv1.EnqueueResponse
	call := func(ctx context.Context) (err error) {
		response, err = c.Queue.Enqueue(ctx, request)
		return err
	}
	var err error
	if request.GetDedupKey() != "" {
		err = c.retryUnavailable(ctx, call)
	} else {
		err = FromError(call(ctx))
	}
	if err != nil {
		return Enqueued{}, err
	}
	return Enqueued{JobID: response.GetJobId(), Duplicate: response.GetDuplicate()}, nil
}

// Job is one delivery of a job to a [Handler].
type Job struct {
	ID       string
	Queue    string
	Type     string
	Payload  []byte
	Priority int32
	// Attempt is 1 on the first delivery, 2 on the first retry, …
	Attempt     uint32
	MaxAttempts uint32
	// LastError is the error text of the previous attempt's Nack, if any.
	LastError string
	CreatedAt time.Time

	leaseID string
}

// LeaseID proves this delivery to Ack, Nack and Extend on the raw stub ([Client.Queue]);
// [Client.Consume] already does all three.
func (j *Job) LeaseID() string { return j.leaseID }

// Handler works on one job. Returning nil acks the job (with result stored on it);
// returning an error, or panicking, nacks it with the error's text, so it is retried after
// its backoff until it runs out of attempts. ctx is cancelled with cause [ErrJobCancelled]
// or [ErrJobLeaseLost] when the result would no longer count, and at shutdown (see
// [WithShutdownGrace]); the job is then not acked.
type Handler func(ctx context.Context, job *Job) (result []byte, err error)

type consumeConfig struct {
	visibility time.Duration
	types      []string
	consumer   string
	grace      time.Duration
	settled    func(*Job, error)
}

// ConsumeOption tunes [Client.Consume].
type ConsumeOption func(*consumeConfig)

// DefaultVisibilityTimeout is how long a delivery is leased before Consume extends it.
const DefaultVisibilityTimeout = 30 * time.Second

// WithVisibilityTimeout sets how long each lease lasts (default 30 s, at least 1 s). Consume
// extends the leases of running handlers every third of it, so it only bounds how long a
// job held by a crashed worker waits before another worker gets it.
func WithVisibilityTimeout(timeout time.Duration) ConsumeOption {
	return func(c *consumeConfig) { c.visibility = timeout }
}

// WithJobTypes consumes only jobs of these types.
func WithJobTypes(types ...string) ConsumeOption {
	return func(c *consumeConfig) { c.types = types }
}

// WithConsumerName names the worker (host, pod) in Baton's logs and metrics.
func WithConsumerName(name string) ConsumeOption {
	return func(c *consumeConfig) { c.consumer = name }
}

// WithShutdownGrace lets running handlers finish (and be acked) for up to grace after
// Consume's context ends, before their own contexts are cancelled. Default 0: cancelled at
// once, and their jobs handed back to the queue.
func WithShutdownGrace(grace time.Duration) ConsumeOption {
	return func(c *consumeConfig) { c.grace = grace }
}

// WithOnSettled calls settled once per delivery when Consume is done with it: err is nil
// when the job was acked, the handler's error when it was nacked, an error wrapping
// [ErrJobCancelled] or [ErrJobLeaseLost] when its result no longer counted, or the *Error of
// an Ack or Nack that failed (the job then comes back after its visibility timeout). Use it
// for logs and metrics; it runs on the handler's goroutine.
func WithOnSettled(settled func(job *Job, err error)) ConsumeOption {
	return func(c *consumeConfig) { c.settled = settled }
}

// Consume runs handler on the jobs of queue, at most concurrency at a time, until ctx ends
// or an error no retry can fix occurs (INVALID_ARGUMENT, UNAUTHENTICATED, …), which it
// returns; it returns nil after ctx ends, once its handlers have returned.
//
// Each job is acked when its handler returns nil and nacked with the error text when it
// fails. While a handler runs its lease is extended every third of the visibility timeout,
// so long jobs are not handed to another worker. When CancelJob is called for a running
// job, or its lease is lost, the handler's context is cancelled and the job is not acked.
// When the stream breaks — a replica shutting down, a network failure — Consume reconnects
// with backoff, to whichever replica the balancer picks, and the handlers already running
// go on and are acked through it. Delivery is at least once: a worker that dies mid-job
// has its jobs delivered again, so handlers should be idempotent.
func (c *Client) Consume(ctx context.Context, queue string, concurrency int, handler Handler, options ...ConsumeOption) error {
	cfg := consumeConfig{visibility: DefaultVisibilityTimeout}
	for _, option := range options {
		option(&cfg)
	}
	concurrency = max(concurrency, 1)
	// Handlers outlive ctx by the grace, so that jobs in hand can still be acked.
	work, stopWork := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopWork(nil)
	stopAfterGrace := context.AfterFunc(ctx, func() {
		time.AfterFunc(cfg.grace, func() { stopWork(fmt.Errorf("baton: consumer stopped: %w", context.Cause(ctx))) })
	})
	defer stopAfterGrace()
	w := &worker{
		client:  c,
		queue:   queue,
		handler: handler,
		cfg:     cfg,
		slots:   make(chan struct{}, concurrency),
		stopped: ctx.Done(),
		work:    work,
		held:    make(map[string]*heldJob),
	}
	request := &batonv1.ConsumeRequest{
		Queue:             queue,
		MaxInFlight:       uint32(concurrency),
		VisibilityTimeout: durationpb.New(cfg.visibility),
		Types:             cfg.types,
		Consumer:          cfg.consumer,
	}
	err := w.run(ctx, request)
	w.handlers.Wait()
	return err
}

// worker is the state of one Consume call, shared by its stream reader and its handlers.
type worker struct {
	client   *Client
	queue    string
	handler  Handler
	cfg      consumeConfig
	slots    chan struct{} // one token per running handler
	stopped  <-chan struct{}
	work     context.Context
	handlers sync.WaitGroup

	mu       sync.Mutex
	held     map[string]*heldJob // by lease id: what JobCancelled events are matched against
	stopping bool                // no handler starts from then on, so handlers.Wait is final
}

type heldJob struct {
	job    *Job
	ctx    context.Context
	cancel context.CancelCauseFunc
}

// run follows Consume streams, reconnecting after breaks, until ctx ends or an error no
// retry can fix. Each stream lives until every handler has returned, because closing it
// hands its un-acked jobs back to the queue.
func (w *worker) run(ctx context.Context, request *batonv1.ConsumeRequest) error {
	retry := newBackoff()
	for {
		err := w.follow(ctx, request, retry)
		if ctx.Err() != nil {
			return nil
		}
		switch codeOf(err) {
		case codes.Unavailable, codes.Unknown, codes.Internal, codes.ResourceExhausted,
			codes.DeadlineExceeded, codes.Canceled, codes.Aborted, codes.OK:
			if !retry.sleep(ctx, err) {
				return nil
			}
		default:
			return FromError(err)
		}
	}
}

// follow reads one stream until it breaks (its error; nil for a clean end) or ctx ends.
func (w *worker) follow(ctx context.Context, request *batonv1.ConsumeRequest, retry *backoff) error {
	streamCtx, closeStream := context.WithCancel(context.Background())
	defer closeStream()
	stream, err := w.client.Queue.Consume(streamCtx, request)
	if err != nil {
		return err
	}
	if _, err := stream.Header(); err != nil {
		return err
	}
	retry.reset()
	broken := make(chan error, 1)
	go func() {
		for {
			response, err := stream.Recv()
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				broken <- err
				return
			}
			if delivery := response.GetDelivery(); delivery != nil {
				w.deliver(delivery)
			} else if cancelled := response.GetCancelled(); cancelled != nil {
				w.cancel(cancelled.GetLeaseId())
			}
		}
	}()
	select {
	case err := <-broken:
		return err
	case <-ctx.Done():
		// Keep the stream, and so the leases of the jobs in hand, until the handlers are
		// done; closing it then hands the jobs that never started back at once.
		w.mu.Lock()
		w.stopping = true
		w.mu.Unlock()
		w.handlers.Wait()
		closeStream()
		<-broken
		return nil
	}
}

func (w *worker) deliver(delivery *batonv1.Delivery) {
	job := delivery.GetJob()
	held := &heldJob{job: &Job{
		ID:          job.GetJobId(),
		Queue:       job.GetQueue(),
		Type:        job.GetType(),
		Payload:     job.GetPayload(),
		Priority:    job.GetPriority(),
		Attempt:     delivery.GetAttempt(),
		MaxAttempts: job.GetMaxAttempts(),
		LastError:   job.GetLastError(),
		CreatedAt:   job.GetCreatedAt().AsTime(),
		leaseID:     delivery.GetLeaseId(),
	}}
	held.ctx, held.cancel = context.WithCancelCause(w.work)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		held.cancel(nil)
		return // handed back when the stream closes
	}
	w.held[held.job.leaseID] = held
	w.handlers.Add(1)
	go w.process(held)
}

func (w *worker) cancel(leaseID string) {
	w.mu.Lock()
	held := w.held[leaseID]
	w.mu.Unlock()
	if held != nil {
		held.cancel(ErrJobCancelled)
	}
}

func (w *worker) process(held *heldJob) {
	defer w.handlers.Done()
	defer func() {
		w.mu.Lock()
		delete(w.held, held.job.leaseID)
		w.mu.Unlock()
	}()
	// The lease is extended from delivery on, also while the job waits for a slot.
	extending := make(chan struct{})
	defer func() { <-extending }()
	go func() {
		defer close(extending)
		w.extend(held)
	}()
	defer held.cancel(nil) // stops the extension before waiting for it

	select {
	case w.slots <- struct{}{}:
		defer func() { <-w.slots }()
	case <-w.stopped:
		return // never started: handed back when the stream closes
	case <-held.ctx.Done():
		w.settle(held, nil, nil)
		return
	}
	select {
	case <-w.stopped:
		return // both were ready and select chose the slot at random
	default:
	}
	result, err := w.runHandler(held)
	w.settle(held, result, err)
}

func (w *worker) runHandler(held *heldJob) (result []byte, err error) {
	defer func() {
		if recovered := recover(); recovered != nil {
			err = fmt.Errorf("handler panicked: %v", recovered)
		}
	}()
	return w.handler(held.ctx, held.job)
}

// settle acks or nacks a job whose handler has returned, unless its result no longer counts.
func (w *worker) settle(held *heldJob, result []byte, handlerErr error) {
	if held.ctx.Err() != nil {
		cause := context.Cause(held.ctx)
		if errors.Is(cause, ErrJobCancelled) || errors.Is(cause, ErrJobLeaseLost) {
			w.report(held.job, cause)
			return
		}
		if w.work.Err() != nil {
			// Cut short by shutdown: not the job's fault, so no Nack (which would use up an
			// attempt); the stream's close hands it back at once.
			return
		}
	}
	// Past the visibility timeout the lease has expired and every retry would be refused.
	budget, cancel := context.WithTimeout(context.Background(), w.cfg.visibility)
	defer cancel()
	var err error
	if handlerErr == nil {
		err = w.client.retryUnavailable(budget, func(ctx context.Context) error {
			_, err := w.client.Queue.Ack(ctx, &batonv1.AckRequest{LeaseId: held.job.leaseID, Result: result})
			return err
		})
	} else {
		err = w.client.retryUnavailable(budget, func(ctx context.Context) error {
			_, err := w.client.Queue.Nack(ctx, &batonv1.NackRequest{LeaseId: held.job.leaseID, Error: handlerErr.Error()})
			return err
		})
		if err == nil {
			err = handlerErr
		}
	}
	w.report(held.job, err)
}

func (w *worker) report(job *Job, err error) {
	if w.cfg.settled != nil {
		w.cfg.settled(job, err)
	}
}

// extend renews the job's lease every third of the visibility timeout until the job is
// settled, so that two failed attempts in a row still leave time for a third.
func (w *worker) extend(held *heldJob) {
	ticker := time.NewTicker(w.cfg.visibility / 3)
	defer ticker.Stop()
	for {
		select {
		case <-held.ctx.Done():
			return
		case <-ticker.C:
		}
		_, err := w.client.Queue.Extend(held.ctx, &batonv1.ExtendRequest{
			LeaseId:           held.job.leaseID,
			VisibilityTimeout: durationpb.New(w.cfg.visibility),
		})
		var mapped *Error
		if errors.As(FromError(err), &mapped) && mapped.Code == codes.FailedPrecondition {
			if mapped.Reason == "JOB_CANCELLED" {
				held.cancel(fmt.Errorf("%w: %w", ErrJobCancelled, mapped))
			} else {
				held.cancel(fmt.Errorf("%w: %w", ErrJobLeaseLost, mapped))
			}
			return
		}
		// Other failures (UNAVAILABLE, …) are retried at the next tick.
	}
}

// retryUnavailable runs call until it succeeds or fails with anything but UNAVAILABLE, with
// backoff, for as long as ctx allows (without a deadline: the default timeout). Only for
// calls the API declares safe to retry.
func (c *Client) retryUnavailable(ctx context.Context, call func(context.Context) error) error {
	if _, hasDeadline := ctx.Deadline(); !hasDeadline && c.defaultTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, c.defaultTimeout)
		defer cancel()
	}
	retry := newBackoff()
	for {
		err := call(ctx)
		if err == nil {
			return nil
		}
		if codeOf(err) != codes.Unavailable || !retry.sleep(ctx, err) {
			return FromError(err)
		}
	}
}
