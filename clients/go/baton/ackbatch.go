package baton

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// DefaultAckBatchSize is how many acks [Client.Consume] sends in one AckBatch call at most
// (see [WithAckBatchSize]).
const DefaultAckBatchSize = 256

// defaultAckBatchDelay bounds how long an ack waits for the AckBatch in flight before it
// goes out in a call of its own: a slow call (one retrying through an outage, or stuck on a
// frozen replica) does not hold the others back.
const defaultAckBatchDelay = 10 * time.Millisecond

// ackBatchDelay is defaultAckBatchDelay, except in the tests.
var ackBatchDelay atomic.Int64

func init() { ackBatchDelay.Store(int64(defaultAckBatchDelay)) }

// ackBatchBytes bounds the results of one AckBatch call (a call holds at least one ack), far
// below Baton's message limit (4 MiB by default) whatever the results weigh.
const ackBatchBytes = 1 << 20

// The reasons Baton gives in an AckResult, spelled as in an Ack's FAILED_PRECONDITION.
var ackRefusals = map[string]string{
	batonv1.ErrorReason_JOB_NOT_LEASED.String(): "this lease is not the job's current one: it expired, was re-delivered, or the job is gone",
	batonv1.ErrorReason_JOB_CANCELLED.String():  "the job was cancelled; this lease can no longer settle it",
}

// ackCoalescer sends the acks of one Consume call as AckBatch calls: an ack goes out at once
// when no call of this worker is in flight; acks that come while one is go out together
// when it returns — or sooner, once maxBatch of them wait (a full call) or the oldest has
// waited ackBatchDelay. Each ack gets its own outcome, the one a single Ack would have had.
type ackCoalescer struct {
	client   *Client
	maxBatch int

	mu      sync.Mutex
	waiting []*pendingAck
	// waitingBytes is the waiting acks' results in all: whether a call is due is then known
	// without reading every waiting ack, which each ack would otherwise do under mu.
	waitingBytes int
	inFlight     int  // AckBatch calls under way
	timerArmed   bool // a timer will look at waiting's oldest ack when it is overdue
}

type pendingAck struct {
	// ctx is the job's process span context, without its cancellation; a call carries its
	// first ack's.
	ctx      context.Context
	request  *batonv1.AckRequest
	queuedAt time.Time
	outcome  chan error // buffered: the sender never waits
}

func newAckCoalescer(client *Client, maxBatch int) *ackCoalescer {
	return &ackCoalescer{client: client, maxBatch: maxBatch}
}

// ack completes the delivery of leaseID and returns its outcome: nil when the job is
// SUCCEEDED under this lease, else the [*Error] its single Ack would have returned.
func (a *ackCoalescer) ack(ctx context.Context, leaseID string, result []byte) error {
	pending := &pendingAck{
		ctx:      context.WithoutCancel(ctx),
		request:  &batonv1.AckRequest{LeaseId: leaseID, Result: result},
		queuedAt: time.Now(),
		outcome:  make(chan error, 1),
	}
	a.mu.Lock()
	a.waiting = append(a.waiting, pending)
	a.waitingBytes += len(result)
	batches := a.takeLocked(pending.queuedAt)
	a.mu.Unlock()
	observeAckQueued()
	a.start(batches)
	return <-pending.outcome
}

// takeLocked takes the calls to make now: every full one, then the rest if no call is in
// flight or the oldest has waited long enough; otherwise it makes sure a timer will look
// again when the oldest is overdue.
func (a *ackCoalescer) takeLocked(now time.Time) (batches [][]*pendingAck) {
	delay := time.Duration(ackBatchDelay.Load())
	for len(a.waiting) > 0 {
		// Full: one call could not take every waiting ack (a lone ack over the byte bound
		// goes in a call of its own, which is not full).
		full := len(a.waiting) >= a.maxBatch || (len(a.waiting) > 1 && a.waitingBytes > ackBatchBytes)
		overdue := now.Sub(a.waiting[0].queuedAt) >= delay
		if !full && !overdue && a.inFlight > 0 {
			break
		}
		n, size := 0, 0
		for n < len(a.waiting) && n < a.maxBatch {
			next := len(a.waiting[n].request.GetResult())
			if n > 0 && size+next > ackBatchBytes {
				break
			}
			size += next
			n++
		}
		batches = append(batches, a.waiting[:n:n])
		a.waiting = a.waiting[n:]
		a.waitingBytes -= size
		a.inFlight++
	}
	if len(a.waiting) == 0 {
		a.waiting = nil // let the backing array go
	} else if !a.timerArmed {
		a.timerArmed = true
		time.AfterFunc(delay-now.Sub(a.waiting[0].queuedAt), a.overdue)
	}
	return batches
}

// overdue is the timer's look at the waiting acks.
func (a *ackCoalescer) overdue() {
	a.mu.Lock()
	a.timerArmed = false
	batches := a.takeLocked(time.Now())
	a.mu.Unlock()
	a.start(batches)
}

func (a *ackCoalescer) start(batches [][]*pendingAck) {
	for _, batch := range batches {
		go a.send(batch)
	}
}

// send makes one AckBatch call — retried on UNAVAILABLE with the settle budget, as a single
// Ack is (AckBatch is as safe to repeat) — in the trace context of its first ack, then hands
// each ack its outcome.
func (a *ackCoalescer) send(batch []*pendingAck) {
	request := &batonv1.AckBatchRequest{Acks: make([]*batonv1.AckRequest, len(batch))}
	for i, pending := range batch {
		request.Acks[i] = pending.request
	}
	var response *batonv1.AckBatchResponse
	err := a.client.retry(batch[0].ctx, settleBudget, func(ctx context.Context) (err error) {
		response, err = a.client.Queue.AckBatch(ctx, request)
		return err
	})
	// The next call goes before the answers: it need not wait for them.
	a.mu.Lock()
	a.inFlight--
	next := a.takeLocked(time.Now())
	a.mu.Unlock()
	a.start(next)

	switch {
	case err != nil && ackBatchRefusedAsAWhole(err):
		// The call as a whole was refused (one result over Baton's limit, a batch larger than
		// Baton's, a server without AckBatch): each ack is sent alone, for its own outcome.
		for _, pending := range batch {
			go func() { pending.outcome <- a.ackOne(pending) }()
		}
	case err != nil:
		// UNAVAILABLE past the budget, …: each ack failed as its single Ack would have.
		for _, pending := range batch {
			pending.outcome <- err
		}
	case len(response.GetResults()) != len(batch):
		err := &Error{Code: codes.Internal, Message: fmt.Sprintf("AckBatch answered %d results for %d acks", len(response.GetResults()), len(batch))}
		for _, pending := range batch {
			pending.outcome <- err
		}
	default:
		for i, pending := range batch {
			pending.outcome <- ackResultError(response.GetResults()[i])
		}
	}
}

func (a *ackCoalescer) ackOne(pending *pendingAck) error {
	return a.client.retry(pending.ctx, settleBudget, func(ctx context.Context) error {
		_, err := a.client.Queue.Ack(ctx, pending.request)
		return err
	})
}

// ackBatchRefusedAsAWhole: errors that say nothing about the acks one by one.
func ackBatchRefusedAsAWhole(err error) bool {
	switch codeOf(err) {
	case codes.InvalidArgument, codes.ResourceExhausted, codes.OutOfRange, codes.Unimplemented:
		return true
	}
	return false
}

// ackResultError is the error a single Ack would have returned for this outcome: nil when
// acked, else FAILED_PRECONDITION with the result's reason.
func ackResultError(result *batonv1.AckResult) error {
	if result.GetAcked() {
		return nil
	}
	message, known := ackRefusals[result.GetReason()]
	if !known {
		message = "the ack was not applied"
	}
	return &Error{Code: codes.FailedPrecondition, Reason: result.GetReason(), Message: message}
}

// ackQueuedObserver, when set (by the tests), hears every ack queued.
var ackQueuedObserver atomic.Pointer[func()]

func observeAckQueued() {
	if observer := ackQueuedObserver.Load(); observer != nil {
		(*observer)()
	}
}
