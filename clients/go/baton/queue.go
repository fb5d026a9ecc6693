package baton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// oneDeliveryAMessage makes Consume leave batch_deliveries unset, as a worker meeting a server
// from before batches gets one job a message: set by the tests only.
var oneDeliveryAMessage atomic.Bool

var (
	// ErrJobCancelled is the cause of a handler's context when CancelJob was called for its
	// job: stop working on it. The job is not acked (Baton would refuse the Ack anyway).
	ErrJobCancelled = errors.New("baton: job cancelled")
	// ErrJobLeaseLost is the cause of a handler's context when Baton refused to extend the
	// job's lease (JOB_NOT_LEASED): it expired or the job was handed to another worker, whose
	// result is the one that counts.
	ErrJobLeaseLost = errors.New("baton: job lease lost")
	// ErrJobNotStarted is what [WithOnSettled] reports for a delivery Consume handed back to
	// the queue without running it, because it was stopping: the job is ready again at once
	// and the delivery's attempt is not charged.
	ErrJobNotStarted = errors.New("baton: job handed back unstarted")
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

// WithGroup puts the job in group (a tenant, a customer, an account; 1 to 512 bytes).
// Deliveries go round-robin across a queue's groups — the jobs without a group taking turns
// as one more group — so one busy group cannot starve the others, and within a group jobs
// are delivered in enqueue order ([WithPriority] orders ungrouped jobs only). The queue's
// [QueueConfig] may bound how many jobs of one group are active at once, make each group
// strict FIFO, and limit job starts per group; see [Client.ConfigureQueue]. A delivered
// job's group is [Job.Group].
//
// Enqueue options are functions of the request, so they also fill the requests of a batch
// sent through the raw stub ([Client.Queue].EnqueueBatch):
//
//	request := &batonv1.EnqueueRequest{Queue: "invoices", Payload: payload}
//	baton.WithGroup("tenant-42")(request)
func WithGroup(group string) EnqueueOption {
	return func(r *batonv1.EnqueueRequest) { r.Group = group }
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
	// Group is the job's group ([WithGroup]); empty when it has none.
	Group string

	leaseID string
	client  *Client
	// lose cancels the handler's context with the cause given (a lease refusal).
	lose func(cause error)
}

// LeaseID proves this delivery to Ack, Nack and Extend on the raw stub ([Client.Queue]);
// [Client.Consume] already does all three.
func (j *Job) LeaseID() string { return j.leaseID }

// Progress records how far the handler is with the job — value is the application's measure
// (a percentage, a count of items: any finite number), detail an optional small note (up to
// 4 KiB) — under this delivery's lease. Baton keeps it with the job (Job.progress, read by
// GetJob, [Client.WatchJob] and [Client.ListJobs]) and sends it to [Client.WatchJob] and
// [Client.WatchQueue] watchers. It does not prolong the lease: Consume does that.
//
// It is retried on UNAVAILABLE (a repeated UpdateProgress only sets the same progress
// again) for as long as ctx allows, without a deadline for the client's default timeout.
// When Baton refuses it because the lease no longer counts, the error wraps both
// [ErrJobCancelled] or [ErrJobLeaseLost] and the *Error ([ErrJobNotLeased], or reason
// JOB_CANCELLED), and the handler's context is cancelled with that cause, as when an
// Extend is refused: the job's result would no longer count.
func (j *Job) Progress(ctx context.Context, value float64, detail []byte) error {
	if j.client == nil {
		return errors.New("baton: Progress needs a job delivered by Consume")
	}
	err := j.client.retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := j.client.Queue.UpdateProgress(ctx, &batonv1.UpdateProgressRequest{LeaseId: j.leaseID, Value: value, Detail: detail})
		return err
	})
	if ended := leaseRefusal(err); ended != nil {
		if j.lose != nil {
			j.lose(ended)
		}
		return ended
	}
	return err
}

// leaseRefusal is the cause a refused lease gives the job's handler — [ErrJobCancelled] or
// [ErrJobLeaseLost], wrapping Baton's FAILED_PRECONDITION — or nil when err is not one.
func leaseRefusal(err error) error {
	var mapped *Error
	if !errors.As(err, &mapped) || mapped.Code != codes.FailedPrecondition {
		return nil
	}
	if mapped.reason() == batonv1.ErrorReason_JOB_CANCELLED {
		return fmt.Errorf("%w: %w", ErrJobCancelled, mapped)
	}
	return fmt.Errorf("%w: %w", ErrJobLeaseLost, mapped)
}

// Handler works on one job. Returning nil acks the job with result stored on it (the Job's
// result, which [Client.WaitJob] hands to whoever waits for the job; coalesced acks carry
// it too); returning an error, or panicking, nacks it with the error's text, so it is
// retried after its backoff until it runs out of attempts. [Job.Progress] reports how far it
// is meanwhile. ctx is cancelled with cause [ErrJobCancelled] or [ErrJobLeaseLost] when the
// result would no longer count (the job is then not acked), and when Consume's shutdown
// grace runs out (see [WithShutdownGrace]).
type Handler func(ctx context.Context, job *Job) (result []byte, err error)

type consumeConfig struct {
	visibility time.Duration
	types      []string
	consumer   string
	grace      time.Duration
	prefetch   int
	settled    func(*Job, error)
	ackBatch   int
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

// DefaultShutdownGrace is how long running handlers may go on after Consume's context ends.
const DefaultShutdownGrace = 30 * time.Second

// WithShutdownGrace lets running handlers finish, and be acked, for up to grace after
// Consume's context ends (default 30 s); Consume returns as soon as they have (it does not
// wait for the whole grace). Handlers still running when the grace runs out have their
// contexts cancelled; a job whose handler then fails is nacked to run again at once, on
// this attempt's count. 0 cancels them at once.
func WithShutdownGrace(grace time.Duration) ConsumeOption {
	return func(c *consumeConfig) { c.grace = grace }
}

// WithPrefetch leases up to n jobs beyond concurrency, so that a handler that finishes
// starts its next job without a round trip. Prefetched jobs are extended while they wait;
// when Consume stops, those not started go back to the queue at once without their attempt
// being charged. Default 0.
func WithPrefetch(n int) ConsumeOption {
	return func(c *consumeConfig) { c.prefetch = max(n, 0) }
}

// WithOnSettled calls settled once per delivery when Consume is done with it: err is nil
// when the job was acked, the handler's error when it was nacked, an error wrapping
// [ErrJobCancelled] or [ErrJobLeaseLost] when its result no longer counted,
// [ErrJobNotStarted] when Consume stopped before starting it, or the *Error of an Ack or
// Nack that failed (the job then comes back after its visibility timeout). Use it for logs
// and metrics; it runs on the handler's goroutine.
func WithOnSettled(settled func(job *Job, err error)) ConsumeOption {
	return func(c *consumeConfig) { c.settled = settled }
}

// WithAckBatchSize bounds how many acks go to Baton in one AckBatch call (default
// [DefaultAckBatchSize], 256; keep it within Baton's batch limit, 1,000 by default). Consume
// coalesces its acks: one goes out at once when no AckBatch of this Consume is in flight;
// those of handlers that finish while one is go out together as the next call, once it has
// returned, once n of them wait, or once the oldest has waited 10 ms, whichever comes first.
// Each job's outcome is its own, as with one Ack per job. n <= 0 sends one Ack per job.
func WithAckBatchSize(n int) ConsumeOption {
	return func(c *consumeConfig) { c.ackBatch = n }
}

// drainPatience bounds how long a stopping Consume waits, once its handlers are done, for
// Baton to end the drained stream, which confirms that the jobs handed back were received.
// Baton notices settlements on other replicas within a second.
const drainPatience = 3 * time.Second

// Consume runs handler on the jobs of queue, at most concurrency at a time, until ctx ends
// or an error no retry can fix occurs (INVALID_ARGUMENT, UNAUTHENTICATED, …), which it
// returns; it returns nil after ctx ends, once its handlers have returned.
//
// Each job is acked when its handler returns nil — acks are coalesced into AckBatch calls,
// see [WithAckBatchSize] — and nacked with the error text when it fails. While a handler runs its lease is extended every third of the visibility timeout,
// so long jobs are not handed to another worker. When CancelJob is called for a running
// job, or its lease is lost, the handler's context is cancelled and the job is not acked.
// Delivery is at least once: a worker that dies mid-job has its jobs delivered again, so
// handlers should be idempotent.
//
// Each job's trace continues in its handler: the trace context the job carries (the
// enqueuer's, or Baton's delivery span) is extracted with the global propagator
// (otel.SetTextMapPropagator) and the handler runs in a span "process <queue>" (kind
// consumer) of the global tracer provider, which ends once the job is settled; its Nack is
// sent under that span, and its ack goes in an AckBatch call sent under the span of the
// first job the call acks (see [WithAckBatchSize]); its Extends are sent under the job's
// context. With otelgrpc's client handler on the
// connection (see [WithDialOptions]) those calls carry the trace to Baton. Without an
// OpenTelemetry SDK and propagator nothing is recorded or propagated.
//
// Stopping is graceful: when ctx ends Consume hands back at once — without charging an
// attempt, through its current stream whichever stream delivered them — every job it holds
// but has not started, tells Baton to deliver nothing more (drain), hands back any delivery
// that crossed the drain on the wire, lets running handlers finish within the shutdown
// grace (default 30 s) and acks them, and returns as soon as they are done.
//
// When the stream breaks — a replica draining ends it UNAVAILABLE and keeps its leases, or
// a connection fails — Consume opens a new one at once, on whichever replica the balancer
// picks (then with a backoff of 50 ms growing to 250 ms); the jobs in hand go on, and their
// Acks, Nacks and Extends are retried through a 5 s outage.
func (c *Client) Consume(ctx context.Context, queue string, concurrency int, handler Handler, options ...ConsumeOption) error {
	cfg := consumeConfig{visibility: DefaultVisibilityTimeout, grace: DefaultShutdownGrace, ackBatch: DefaultAckBatchSize}
	for _, option := range options {
		option(&cfg)
	}
	concurrency = max(concurrency, 1)
	// Handlers outlive ctx by the grace, so that jobs in hand can still be acked.
	work, stopWork := context.WithCancelCause(context.WithoutCancel(ctx))
	defer stopWork(nil)
	var graceTimer *time.Timer
	var graceMu sync.Mutex
	stopAfterGrace := context.AfterFunc(ctx, func() {
		graceMu.Lock()
		defer graceMu.Unlock()
		graceTimer = time.AfterFunc(cfg.grace, func() { stopWork(fmt.Errorf("baton: consumer stopped: %w", context.Cause(ctx))) })
	})
	defer func() {
		stopAfterGrace()
		graceMu.Lock()
		defer graceMu.Unlock()
		if graceTimer != nil {
			graceTimer.Stop()
		}
	}()
	w := &worker{
		client:  c,
		queue:   queue,
		handler: handler,
		cfg:     cfg,
		slots:   make(chan struct{}, concurrency),
		stopped: make(chan struct{}),
		work:    work,
		held:    make(map[string]*heldJob),
	}
	if cfg.ackBatch > 0 {
		w.acks = newAckCoalescer(c, cfg.ackBatch)
	}
	request := &batonv1.ConsumeRequest{
		Queue:             queue,
		MaxInFlight:       uint32(concurrency + cfg.prefetch),
		VisibilityTimeout: durationpb.New(cfg.visibility),
		Types:             cfg.types,
		Consumer:          cfg.consumer,
		// A fetch's jobs in one message rather than one a message; older servers ignore it.
		BatchDeliveries: !oneDeliveryAMessage.Load(),
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
	work     context.Context
	handlers sync.WaitGroup // one per delivery until Consume is done with it
	acks     *ackCoalescer  // nil: one Ack per job

	stopped chan struct{} // closed at the stop decision: nothing starts from then on

	mu       sync.Mutex
	held     map[string]*heldJob // by lease id: what JobCancelled events are matched against
	stopping bool                // set with stopped, under mu, so that deliver sees it in order
	// current is the open stream, nil between streams. Baton takes unstarted jobs back
	// through any stream of the queue, so it also hands back jobs earlier streams delivered.
	current *consumeStream
}

type heldJob struct {
	job    *Job
	ctx    context.Context
	cancel context.CancelCauseFunc
	// stream delivered the job. Any stream of the queue can hand it back unstarted.
	stream *consumeStream
	// fate is the one decision each job gets, under worker.mu.
	fate jobFate
}

// jobFate is what becomes of a delivery that waits for a handler slot.
type jobFate int

const (
	jobWaiting    jobFate = iota
	jobStarted            // its handler runs (or ran)
	jobHandedBack         // returned to the queue unstarted
	jobDropped            // cancelled or lost while waiting
)

// consumeStream is one Consume stream. Its context is not the caller's: cancelling a stream
// makes Baton hand its jobs back with their attempts charged, so a stream is only cancelled
// once it has ended or holds nothing.
type consumeStream struct {
	stream grpc.BidiStreamingClient[batonv1.ConsumeRequest, batonv1.ConsumeResponse]
	cancel context.CancelFunc
	// maxInFlight bounds the lease ids of one hand-back message.
	maxInFlight int
	sendMu      sync.Mutex    // gRPC allows one sender at a time
	ended       chan struct{} // closed when the server has ended the stream (or it broke)
	err         error         // why it ended (nil: ended OK); set before ended is closed
}

// send writes one steering message; false when the stream has ended.
func (s *consumeStream) send(request *batonv1.ConsumeRequest) bool {
	select {
	case <-s.ended:
		return false
	default:
	}
	s.sendMu.Lock()
	defer s.sendMu.Unlock()
	return s.stream.Send(request) == nil
}

// run follows Consume streams, reopening them after breaks, until ctx ends (then it stops
// gracefully) or an error no retry can fix.
func (w *worker) run(ctx context.Context, request *batonv1.ConsumeRequest) error {
	retry := newBackoff(streamBackoff)
	var brokenAt time.Time
	for {
		if ctx.Err() != nil {
			w.stopBetweenStreams(request)
			return nil
		}
		stream, err := w.open(ctx, request)
		if err != nil {
			if ctx.Err() != nil {
				continue
			}
			if !retryableStreamEnd(err) {
				w.stop(nil, w.decideStop())
				return FromError(err)
			}
			if brokenAt.IsZero() {
				brokenAt = time.Now()
			}
			retry.sleep(ctx, err)
			continue
		}
		if !brokenAt.IsZero() {
			observeReconnect("consume", time.Since(brokenAt))
		}
		openedAt := time.Now()
		w.follow(stream)
		select {
		case <-ctx.Done():
			w.stop(stream, w.decideStop())
			return nil
		case <-stream.ended:
			w.setCurrent(nil)
			stream.cancel()
			if !retryableStreamEnd(stream.err) {
				w.stop(nil, w.decideStop())
				return FromError(stream.err)
			}
			// A stream that worked is reopened at once (a draining replica ends its streams
			// and keeps their leases: the jobs in hand go on); one that ends as soon as it
			// opens is reopened with backoff, lest the two go on in a tight loop.
			brokenAt = time.Now()
			if time.Since(openedAt) > time.Second {
				retry.reset()
			} else {
				retry.sleep(ctx, stream.err)
			}
		}
	}
}

// follow makes stream the current one, then reads it: a delivery that must go straight
// back finds the stream it came on.
func (w *worker) follow(stream *consumeStream) {
	w.setCurrent(stream)
	go w.read(stream)
}

func (w *worker) setCurrent(stream *consumeStream) {
	w.mu.Lock()
	w.current = stream
	w.mu.Unlock()
}

// open starts a stream and waits until Baton has accepted its first message; the caller
// then follows it.
func (w *worker) open(ctx context.Context, request *batonv1.ConsumeRequest) (*consumeStream, error) {
	streamCtx, cancel := context.WithCancel(withWaitForReady(context.Background()))
	// Until the stream is accepted nothing is leased to it, so ctx may cancel the opening.
	stopOpening := context.AfterFunc(ctx, cancel)
	defer stopOpening()
	stream, err := w.client.Queue.Consume(streamCtx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &consumeStream{stream: stream, cancel: cancel, maxInFlight: int(request.GetMaxInFlight()), ended: make(chan struct{})}
	if err := stream.Send(request); err != nil {
		_, err = stream.Recv() // a failed Send means the stream ended; Recv tells why
		cancel()
		return nil, err
	}
	if _, err := stream.Header(); err != nil {
		_, err = stream.Recv()
		cancel()
		return nil, err
	}
	return s, nil
}

// read follows the stream's events until it ends.
func (w *worker) read(s *consumeStream) {
	for {
		response, err := s.stream.Recv()
		if err != nil {
			if err != io.EOF {
				s.err = err
			}
			close(s.ended)
			return
		}
		if delivery := response.GetDelivery(); delivery != nil {
			w.deliver(delivery, s)
		} else if batch := response.GetDeliveries(); batch != nil {
			for _, delivery := range batch.GetDeliveries() {
				w.deliver(delivery, s)
			}
		} else if cancelled := response.GetCancelled(); cancelled != nil {
			w.cancel(cancelled.GetLeaseId())
		}
	}
}

// decideStop is the stop decision: nothing starts from then on. It returns the jobs held
// but not started, now marked as handed back, for stop to return to the queue.
func (w *worker) decideStop() (unstarted []*heldJob) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopping {
		return nil
	}
	w.stopping = true
	for _, held := range w.held {
		if held.fate == jobWaiting {
			held.fate = jobHandedBack
			unstarted = append(unstarted, held)
		}
	}
	close(w.stopped) // after the marks: a job woken by it finds its own
	return unstarted
}

// stop follows the stop decision on the open stream (nil when none is open): the jobs not
// started go back, Baton is asked to deliver no more, and once the handlers are done the
// stream is closed.
func (w *worker) stop(stream *consumeStream, unstarted []*heldJob) {
	var own, earlier []*heldJob
	for _, held := range unstarted {
		if held.stream == stream {
			own = append(own, held)
		} else {
			earlier = append(earlier, held)
		}
	}
	// Earlier streams' jobs go back before the drain: Baton may end a drained stream as soon
	// as it holds none of its own deliveries, and would then not read them; and handing them
	// back frees none of this stream's credit, so nothing is delivered in their place.
	w.handBack(stream, earlier...)
	if stream == nil {
		return
	}
	stream.send(&batonv1.ConsumeRequest{Drain: true})
	// This stream's own go back after it: Baton keeps the stream open until it has them
	// back, and delivers nothing in their place.
	w.handBack(stream, own...)
	w.handlers.Wait()
	// Baton ends a drained stream OK once it holds nothing, which tells us that every job
	// handed back was received; cancelling before could charge their attempts.
	select {
	case <-stream.ended:
	case <-time.After(drainPatience):
	}
	w.setCurrent(nil)
	stream.cancel()
	<-stream.ended
}

// stopBetweenStreams stops while no stream is open (the last one broke, the next is not
// open yet). Jobs not started can go back through any stream of the queue, so one is opened
// for them, asking for a single delivery (which goes straight back too); only if that fails
// are they nacked, which charges their attempts.
func (w *worker) stopBetweenStreams(request *batonv1.ConsumeRequest) {
	unstarted := w.decideStop()
	if len(unstarted) == 0 {
		return
	}
	opening, cancel := context.WithTimeout(context.Background(), drainPatience)
	defer cancel()
	handBackOnly := proto.CloneOf(request)
	handBackOnly.MaxInFlight = 1
	stream, err := w.open(opening, handBackOnly)
	if err != nil {
		w.stop(nil, unstarted)
		return
	}
	w.follow(stream)
	w.stop(stream, unstarted)
}

func (w *worker) deliver(delivery *batonv1.Delivery, stream *consumeStream) {
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
		Group:       job.GetGroup(),
		leaseID:     delivery.GetLeaseId(),
		client:      w.client,
	}, stream: stream}
	// The handler, and the Extends, Ack or Nack sent for the job, continue its trace.
	held.ctx, held.cancel = context.WithCancelCause(jobTraceContext(w.work, job.GetTraceContext()))
	held.job.lose = held.cancel
	w.mu.Lock()
	stopping := w.stopping
	if stopping {
		held.fate = jobHandedBack
	} else {
		// Never after the stop decision: stop waits on handlers, and a WaitGroup must not
		// grow from zero while waited on.
		w.held[held.job.leaseID] = held
		w.handlers.Add(1)
	}
	w.mu.Unlock()
	if stopping {
		// Delivered after the stop decision, before Baton read the drain: straight back.
		w.handBack(stream, held)
		return
	}
	go w.process(held)
}

func (w *worker) forget(held *heldJob) {
	held.cancel(nil)
	w.mu.Lock()
	delete(w.held, held.job.leaseID)
	w.mu.Unlock()
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
	defer w.forget(held)
	// The lease is extended from delivery on, also while the job waits for a slot.
	extending := make(chan struct{})
	defer func() { <-extending }()
	go func() {
		defer close(extending)
		w.extend(held)
	}()
	defer held.cancel(nil) // stops the extension before waiting for it

	if !w.takeSlot(held) {
		return
	}
	defer func() { <-w.slots }()
	ctx, span := startProcessSpan(held.ctx, held.job)
	result, err := w.runHandler(ctx, held)
	endProcessSpan(span, w.settle(ctx, held, result, err))
}

// takeSlot waits for a free handler slot; false when the job is not to be started: handed
// back because Consume is stopping, or cancelled or lost meanwhile (and reported).
func (w *worker) takeSlot(held *heldJob) bool {
	tookSlot := false
	select {
	case w.slots <- struct{}{}:
		tookSlot = true
	case <-w.stopped:
	case <-held.ctx.Done():
	}
	// Decided under the lock whichever case select picked: a stop decision (which has
	// already handed the job back), then the job's own end.
	cause := context.Cause(held.ctx)
	ended := held.ctx.Err() != nil
	w.mu.Lock()
	handedBackByStop := held.fate == jobHandedBack // the stop decision reports it too
	if !handedBackByStop {
		switch {
		case ended && (errors.Is(cause, ErrJobCancelled) || errors.Is(cause, ErrJobLeaseLost)):
			held.fate = jobDropped
		case ended || w.stopping:
			// The shutdown grace ended it, possibly before the stop decision reached us.
			held.fate = jobHandedBack
		default:
			held.fate = jobStarted
		}
	}
	fate := held.fate
	w.mu.Unlock()
	if fate == jobStarted {
		return true
	}
	if tookSlot {
		<-w.slots
	}
	switch {
	case fate == jobDropped:
		w.report(held.job, cause)
	case fate == jobHandedBack && !handedBackByStop:
		w.mu.Lock()
		current := w.current
		w.mu.Unlock()
		w.handBack(current, held)
	}
	return false
}

// handBack returns jobs that were not started to the queue, ready at once and without their
// attempts charged, through stream (Baton accepts any current lease of the queue, also one
// delivered on an earlier stream). With no stream open (nil, or ended), only a Nack can
// return a job before its visibility timeout, and that charges the attempt.
func (w *worker) handBack(stream *consumeStream, jobs ...*heldJob) {
	if len(jobs) == 0 {
		return
	}
	for _, held := range jobs {
		held.cancel(nil) // stops its extension
	}
	for len(jobs) > 0 {
		batch := jobs[:min(len(jobs), max(stream.batchLimit(), 1))]
		ids := make([]string, len(batch))
		for i, held := range batch {
			ids[i] = held.job.leaseID
		}
		if stream == nil || !stream.send(&batonv1.ConsumeRequest{UnstartedLeaseIds: ids}) {
			break
		}
		for _, held := range batch {
			w.report(held.job, ErrJobNotStarted)
		}
		jobs = jobs[len(batch):]
	}
	var nacks sync.WaitGroup
	for _, held := range jobs {
		nacks.Add(1)
		go func() {
			defer nacks.Done()
			err := w.nack(held.ctx, held, "baton: the worker stopped before starting the job", true)
			if err == nil {
				err = fmt.Errorf("%w; no stream was open to hand it back, so it was nacked and its attempt charged", ErrJobNotStarted)
			}
			w.report(held.job, err)
		}()
	}
	nacks.Wait()
}

// batchLimit is how many lease ids one hand-back message may name; 0 without a stream.
func (s *consumeStream) batchLimit() int {
	if s == nil {
		return 0
	}
	return s.maxInFlight
}

func (w *worker) runHandler(ctx context.Context, held *heldJob) (result []byte, err error) {
	defer func() {
		if recovered := recover(); recovered != nil {
			err = fmt.Errorf("handler panicked: %v", recovered)
		}
	}()
	return w.handler(ctx, held.job)
}

// settle acks or nacks a job whose handler has returned, unless its result no longer counts,
// under ctx's trace context (the job's process span); it returns what it reported.
func (w *worker) settle(ctx context.Context, held *heldJob, result []byte, handlerErr error) error {
	cutShort := false
	if held.ctx.Err() != nil {
		cause := context.Cause(held.ctx)
		if errors.Is(cause, ErrJobCancelled) || errors.Is(cause, ErrJobLeaseLost) {
			w.report(held.job, cause)
			return cause
		}
		// Otherwise the shutdown grace ran out; the lease is still ours. A handler that
		// finished anyway is acked (running it again would be a duplicate); one that failed
		// most likely failed of the cancellation, so its job runs again at once.
		cutShort = true
	}
	// Not cancelled with the handler's context: a result that counts is always settled.
	ctx = context.WithoutCancel(ctx)
	var err error
	switch {
	case handlerErr == nil && w.acks != nil:
		err = w.acks.ack(ctx, held.job.leaseID, result)
	case handlerErr == nil:
		err = w.client.retry(ctx, settleBudget, func(ctx context.Context) error {
			_, err := w.client.Queue.Ack(ctx, &batonv1.AckRequest{LeaseId: held.job.leaseID, Result: result})
			return err
		})
	default:
		err = w.nack(ctx, held, handlerErr.Error(), cutShort)
		if err == nil {
			err = handlerErr
		}
	}
	w.report(held.job, err)
	return err
}

// nack fails a delivery, retried with the settle budget (the API declares Nack safe to
// repeat), in ctx's trace context but never cancelled by it; immediately makes the job
// ready again at once rather than after its backoff.
func (w *worker) nack(ctx context.Context, held *heldJob, reason string, immediately bool) error {
	request := &batonv1.NackRequest{LeaseId: held.job.leaseID, Error: reason}
	if immediately {
		request.RetryAfter = durationpb.New(time.Millisecond) // 0 would mean the job's backoff
	}
	return w.client.retry(context.WithoutCancel(ctx), settleBudget, func(ctx context.Context) error {
		_, err := w.client.Queue.Nack(ctx, request)
		return err
	})
}

func (w *worker) report(job *Job, err error) {
	if w.cfg.settled != nil {
		w.cfg.settled(job, err)
	}
}

// extend renews the job's lease every third of the visibility timeout until the job is
// settled, so that two failed attempts in a row still leave time for a third; each renewal
// is retried with the settle budget.
func (w *worker) extend(held *heldJob) {
	ticker := time.NewTicker(w.cfg.visibility / 3)
	defer ticker.Stop()
	for {
		select {
		case <-held.ctx.Done():
			return
		case <-ticker.C:
		}
		err := w.client.retry(held.ctx, settleBudget, func(ctx context.Context) error {
			_, err := w.client.Queue.Extend(ctx, &batonv1.ExtendRequest{
				LeaseId:           held.job.leaseID,
				VisibilityTimeout: durationpb.New(w.cfg.visibility),
			})
			return err
		})
		if ended := leaseRefusal(err); ended != nil {
			held.cancel(ended)
			return
		}
		// Other failures (an outage past the budget, …) are retried at the next tick.
	}
}
