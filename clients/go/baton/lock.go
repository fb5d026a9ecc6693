package baton

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

var (
	// ErrNotAcquired: the lock stayed held by others for the whole wait.
	ErrNotAcquired = errors.New("baton: lock not acquired")
	// ErrLeaseLost: the lease is gone while it was meant to be held — Baton answered
	// LEASE_NOT_HELD (expired, released by someone holding the lease id, or taken over), or
	// no replica confirmed a renewal for a whole ttl. Another holder may have the lock now;
	// the fencing token is what protects the resource.
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
// ([ErrNotAcquired]). Each call sends one random request_id and retries Acquire with it
// on UNAVAILABLE, so a grant whose answer was lost is handed back rather than orphaned.
// ctx bounds only the acquisition; the lease lives on until Unlock or loss.
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
	giveUpAt := time.Now().Add(cfg.wait)
	retry := newBackoff()
	for {
		wait := maxServerWait
		if cfg.hasWait {
			wait = max(time.Until(giveUpAt), 0)
		}
		request.WaitTimeout = durationpb.New(wait)
		response, err := c.acquireOnce(ctx, request, wait)
		switch {
		case err == nil && response.GetAcquired():
			return c.hold(response.GetLease()), nil
		case err == nil:
			// Baton answers "not acquired" when our wait ran out or shortly before ctx's
			// deadline; only a wait cut short by its own one-hour maximum goes on.
			deadline, hasDeadline := ctx.Deadline()
			if wait < maxServerWait || (hasDeadline && time.Until(deadline) < wait) {
				return nil, fmt.Errorf("%w: %q is held by %q", ErrNotAcquired, name, response.GetHolder().GetOwner())
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

// acquireOnce bounds one Acquire by its wait plus the default timeout, so a replica that
// dies mid-wait is noticed and the call retried elsewhere.
func (c *Client) acquireOnce(ctx context.Context, request *batonv1.AcquireRequest, wait time.Duration) (*batonv1.AcquireResponse, error) {
	if _, hasDeadline := ctx.Deadline(); !hasDeadline && c.defaultTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, wait+c.defaultTimeout)
		defer cancel()
	}
	return c.Locks.Acquire(ctx, request)
}

// Lease is a held lock, kept alive by a KeepAlive stream until Unlock or loss. When a
// stream ends with UNAVAILABLE (a replica shutting down, a broken connection) it is
// resumed with the same lease id on whichever replica the balancer picks; only a
// LEASE_NOT_HELD answer, an unrecoverable error, or a whole ttl without a confirmed
// renewal counts as loss.
type Lease struct {
	client       *Client
	name         string
	leaseID      string
	fencingToken uint64
	ttl          time.Duration

	// life ends, with its cause, at loss or Unlock; Done and Context expose it.
	life       context.Context
	end        context.CancelCauseFunc
	keptAlive  chan struct{} // closed when the KeepAlive goroutine has returned
	unlocking  atomic.Bool   // from Unlock on, stream errors are expected, not loss
	unlockOnce sync.Once
	unlockErr  error

	mu        sync.Mutex
	expiresAt time.Time // by the Redis clock, as last confirmed
	// lossTimer fires a ttl after the last confirmed renewal was received: the server
	// renewed before answering, so by then the lease has certainly expired.
	lossTimer *time.Timer
}

func (c *Client) hold(granted *batonv1.Lease) *Lease {
	life, end := context.WithCancelCause(context.Background())
	lease := &Lease{
		client:       c,
		name:         granted.GetName(),
		leaseID:      granted.GetLeaseId(),
		fencingToken: granted.GetFencingToken(),
		ttl:          granted.GetTtl().AsDuration(),
		life:         life,
		end:          end,
		keptAlive:    make(chan struct{}),
		expiresAt:    granted.GetExpiresAt().AsTime(),
	}
	lease.lossTimer = time.AfterFunc(lease.ttl, func() {
		lease.lose(fmt.Errorf("%w: no renewal confirmed within the ttl (%s)", ErrLeaseLost, lease.ttl))
	})
	go lease.keepAlive()
	return lease
}

// Name is the lock's name.
func (l *Lease) Name() string { return l.name }

// LeaseID proves holdership; treat it as a secret.
func (l *Lease) LeaseID() string { return l.leaseID }

// FencingToken is greater than every token granted before for this name: pass it to the
// protected resource, which must refuse writes with a lower token than it has seen.
func (l *Lease) FencingToken() uint64 { return l.fencingToken }

// TTL is how long each renewal extends the lease.
func (l *Lease) TTL() time.Duration { return l.ttl }

// ExpiresAt is the expiry of the last confirmed renewal, by the Redis server's clock.
func (l *Lease) ExpiresAt() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.expiresAt
}

// Done is closed when the lease ends: lost, or unlocked. Err tells which.
func (l *Lease) Done() <-chan struct{} { return l.life.Done() }

// Err is nil while the lease is held, an error wrapping [ErrLeaseLost] (and the *Error
// that revealed the loss, if any) once lost, and [ErrUnlocked] after Unlock.
func (l *Lease) Err() error {
	if l.life.Err() == nil {
		return nil
	}
	return context.Cause(l.life)
}

// Context is cancelled when the lease ends; pass it to the work the lock protects.
func (l *Lease) Context() context.Context { return l.life }

// Unlock releases the lease, so a waiting Acquire gets it at once. It returns the loss if
// the lease was lost while held (the protected work may have overlapped another holder),
// and is safe to call more than once.
func (l *Lease) Unlock() error {
	l.unlockOnce.Do(func() {
		l.unlocking.Store(true)
		lostWhileHeld := l.Err()
		released, releaseErr := l.release()
		l.lossTimer.Stop()
		l.end(ErrUnlocked)
		<-l.keptAlive
		switch {
		case lostWhileHeld != nil:
			l.unlockErr = lostWhileHeld
		case releaseErr != nil:
			l.unlockErr = fmt.Errorf("baton: releasing %q (it expires by itself after its ttl): %w", l.name, releaseErr)
		case !released:
			l.unlockErr = fmt.Errorf("%w: %q was already gone when unlocked", ErrLeaseLost, l.name)
		}
	})
	return l.unlockErr
}

// release retries on UNAVAILABLE, which the API declares safe for Release.
func (l *Lease) release() (bool, error) {
	timeout := l.client.defaultTimeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	retry := newBackoff()
	for {
		response, err := l.client.Locks.Release(ctx, &batonv1.ReleaseRequest{Name: l.name, LeaseId: l.leaseID})
		if err == nil {
			return response.GetReleased(), nil
		}
		if codeOf(err) != codes.Unavailable || !retry.sleep(ctx, err) {
			return false, FromError(err)
		}
	}
}

func (l *Lease) lose(cause error) {
	if l.unlocking.Load() {
		return
	}
	l.end(cause)
}

func (l *Lease) keepAlive() {
	defer close(l.keptAlive)
	retry := newBackoff()
	for {
		err := l.followKeepAlive(retry)
		if l.life.Err() != nil {
			return
		}
		switch codeOf(err) {
		case codes.FailedPrecondition:
			l.lose(fmt.Errorf("%w: %w", ErrLeaseLost, FromError(err)))
			return
		case codes.Unavailable, codes.Unknown, codes.Internal, codes.ResourceExhausted, codes.DeadlineExceeded, codes.Canceled, codes.Aborted:
			// Resume on whichever replica the balancer picks next; the loss timer bounds
			// how long this may go on.
			if !retry.sleep(l.life, err) {
				return
			}
		default:
			// INVALID_ARGUMENT, UNAUTHENTICATED, …: no retry can keep this lease.
			l.lose(fmt.Errorf("%w: %w", ErrLeaseLost, FromError(err)))
			return
		}
	}
}

// followKeepAlive reads one KeepAlive stream until it ends, and returns why it ended.
func (l *Lease) followKeepAlive(retry *backoff) error {
	stream, err := l.client.Locks.KeepAlive(l.life, &batonv1.KeepAliveRequest{
		Name:    l.name,
		LeaseId: l.leaseID,
		Ttl:     durationpb.New(l.ttl),
	})
	if err != nil {
		return err
	}
	for {
		response, err := stream.Recv()
		if err != nil {
			return err
		}
		l.renewed(response.GetLease())
		retry.reset()
	}
}

func (l *Lease) renewed(lease *batonv1.Lease) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.expiresAt = lease.GetExpiresAt().AsTime()
	l.lossTimer.Reset(l.ttl)
}

// newRequestID is 128 random bits: one per logical Acquire, reused by its retries.
func newRequestID() string {
	var id [16]byte
	_, _ = rand.Read(id[:])
	return hex.EncodeToString(id[:])
}

// backoff is capped exponential backoff with full jitter, never shorter than the server's
// RetryInfo advice.
type backoff struct {
	next time.Duration
}

const (
	firstBackoff = 50 * time.Millisecond
	maxBackoff   = 2 * time.Second
)

func newBackoff() *backoff { return &backoff{next: firstBackoff} }

func (b *backoff) reset() { b.next = firstBackoff }

// sleep waits before the next attempt; false when ctx ended first.
func (b *backoff) sleep(ctx context.Context, cause error) bool {
	delay := time.Duration(mathrand.Int64N(int64(b.next))) + b.next/2
	var mapped *Error
	if errors.As(FromError(cause), &mapped) && mapped.RetryAfter > delay {
		delay = mapped.RetryAfter
	}
	b.next = min(b.next*2, maxBackoff)
	timer := time.NewTimer(delay)
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	}
}
