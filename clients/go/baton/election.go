package baton

import (
	"context"
	"errors"
	"fmt"
	"io"
	"iter"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// ErrLeadershipLost: the leadership is gone, or may be, while [Client.RunAsLeader]'s work
// ran — Baton answered LEASE_NOT_HELD (it expired, or someone holding the lease id resigned
// it), or no heartbeat was renewed in time to prove it held (see [Leadership]). Another
// candidate may lead now; the term is what protects the resource.
var ErrLeadershipLost = errors.New("baton: leadership lost")

// errResigned ends a leadership whose work has returned; [Leadership.Proclaim] returns it
// when called after RunAsLeader.
var errResigned = errors.New("baton: leadership resigned")

// DefaultLeadershipTTL is how long a leadership lasts unless renewed, without
// [WithLeadershipTTL].
const DefaultLeadershipTTL = 10 * time.Second

type electionConfig struct {
	ttl   time.Duration
	owner string
}

// ElectionOption tunes [Client.RunAsLeader].
type ElectionOption func(*electionConfig)

// WithLeadershipTTL sets how long the leadership lasts unless renewed (100 ms ..= 1 h,
// default 10 s): a leader that stops — frozen, paused, cut off — is replaced at most this
// long after its last renewed heartbeat. Heartbeats go out every third of it.
func WithLeadershipTTL(ttl time.Duration) ElectionOption {
	return func(c *electionConfig) { c.ttl = ttl }
}

// WithLeadershipOwner names the candidate (host, pod) to those who see it lead
// ([Leader.Owner]).
func WithLeadershipOwner(owner string) ElectionOption {
	return func(c *electionConfig) { c.owner = owner }
}

// Leader is an election's current leadership, as anyone may see it.
type Leader struct {
	Name string
	// Value is the leader's value, as given to RunAsLeader or last proclaimed.
	Value []byte
	// Term is the leadership's fencing token: greater than every term before it for this
	// name, across resignations, expiries and restarts.
	Term uint64
	// Owner is the leader's [WithLeadershipOwner].
	Owner string
	// Since is when this term began, by the Redis server's clock.
	Since time.Time
	// ExpiresAt is when the leadership expires unless renewed, by the Redis server's clock.
	ExpiresAt time.Time
}

func leaderOf(leader *batonv1.Leader) *Leader {
	if leader == nil {
		return nil
	}
	return &Leader{
		Name:      leader.GetName(),
		Value:     leader.GetValue(),
		Term:      leader.GetTerm(),
		Owner:     leader.GetOwner(),
		Since:     leader.GetSince().AsTime(),
		ExpiresAt: leader.GetExpiresAt().AsTime(),
	}
}

// Leadership is the caller's leadership of an election while [Client.RunAsLeader] runs its
// work. Baton keeps it exactly as it keeps a [Lease] (see there): heartbeats on a KeepAlive
// stream every third of the ttl, the stream reopened on another replica when one goes away,
// and the leadership reported lost — the work's context cancelled with a cause wrapping
// [ErrLeadershipLost] — by a local timer a safety margin of max(ttl/10, 50 ms) before the
// send time of the last renewed heartbeat plus the ttl, or at once when Baton answers
// LEASE_NOT_HELD. A leader that is frozen or cut off thus learns that it no longer leads
// before Baton can elect another; protect what it writes with [Leadership.Term] anyway.
type Leadership struct {
	client *Client
	term   uint64
	kept   *keptLease
}

// Name is the election's name.
func (l *Leadership) Name() string { return l.kept.name }

// Term is the leadership's fencing token, greater than every term before it for this name:
// pass it to the resources the leader writes to, which must refuse writes with a lower term
// than they have seen.
func (l *Leadership) Term() uint64 { return l.term }

// LeaseID proves the leadership to the raw stub ([Client.Elections]); treat it as a secret.
func (l *Leadership) LeaseID() string { return l.kept.leaseID }

// Proclaim replaces the leader's value without giving up leadership; observers see it as
// [LeaderProclaimed]. Retried on UNAVAILABLE. Once the leadership is lost (or its work has
// returned) it fails with that loss and proclaims nothing: Baton may still count the lease
// as leading for a moment, but this process has stopped acting as the leader.
func (l *Leadership) Proclaim(ctx context.Context, value []byte) error {
	if err := l.kept.Err(); err != nil {
		return err
	}
	err := l.client.retryUnavailable(ctx, func(ctx context.Context) error {
		_, err := l.client.Elections.Proclaim(ctx, &batonv1.ProclaimRequest{Name: l.Name(), LeaseId: l.LeaseID(), Value: value})
		return err
	})
	if errors.Is(err, ErrLeaseNotHeld) {
		// The KeepAlive stream would learn it at the next heartbeat; the work stops now.
		l.kept.lose(fmt.Errorf("%w: %w", ErrLeadershipLost, err))
		return l.kept.Err()
	}
	return err
}

// RunAsLeader campaigns to lead the election name with value, runs fn once elected, and
// resigns when fn returns, so that the next candidate leads at once:
//
//	err := client.RunAsLeader(ctx, "scheduler", []byte(podIP), func(ctx context.Context, leadership *baton.Leadership) error {
//		return schedule(ctx, leadership.Term()) // until ctx ends: leadership lost, or the caller's ctx done
//	})
//
// The campaign waits without polling, woken when the leader resigns or expires, for as
// long as ctx allows. It sends one random request_id and retries Campaign with it on
// UNAVAILABLE, so a leadership whose answer was lost is handed back rather than left to
// expire with nobody working. fn runs once the leadership's KeepAlive stream has answered,
// with a context cancelled when ctx ends and, with a cause wrapping [ErrLeadershipLost],
// when the leadership is lost or may be (see [Leadership]): fn must then stop acting as the
// leader and return. Among every caller of RunAsLeader on name, in every process, one at a
// time runs its fn, as far as the safety margin covers clock-rate differences and pauses
// (the term covers the rest). A panic in fn resigns too, then goes on.
//
// RunAsLeader returns fn's error; an error wrapping ErrLeadershipLost (and fn's error, if
// any) when the leadership was lost while fn ran; or why the campaign failed (ctx's cause
// when ctx ended first). It does not campaign again: call it in a loop to stay a candidate.
func (c *Client) RunAsLeader(ctx context.Context, name string, value []byte, fn func(ctx context.Context, leadership *Leadership) error, options ...ElectionOption) (err error) {
	cfg := electionConfig{ttl: DefaultLeadershipTTL}
	for _, option := range options {
		option(&cfg)
	}
	leadership, err := c.campaign(ctx, &batonv1.CampaignRequest{
		Name:      name,
		Ttl:       durationpb.New(cfg.ttl),
		Value:     value,
		Owner:     cfg.owner,
		RequestId: newRequestID(),
		// Zero waits until elected, for at most an hour or until ctx's deadline.
		WaitTimeout: durationpb.New(0),
	})
	if err != nil {
		return err
	}
	work, endWork := context.WithCancelCause(ctx)
	stopPropagatingLoss := context.AfterFunc(leadership.kept.life, func() { endWork(leadership.kept.Err()) })
	defer func() {
		stopPropagatingLoss()
		endWork(errResigned)
		err = leadership.resign(err)
	}()
	return fn(work, leadership)
}

// campaign waits until elected, retrying Campaign with the request's request_id on
// UNAVAILABLE, and returns once the leadership's KeepAlive stream has answered.
func (c *Client) campaign(ctx context.Context, request *batonv1.CampaignRequest) (*Leadership, error) {
	retry := newBackoff(callBackoff)
	for {
		response, err := c.campaignOnce(ctx, request)
		switch {
		case err == nil && response.GetElected():
			return c.lead(ctx, response.GetLease(), time.Now())
		case err == nil:
			// Baton ends a wait after its one-hour maximum, which goes on, or shortly before
			// ctx's deadline, which does not.
			if deadline, hasDeadline := ctx.Deadline(); hasDeadline && time.Until(deadline) < maxServerWait {
				return nil, fmt.Errorf("baton: campaigning for %q: not elected before the deadline: %w", request.GetName(), context.DeadlineExceeded)
			}
		case ctx.Err() != nil:
			return nil, fmt.Errorf("baton: campaigning for %q: %w", request.GetName(), context.Cause(ctx))
		case codeOf(err) == codes.Unavailable || codeOf(err) == codes.DeadlineExceeded:
			// Safe with the same request_id: a leadership won for a lost answer comes back.
			if !retry.sleep(ctx, err) {
				return nil, fmt.Errorf("baton: campaigning for %q: %w", request.GetName(), context.Cause(ctx))
			}
		default:
			return nil, FromError(err)
		}
	}
}

// campaignOnce bounds one Campaign by Baton's longest wait plus the default timeout when ctx
// has no deadline (rather than by the default timeout alone), so that a replica that dies
// mid-wait is noticed and the call retried elsewhere. It waits for a ready connection: with
// the request_id a late attempt is harmless.
func (c *Client) campaignOnce(ctx context.Context, request *batonv1.CampaignRequest) (*batonv1.CampaignResponse, error) {
	if _, hasDeadline := ctx.Deadline(); !hasDeadline && c.defaultTimeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, maxServerWait+c.defaultTimeout)
		defer cancel()
	}
	return c.Elections.Campaign(withWaitForReady(ctx), request)
}

// lead starts keeping a won leadership alive and returns once its KeepAlive stream has
// answered, or fails (resigning in the background) if it could not be kept.
func (c *Client) lead(ctx context.Context, granted *batonv1.Lease, electedAt time.Time) (*Leadership, error) {
	leadership := &Leadership{
		client: c,
		term:   granted.GetFencingToken(),
		kept: keepLease(granted, electedAt, ErrLeadershipLost, func(ctx context.Context) (keepAliveStream, error) {
			stream, err := c.Elections.KeepAlive(ctx)
			return electionKeepAlive{stream}, err
		}, nil),
	}
	lost, cancelled := leadership.kept.awaitConfirmation(ctx)
	if lost == nil && cancelled == nil {
		return leadership, nil
	}
	go leadership.resign(nil) // Resign may retry for seconds; the caller learns of the failure now
	if lost != nil {
		return nil, fmt.Errorf("baton: %q was won but could not be kept: %w", leadership.Name(), lost)
	}
	return nil, fmt.Errorf("baton: campaigning for %q: %w", leadership.Name(), cancelled)
}

// resign gives the leadership up once its work has returned workErr: it calls Resign
// (retried through a 5 s outage) and ends the KeepAlive stream, which Baton also takes as a
// resignation. It returns what RunAsLeader returns.
func (l *Leadership) resign(workErr error) error {
	var (
		resigned, retried bool
		resignErr         error
	)
	lost := l.kept.stop(func() { resigned, retried, resignErr = l.resignOnce() }, errResigned)
	if lost == nil && resignErr == nil && !resigned && !retried {
		// After a retry, "not resigned" may only mean that a lost attempt resigned it.
		lost = fmt.Errorf("%w: %q was already gone when resigned", ErrLeadershipLost, l.Name())
	}
	switch {
	case lost != nil && workErr != nil && !errors.Is(workErr, ErrLeadershipLost):
		return fmt.Errorf("%w (and the work returned: %w)", lost, workErr)
	case lost != nil:
		return lost
	case workErr != nil:
		return workErr
	case resignErr != nil:
		return fmt.Errorf("baton: resigning %q (it expires by itself after its ttl): %w", l.Name(), resignErr)
	}
	return nil
}

// resignOnce calls Resign with the settle budget, which the API declares safe to retry; it
// also tells whether more than one attempt was made.
func (l *Leadership) resignOnce() (resigned, retried bool, err error) {
	attempts := 0
	err = l.client.retry(context.Background(), settleBudget, func(ctx context.Context) error {
		attempts++
		response, err := l.client.Elections.Resign(ctx, &batonv1.ResignRequest{Name: l.Name(), LeaseId: l.LeaseID()})
		resigned = response.GetResigned()
		return err
	})
	return resigned, attempts > 1, err
}

// electionKeepAlive is an ElectionService KeepAlive stream.
type electionKeepAlive struct {
	stream batonv1.ElectionService_KeepAliveClient
}

func (s electionKeepAlive) open(name, leaseID string, ttl time.Duration) error {
	return s.stream.Send(&batonv1.ElectionServiceKeepAliveRequest{Name: name, LeaseId: leaseID, Ttl: durationpb.New(ttl)})
}

func (s electionKeepAlive) heartbeat() error {
	return s.stream.Send(&batonv1.ElectionServiceKeepAliveRequest{})
}

// release: a leadership is given up by Resign.
func (electionKeepAlive) release() error { return errStreamCannotRelease }

func (s electionKeepAlive) recv() (keepAliveAnswer, error) {
	response, err := s.stream.Recv()
	return keepAliveAnswer{renewed: response.GetRenewed(), lease: response.GetLease()}, err
}

// Leader returns who leads the election name now, or nil when nobody does. Retried on
// UNAVAILABLE.
func (c *Client) Leader(ctx context.Context, name string) (*Leader, error) {
	var response *batonv1.LeaderResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Elections.Leader(ctx, &batonv1.LeaderRequest{Name: name})
		return err
	})
	if err != nil {
		return nil, err
	}
	return leaderOf(response.GetLeader()), nil
}

// ElectionEventKind tells what an [ElectionEvent] reports; see proto/baton/v1/election.proto.
type ElectionEventKind = batonv1.ObserveResponse_Kind

const (
	// LeaderCurrent is the election's state when observing starts, and again when it
	// resumes after a reconnection or after the observer fell behind (the changes in between
	// are not replayed): Leader is the current leadership, nil when nobody leads.
	LeaderCurrent = batonv1.ObserveResponse_KIND_CURRENT
	// LeaderElected is a new leader, with a term above every earlier one.
	LeaderElected = batonv1.ObserveResponse_KIND_ELECTED
	// LeaderProclaimed is a new value of the same leader; the term is unchanged.
	LeaderProclaimed = batonv1.ObserveResponse_KIND_PROCLAIMED
	// LeaderResigned is the end of a leadership given up (or whose KeepAlive stream went
	// away); nobody leads. Leader is the leadership that ended.
	LeaderResigned = batonv1.ObserveResponse_KIND_RESIGNED
	// LeaderExpired is the end of a leadership that was not renewed in time; nobody leads.
	// Leader is the leadership that ended.
	LeaderExpired = batonv1.ObserveResponse_KIND_EXPIRED
)

// ElectionEvent is one change in an election's history, or its current state.
type ElectionEvent struct {
	Kind ElectionEventKind
	// Leader is the leadership after the change, or the one that ended for LeaderResigned
	// and LeaderExpired; nil for a LeaderCurrent while nobody leads.
	Leader *Leader
	// At is when it happened, by the Redis server's clock.
	At time.Time
}

// Observe streams the history of the election name, in the order it happened (the same on
// every replica): first its current state ([LeaderCurrent]), then every change as it
// happens.
//
//	for event, err := range client.Observe(ctx, "scheduler") {
//		if err != nil {
//			return err
//		}
//		route(event.Leader) // nil while nobody leads
//	}
//
// When the stream ends with UNAVAILABLE (a replica draining, a broken connection) it is
// reopened at once on whichever replica the balancer picks, then with a backoff of 50 ms
// growing to 250 ms; the reopened stream starts with LeaderCurrent, so the changes missed
// in between are summed up rather than replayed. The iteration ends when ctx ends, without
// an error, or after yielding an error no retry can fix (INVALID_ARGUMENT,
// UNAUTHENTICATED, …).
func (c *Client) Observe(ctx context.Context, name string) iter.Seq2[ElectionEvent, error] {
	return func(yield func(ElectionEvent, error) bool) {
		retry := newBackoff(streamBackoff)
		var brokenAt time.Time
		for {
			delivered, stopped, err := c.followObserve(ctx, name, brokenAt, yield)
			if stopped || ctx.Err() != nil {
				return
			}
			if delivered || brokenAt.IsZero() {
				brokenAt = time.Now() // the gap is measured from the end of the last stream that worked
			}
			if delivered {
				retry.reset()
			}
			if !retryableStreamEnd(err) {
				yield(ElectionEvent{}, FromError(err))
				return
			}
			// Reopen at once after a stream that worked, then back off.
			if !delivered && !retry.sleep(ctx, err) {
				return
			}
		}
	}
}

// followObserve yields the events of one Observe stream until it ends (err tells why) or
// the consumer stops the iteration (stopped); delivered tells whether it yielded any.
func (c *Client) followObserve(ctx context.Context, name string, brokenAt time.Time, yield func(ElectionEvent, error) bool) (delivered, stopped bool, err error) {
	streamCtx, closeStream := context.WithCancel(withWaitForReady(ctx))
	defer closeStream()
	stream, err := c.Elections.Observe(streamCtx, &batonv1.ObserveRequest{Name: name})
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
		if !delivered && !brokenAt.IsZero() {
			observeReconnect("observe", time.Since(brokenAt))
		}
		delivered = true
		event := ElectionEvent{Kind: response.GetKind(), Leader: leaderOf(response.GetLeader()), At: response.GetAt().AsTime()}
		if !yield(event, nil) {
			return true, true, nil
		}
	}
}
