package baton

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

var (
	// ErrNotAcquired: the lock stayed held by others for the whole wait.
	ErrNotAcquired = errors.New("baton: lock not acquired")
	// ErrLeaseLost: the lease is gone, or may be, while it was meant to be held — Baton
	// answered LEASE_NOT_HELD (expired, released by someone holding the lease id, or taken
	// over), or no heartbeat was renewed in time to prove it held (see [Lease.Deadline]).
	// Another holder may have the lock now; the fencing token is what protects the resource.
	ErrLeaseLost = errors.New("baton: lease lost")
	// ErrUnlocked is [Lease.Err] after [Lease.Unlock].
	ErrUnlocked = errors.New("baton: lease unlocked")
)

// maxServerWait is the longest wait_timeout Baton accepts; longer waits are made of
// several Acquire calls.
const maxServerWait = time.Hour

type lockConfig struct {
	wait    time.Duration
	hasWait bool
	owner   string
	permits uint32
}

// LockOption tunes [Client.Lock].
type LockOption func(*lockConfig)

// WithWait gives up with [ErrNotAcquired] when the lock is still held after wait; 0 tries
// once. Without it, Lock waits for as long as its context allows.
func WithWait(wait time.Duration) LockOption {
	return func(c *lockConfig) { c.wait, c.hasWait = max(wait, 0), true }
}

// WithOwner names the caller (host, pod, task) to others who find the lock held.
func WithOwner(owner string) LockOption {
	return func(c *lockConfig) { c.owner = owner }
}

// WithPermits makes the lock a semaphore with n concurrent holders; every caller of one
// name should pass the same n.
func WithPermits(n uint32) LockOption {
	return func(c *lockConfig) { c.permits = n }
}

// Lock acquires the lock name for ttl (100 ms ..= 1 h) and keeps it until [Lease.Unlock]:
//
//	lease, err := client.Lock(ctx, "order:1234", 10*time.Second)
//	if err != nil { return err }
//	defer lease.Unlock()
//	// pass lease.FencingToken() to the resource; stop when <-lease.Done() fires
//
// It waits, woken by releases, until acquired, ctx ends, or [WithWait] runs out
// ([ErrNotAcquired]). The lease's whole life is one KeepAlive stream: its first message
// acquires, its heartbeats keep the lease, and Unlock releases on it. Each call sends one
// random request_id and retries with it on UNAVAILABLE, so a grant whose answer was lost is
// handed back rather than orphaned. Lock returns once [Lease.Deadline] is known by this
// process's clock: at once when the grant came within a tenth of the ttl of the call, else
// after the stream's first heartbeat has renewed the lease. ctx bounds only the
// acquisition; the lease lives on until Unlock or loss.
func (c *Client) Lock(ctx context.Context, name string, ttl time.Duration, options ...LockOption) (*Lease, error) {
	var cfg lockConfig
	for _, option := range options {
		option(&cfg)
	}
	request := &batonv1.AcquireRequest{
		Name:      name,
		Ttl:       durationpb.New(ttl),
		Owner:     cfg.owner,
		Permits:   cfg.permits,
		RequestId: newRequestID(),
	}
	// No grant of this request_id can be older than this.
	firstSentAt := time.Now()
	giveUpAt := firstSentAt.Add(cfg.wait)
	retry := newBackoff(callBackoff)
	for {
		wait := maxServerWait
		if cfg.hasWait {
			wait = max(time.Until(giveUpAt), 0)
		}
		request.WaitTimeout = durationpb.New(wait)
		granted, holder, err := c.acquireOnStream(ctx, request, wait)
		switch {
		case err == nil && granted != nil:
			granted.firstSentAt = firstSentAt
			return c.hold(ctx, granted)
		case err == nil:
			// Baton answers "not acquired" when our wait ran out or shortly before ctx's
			// deadline; only a wait cut short by its own one-hour maximum goes on.
			deadline, hasDeadline := ctx.Deadline()
			if wait < maxServerWait || (hasDeadline && time.Until(deadline) < wait) {
				return nil, fmt.Errorf("%w: %q is held by %q", ErrNotAcquired, name, holder.GetOwner())
			}
		case ctx.Err() != nil:
			return nil, fmt.Errorf("baton: acquiring %q: %w", name, context.Cause(ctx))
		case codeOf(err) == codes.Unavailable || codeOf(err) == codes.DeadlineExceeded:
			// Safe with the same request_id: a grant made for a lost answer comes back.
			if !retry.sleep(ctx, err) {
				return nil, fmt.Errorf("baton: acquiring %q: %w", name, context.Cause(ctx))
			}
		default:
			return nil, FromError(err)
		}
	}
}

// grantedStream is a KeepAlive stream whose opening acquire was granted, and the lease it
// keeps from then on.
type grantedStream struct {
	stream keepAliveStream
	cancel context.CancelFunc
	lease  *batonv1.Lease
	// firstSentAt is when Lock sent its first attempt: no grant of its request_id is older.
	firstSentAt time.Time
}

// acquireOnStream opens the KeepAlive stream that acquires with request: it returns the
// stream when granted, the holder when not. Until the answer, ctx's end — or, when ctx has
// no deadline, the wait plus the default timeout, so that a replica dying mid-wait is
// noticed and the call retried elsewhere — ends the stream; once granted the stream lives
// on. It waits for a ready connection: with the request_id a late attempt is harmless.
func (c *Client) acquireOnStream(ctx context.Context, request *batonv1.AcquireRequest, wait time.Duration) (*grantedStream, *batonv1.Holder, error) {
	streamCtx, cancel := context.WithCancel(withWaitForReady(context.Background()))
	unlink := context.AfterFunc(ctx, cancel)
	var (
		timedOut atomic.Bool
		limit    *time.Timer
	)
	if _, hasDeadline := ctx.Deadline(); !hasDeadline && c.defaultTimeout > 0 {
		limit = time.AfterFunc(wait+c.defaultTimeout, func() { timedOut.Store(true); cancel() })
	}
	var stream batonv1.LockService_KeepAliveClient
	response, err := func() (*batonv1.KeepAliveResponse, error) {
		var err error
		if stream, err = c.Locks.KeepAlive(streamCtx); err != nil {
			return nil, err
		}
		_ = stream.Send(&batonv1.KeepAliveRequest{Acquire: request}) // a failed send shows in Recv
		return stream.Recv()
	}()
	// Both false once they have fired: then the stream is cancelled, which gives a grant
	// back at once.
	live := unlink()
	if limit != nil && !limit.Stop() {
		live = false
	}
	switch {
	case err == nil && response.GetAcquired() && live:
		return &grantedStream{stream: lockKeepAlive{stream}, cancel: cancel, lease: response.GetLease()}, nil, nil
	case err == nil && !response.GetAcquired():
		cancel()
		return nil, response.GetHolder(), nil
	}
	cancel()
	switch {
	case timedOut.Load():
		return nil, nil, status.Error(codes.DeadlineExceeded, "baton: no answer within the wait plus the default timeout")
	case err == nil: // granted, but ctx ended meanwhile
		return nil, nil, context.Cause(ctx)
	case errors.Is(err, io.EOF):
		return nil, nil, status.Error(codes.Unavailable, "baton: the KeepAlive stream ended before answering")
	}
	return nil, nil, err
}

// Lease is a held lock, kept by a KeepAlive stream on which it proves itself alive: it
// sends a heartbeat every third of the ttl and Baton answers every heartbeat, in order,
// saying whether it renewed the lease on it. Baton never renews on its own, so a holder
// that stops — frozen, paused, cut off — loses the lease at most a ttl after its last
// renewed heartbeat.
//
// The holder's side of that proof runs on this process's monotonic clock. A heartbeat
// answered "renewed" was renewed after it was sent, so the lease is held at least until the
// heartbeat's send time plus the ttl ([Lease.HeldUntil]; answers are matched to heartbeats
// in order). An answer "not renewed" (the heartbeat came too soon after the previous
// renewal, or Redis was unreachable) proves nothing and leaves HeldUntil where it was. The
// lease is reported lost ([Lease.Done], [Lease.Err]) a safety margin before that, at
// [Lease.Deadline] — HeldUntil minus max(ttl/10, 50 ms), for clock-rate differences and
// scheduling delays — by a local timer that does not depend on the stream: a stalled
// stream, an unreachable Baton, or a process frozen and resumed (the timer then fires at
// once) all end the lease on time, while the lock may still be held by Baton until
// HeldUntil at the earliest.
//
// When a stream ends with UNAVAILABLE (a replica draining, a broken connection) it is
// reopened at once with the same lease id, on whichever replica the balancer picks, and
// then with a backoff of 50 ms growing to 250 ms until the deadline passes. LEASE_NOT_HELD,
// or an error no retry can fix, is a loss too.
type Lease struct {
	client       *Client
	fencingToken uint64
	kept         *keptLease
	unlockOnce   sync.Once
	unlockErr    error
}

// hold goes on keeping a lease on the stream that acquired it and returns once its
// deadline is known, or fails if the lease could not be kept.
func (c *Client) hold(ctx context.Context, granted *grantedStream) (*Lease, error) {
	open := func(ctx context.Context) (keepAliveStream, error) {
		stream, err := c.Locks.KeepAlive(ctx)
		return lockKeepAlive{stream}, err
	}
	lease := &Lease{
		client:       c,
		fencingToken: granted.lease.GetFencingToken(),
		kept:         keepLease(granted.lease, time.Now(), ErrLeaseLost, open, granted),
	}
	lost, cancelled := lease.kept.awaitConfirmation(ctx)
	if lost == nil && cancelled == nil {
		return lease, nil
	}
	go lease.Unlock() // its Release may retry for seconds; the caller learns of the failure now
	if lost != nil {
		return nil, fmt.Errorf("baton: %q was acquired but could not be kept: %w", lease.Name(), lost)
	}
	return nil, fmt.Errorf("baton: acquiring %q: %w", lease.Name(), cancelled)
}

// Name is the lock's name.
func (l *Lease) Name() string { return l.kept.name }

// LeaseID proves holdership; treat it as a secret.
func (l *Lease) LeaseID() string { return l.kept.leaseID }

// FencingToken is greater than every token granted before for this name: pass it to the
// protected resource, which must refuse writes with a lower token than it has seen.
func (l *Lease) FencingToken() uint64 { return l.fencingToken }

// TTL is how long each renewal extends the lease.
func (l *Lease) TTL() time.Duration { return l.kept.ttl }

// ExpiresAt is the expiry of the last answered renewal, by the Redis server's clock.
func (l *Lease) ExpiresAt() time.Time { return l.kept.ExpiresAt() }

// HeldUntil is, by this process's clock, the send time of the latest heartbeat Baton
// renewed the lease on, plus the ttl: the lease is held at least until then. Heartbeats
// answered "not renewed" do not move it.
func (l *Lease) HeldUntil() time.Time { return l.kept.HeldUntil() }

// Deadline is when the lease will be reported lost unless a heartbeat is renewed before:
// [Lease.HeldUntil] minus a safety margin of max(ttl/10, 50 ms). It moves forward with each
// renewed heartbeat, about every third of the ttl.
func (l *Lease) Deadline() time.Time { return l.kept.Deadline() }

// Done is closed when the lease ends: lost, or unlocked. Err tells which.
func (l *Lease) Done() <-chan struct{} { return l.kept.life.Done() }

// Err is nil while the lease is held, an error wrapping [ErrLeaseLost] (and the *Error
// that revealed the loss, if any) once lost, and [ErrUnlocked] after Unlock.
func (l *Lease) Err() error { return l.kept.Err() }

// Context is cancelled when the lease ends; pass it to the work the lock protects.
func (l *Lease) Context() context.Context { return l.kept.life }

// Unlock releases the lease, so a waiting Acquire gets it at once: it asks Baton to release
// it on the lease's KeepAlive stream — or, when that stream is down or does not answer,
// calls Release (retried through a 5 s outage) — and ends the stream. It returns the loss
// if the lease was lost while held (the protected work may have overlapped another holder),
// and is safe to call more than once.
func (l *Lease) Unlock() error {
	l.unlockOnce.Do(func() {
		var (
			released, retried bool
			releaseErr        error
		)
		lostWhileHeld := l.kept.stop(func() { released, retried, releaseErr = l.release() }, ErrUnlocked)
		switch {
		case lostWhileHeld != nil:
			l.unlockErr = lostWhileHeld
		case releaseErr != nil:
			l.unlockErr = fmt.Errorf("baton: releasing %q (it expires by itself after its ttl): %w", l.Name(), releaseErr)
		case !released && !retried:
			// After a retry, "not released" may only mean that a lost attempt released it.
			l.unlockErr = fmt.Errorf("%w: %q was already gone when unlocked", ErrLeaseLost, l.Name())
		}
	})
	return l.unlockErr
}

// release releases on the KeepAlive stream, or else calls Release with the settle budget,
// which the API declares safe to retry; it also tells whether more than one attempt was
// made.
func (l *Lease) release() (released, retried bool, err error) {
	released, answered, sent := l.kept.releaseOnStream()
	if answered {
		return released, false, nil
	}
	attempts := 0
	if sent {
		attempts = 1 // it may have released before the stream broke
	}
	err = l.client.retry(context.Background(), settleBudget, func(ctx context.Context) error {
		attempts++
		response, err := l.client.Locks.Release(ctx, &batonv1.ReleaseRequest{Name: l.Name(), LeaseId: l.LeaseID()})
		released = response.GetReleased()
		return err
	})
	return released, attempts > 1, err
}

// lockKeepAlive is a LockService KeepAlive stream.
type lockKeepAlive struct {
	stream batonv1.LockService_KeepAliveClient
}

func (s lockKeepAlive) open(name, leaseID string, ttl time.Duration) error {
	return s.stream.Send(&batonv1.KeepAliveRequest{Name: name, LeaseId: leaseID, Ttl: durationpb.New(ttl)})
}

func (s lockKeepAlive) heartbeat() error { return s.stream.Send(&batonv1.KeepAliveRequest{}) }

func (s lockKeepAlive) release() error {
	return s.stream.Send(&batonv1.KeepAliveRequest{Release: true})
}

func (s lockKeepAlive) recv() (keepAliveAnswer, error) {
	response, err := s.stream.Recv()
	return keepAliveAnswer{renewed: response.GetRenewed(), released: response.GetReleased(), lease: response.GetLease()}, err
}

// keepAliveStream is one KeepAlive stream of LockService or ElectionService, whose messages
// differ only in their types.
type keepAliveStream interface {
	// open sends the first message, which names the lease.
	open(name, leaseID string, ttl time.Duration) error
	heartbeat() error
	// release asks Baton to release the lease and end the stream; errStreamCannotRelease
	// where the service has no such message.
	release() error
	recv() (keepAliveAnswer, error)
}

// keepAliveAnswer is one answer on a KeepAlive stream.
type keepAliveAnswer struct {
	renewed  bool // whether the message renewed the lease
	released bool // the answer to release: whether it released the lease
	lease    *batonv1.Lease
}

var errStreamCannotRelease = errors.New("baton: this KeepAlive stream cannot release its lease")

// streamReleaseWait is how long Unlock waits for the stream to answer its release before
// calling Release instead.
const streamReleaseWait = 2 * time.Second

// keptLease is a lease kept alive by heartbeats on KeepAlive streams: a lock's ([Lease]) or
// a leadership's ([Leadership]), which Baton keeps by one contract, described at [Lease].
// It owns the streams, reopening them on another replica when one goes away, and the loss
// timer, which ends the lease a safety margin before its proof of liveness runs out.
type keptLease struct {
	name    string
	leaseID string
	ttl     time.Duration
	// margin is how long before HeldUntil the lease is reported lost.
	margin time.Duration
	// lossSentinel is what every loss wraps: ErrLeaseLost, or ErrLeadershipLost.
	lossSentinel error
	// openKeepAlive opens a KeepAlive stream of the lease's service under ctx.
	openKeepAlive func(ctx context.Context) (keepAliveStream, error)
	// granted is the stream that acquired the lease, followed first; nil once taken, or
	// when the lease was granted by a call of its own.
	granted *grantedStream
	// releaseAnswer carries the answer to a release sent on the stream.
	releaseAnswer chan bool

	// life ends, with its cause, at loss or stop; every KeepAlive stream is opened under
	// it, so ending it also ends the stream — which makes Baton give the lease up at once
	// if it still holds it.
	life      context.Context
	end       context.CancelCauseFunc
	keptAlive chan struct{} // closed when the KeepAlive goroutine has returned
	confirmed chan struct{} // closed at the first answered KeepAlive message
	stopping  atomic.Bool   // from stop on, stream errors are expected, not loss

	mu sync.Mutex
	// current is the stream being followed; nil between streams.
	current   *followedStream
	expiresAt time.Time // by the Redis clock, as last answered
	// heldUntil is, on this process's monotonic clock, the send time of the latest KeepAlive
	// message answered "renewed" plus the ttl: the lease is certainly held until then.
	heldUntil time.Time
	// deadline is when the lease is reported lost unless an answer moves it: heldUntil minus
	// the margin once the stream has answered; before that, a ttl after the grant was
	// answered, when the lease has certainly expired unless renewed.
	deadline  time.Time
	lossTimer *time.Timer // fires at deadline; independent of every stream
}

// leaseMargin is how long before HeldUntil a lease is reported lost: a tenth of the ttl
// (clocks may run at slightly different rates, and the process acting on Done needs time
// to stop), at least 50 ms (scheduling delays do not shrink with the ttl).
func leaseMargin(ttl time.Duration) time.Duration {
	return max(ttl/10, 50*time.Millisecond)
}

// keepLease starts keeping granted alive, with streams from openKeepAlive, until it is
// lost (every loss wrapping lossSentinel) or stopped. grantAnsweredAt is when the call
// that granted it answered; on is the stream that acquired it, if it was.
func keepLease(granted *batonv1.Lease, grantAnsweredAt time.Time, lossSentinel error, openKeepAlive func(context.Context) (keepAliveStream, error), on *grantedStream) *keptLease {
	life, end := context.WithCancelCause(context.Background())
	ttl := granted.GetTtl().AsDuration()
	kept := &keptLease{
		name:          granted.GetName(),
		leaseID:       granted.GetLeaseId(),
		ttl:           ttl,
		margin:        leaseMargin(ttl),
		lossSentinel:  lossSentinel,
		openKeepAlive: openKeepAlive,
		granted:       on,
		releaseAnswer: make(chan bool, 1),
		life:          life,
		end:           end,
		keptAlive:     make(chan struct{}),
		confirmed:     make(chan struct{}),
		expiresAt:     granted.GetExpiresAt().AsTime(),
		// The grant may have waited, so when Baton made it is unknown: a ttl after its
		// answer the lease has expired for sure, and the first answer of the stream dates it.
		deadline: grantAnsweredAt.Add(ttl),
	}
	kept.lossTimer = time.AfterFunc(time.Until(kept.deadline), kept.checkDeadline)
	if on != nil {
		// Followed from now on, so that an Unlock right after Lock can release on it.
		kept.current = newFollowedStream(on.stream)
	}
	if on != nil && grantAnsweredAt.Sub(on.firstSentAt) < ttl/10 {
		// Granted soon after the first attempt was sent: that dates the lease well enough,
		// and no heartbeat need wait for it.
		kept.renewed(on.firstSentAt, granted)
	}
	go kept.keepAlive()
	return kept
}

// releaseOnStream asks Baton to release the lease on the stream being followed. sent tells
// whether the request may have gone out; answered, whether Baton said if it released.
func (k *keptLease) releaseOnStream() (released, answered, sent bool) {
	k.mu.Lock()
	current := k.current
	k.mu.Unlock()
	if current == nil {
		return false, false, false
	}
	if err := current.send(true, current.stream.release); errors.Is(err, errStreamCannotRelease) {
		return false, false, false
	}
	timeout := time.NewTimer(streamReleaseWait)
	defer timeout.Stop()
	select {
	case released = <-k.releaseAnswer:
		return released, true, true
	case <-current.ended:
		select {
		case released = <-k.releaseAnswer:
			return released, true, true
		default:
			return false, false, true
		}
	case <-timeout.C:
		return false, false, true
	}
}

// awaitConfirmation waits until the KeepAlive stream has answered, so that the deadline is
// known from the start. It fails with the loss, or with ctx's cause when ctx ends first;
// either way the holder must still stop the lease.
func (k *keptLease) awaitConfirmation(ctx context.Context) (lost, cancelled error) {
	select {
	case <-k.confirmed:
		return nil, nil
	case <-k.life.Done():
		return k.Err(), nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

// ExpiresAt, HeldUntil and Deadline are what [Lease] documents under the same names.
func (k *keptLease) ExpiresAt() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.expiresAt
}

func (k *keptLease) HeldUntil() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.heldUntil
}

func (k *keptLease) Deadline() time.Time {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.deadline
}

// Err is nil while the lease is held, else why it ended.
func (k *keptLease) Err() error {
	if k.life.Err() == nil {
		return nil
	}
	return context.Cause(k.life)
}

// stop ends a lease its holder is done with. giveBack (Release, Resign) runs while the
// stream is still open: ending the stream first would already give the lease up and make
// giveBack answer "not held". The stream then ends with cause, unless the lease was lost
// while held: stop returns that loss (the holder's work may have overlapped another's).
func (k *keptLease) stop(giveBack func(), cause error) (lostWhileHeld error) {
	k.stopping.Store(true)
	lostWhileHeld = k.Err()
	if lostWhileHeld == nil && k.pastDeadline() {
		lostWhileHeld = fmt.Errorf("%w: no heartbeat renewed in time (deadline %s)", k.lossSentinel, k.Deadline().Format(time.RFC3339Nano))
	}
	giveBack()
	k.lossTimer.Stop()
	if lostWhileHeld != nil {
		k.end(lostWhileHeld) // a no-op when the loss had already ended it
	} else {
		k.end(cause)
	}
	<-k.keptAlive
	return lostWhileHeld
}

func (k *keptLease) lose(cause error) {
	if k.stopping.Load() {
		return
	}
	k.end(cause)
}

func (k *keptLease) pastDeadline() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return !time.Now().Before(k.deadline)
}

// checkDeadline runs on the loss timer: the lease is lost if its deadline has passed, else
// the timer is set again for the deadline an answer has moved it to meanwhile.
func (k *keptLease) checkDeadline() {
	k.mu.Lock()
	now := time.Now()
	if now.Before(k.deadline) {
		k.lossTimer.Reset(k.deadline.Sub(now))
		k.mu.Unlock()
		return
	}
	answered := !k.heldUntil.IsZero()
	k.mu.Unlock()
	if answered {
		k.lose(fmt.Errorf("%w: no heartbeat renewed in time: held until %s at least, reported lost %s before",
			k.lossSentinel, k.HeldUntil().Format(time.RFC3339Nano), k.margin))
	} else {
		k.lose(fmt.Errorf("%w: no KeepAlive stream answered within the ttl (%s) of the grant", k.lossSentinel, k.ttl))
	}
}

// renewed records a "renewed" answer to a KeepAlive message sent at sentAt. An answer
// processed after the deadline does not revive the lease: its loss may already have been
// acted upon (and the process may just have been frozen past it).
func (k *keptLease) renewed(sentAt time.Time, lease *batonv1.Lease) {
	k.mu.Lock()
	now := time.Now()
	if !now.Before(k.deadline) {
		k.mu.Unlock()
		k.checkDeadline()
		return
	}
	first := k.heldUntil.IsZero()
	if heldUntil := sentAt.Add(k.ttl); heldUntil.After(k.heldUntil) {
		k.heldUntil = heldUntil
		k.deadline = heldUntil.Add(-k.margin)
		k.expiresAt = lease.GetExpiresAt().AsTime()
		k.lossTimer.Reset(k.deadline.Sub(now))
	}
	k.mu.Unlock()
	if first {
		close(k.confirmed)
	}
}

func (k *keptLease) keepAlive() {
	defer close(k.keptAlive)
	retry := newBackoff(streamBackoff)
	var brokenAt time.Time
	for {
		answered, err := k.followKeepAlive(brokenAt)
		if k.life.Err() != nil || k.stopping.Load() {
			return
		}
		if answered || brokenAt.IsZero() {
			brokenAt = time.Now() // the gap is measured from the end of the last stream that worked
		}
		if answered {
			retry.reset()
		}
		switch {
		case codeOf(err) == codes.FailedPrecondition:
			k.lose(fmt.Errorf("%w: %w", k.lossSentinel, FromError(err)))
			return
		case retryableStreamEnd(err):
			// Reopen at once after a stream that worked (a replica draining ends its streams
			// UNAVAILABLE and keeps the lease), then back off; the deadline ends the attempts.
			if !answered && !retry.sleep(k.life, err) {
				return
			}
		default:
			// INVALID_ARGUMENT, UNAUTHENTICATED, …: no retry can keep this lease.
			k.lose(fmt.Errorf("%w: %w", k.lossSentinel, FromError(err)))
			return
		}
	}
}

// retryableStreamEnd tells whether reopening a KeepAlive, Consume or Observe stream that
// ended with err may succeed: the replica drained or went away, or the connection broke.
func retryableStreamEnd(err error) bool {
	switch codeOf(err) {
	case codes.OK, codes.Unavailable, codes.Unknown, codes.Internal, codes.ResourceExhausted,
		codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
		return true
	default:
		return false
	}
}

// followKeepAlive runs one KeepAlive stream: the first message names the lease, then a
// heartbeat goes out every third of the ttl. It returns why the stream ended, and whether
// anything on it was answered.
func (k *keptLease) followKeepAlive(brokenAt time.Time) (answered bool, err error) {
	stream, closeStream, granted, err := k.nextStream()
	if err != nil {
		return false, err
	}
	defer closeStream()
	var anyAnswer atomic.Bool
	k.mu.Lock()
	if !granted {
		k.current = newFollowedStream(stream)
	}
	followed := k.current
	k.mu.Unlock()
	defer func() {
		k.mu.Lock()
		k.current = nil
		k.mu.Unlock()
	}()
	if granted {
		// The grant was this stream's first answer. Unless that dated the lease, the first
		// heartbeat does, at once: Baton renews on it however soon it comes.
		anyAnswer.Store(true)
		select {
		case <-k.confirmed:
		default:
			_ = followed.send(false, stream.heartbeat)
		}
	} else {
		_ = followed.send(false, func() error { return stream.open(k.name, k.leaseID, k.ttl) })
	}
	ended := make(chan error, 1)
	go func() {
		defer close(followed.ended)
		for {
			answer, err := stream.recv()
			if err != nil {
				if err == io.EOF {
					err = nil
				}
				ended <- err
				return
			}
			sent, ok := followed.answered()
			if !ok {
				continue // an answer to nothing sent cannot be dated
			}
			if sent.release {
				k.releaseAnswer <- answer.released // buffered; one release per lease
				continue
			}
			if !anyAnswer.Swap(true) && !brokenAt.IsZero() {
				observeReconnect("keepalive", time.Since(brokenAt))
			}
			observeKeepAliveAnswer(answer.renewed)
			if answer.renewed {
				k.renewed(sent.at, answer.lease)
			}
			// Not renewed: the heartbeat proves nothing, and HeldUntil stays where it was.
		}
	}()
	heartbeats := time.NewTicker(k.ttl / 3)
	defer heartbeats.Stop()
	for {
		select {
		case err := <-ended:
			return anyAnswer.Load(), err
		case <-heartbeats.C:
			_ = followed.send(false, stream.heartbeat)
		}
	}
}

// followedStream is a KeepAlive stream and its messages not answered yet, oldest first:
// Baton answers every one, in order, so each answer belongs to the oldest.
type followedStream struct {
	stream keepAliveStream
	ended  chan struct{} // closed when its answers end
	// sending serialises sends, which gRPC allows from one goroutine at a time: heartbeats
	// come from the follower, a release from Unlock.
	sending sync.Mutex
	mu      sync.Mutex
	pending []sentMessage
}

type sentMessage struct {
	at      time.Time
	release bool
}

func newFollowedStream(stream keepAliveStream) *followedStream {
	return &followedStream{stream: stream, ended: make(chan struct{})}
}

// send records a message, then sends it; a failed send means the stream has ended, and
// its recv reports why.
func (f *followedStream) send(release bool, message func() error) error {
	f.sending.Lock()
	defer f.sending.Unlock()
	f.mu.Lock()
	f.pending = append(f.pending, sentMessage{time.Now(), release}) // before sending: the answer may come at once
	f.mu.Unlock()
	return message()
}

// answered takes the message the next answer belongs to.
func (f *followedStream) answered() (sentMessage, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.pending) == 0 {
		return sentMessage{}, false
	}
	sent := f.pending[0]
	f.pending = f.pending[1:]
	return sent, true
}

// nextStream is the stream that acquired the lease, the first time, and then a new one
// under the lease's life. granted tells which.
func (k *keptLease) nextStream() (stream keepAliveStream, closeStream func(), granted bool, err error) {
	if on := k.granted; on != nil {
		k.granted = nil
		// Opened before the lease's life began: ending the life must end it too.
		unlink := context.AfterFunc(k.life, on.cancel)
		return on.stream, func() { unlink(); on.cancel() }, true, nil
	}
	streamCtx, cancel := context.WithCancel(withWaitForReady(k.life))
	if stream, err = k.openKeepAlive(streamCtx); err != nil {
		cancel()
		return nil, nil, false, err
	}
	return stream, cancel, false, nil
}

// newRequestID is 128 random bits: one per logical Acquire or Campaign, reused by its
// retries.
func newRequestID() string {
	var id [16]byte
	_, _ = rand.Read(id[:])
	return hex.EncodeToString(id[:])
}
