package baton_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

func TestRunAsLeaderRunsOneLeaderAtATimeWithRisingTerms(t *testing.T) {
	first, _ := server(t)
	second := connect(t, first.Conn().Target())
	ctx := testContext(t)
	name := unique("scheduler")
	type reign struct {
		owner        string
		term         uint64
		began, ended time.Time
	}
	var (
		leaders        atomic.Int32
		reigns         = make(chan reign, 2)
		firstLeads     = make(chan struct{})
		firstMayReturn = make(chan struct{})
	)
	// A 30 s ttl: only a resignation hands the leadership over within seconds.
	run := func(client *baton.Client, owner string, leads chan<- struct{}, mayReturn <-chan struct{}) error {
		return client.RunAsLeader(ctx, name, []byte(owner), func(work context.Context, leadership *baton.Leadership) error {
			began := time.Now()
			if n := leaders.Add(1); n != 1 {
				t.Errorf("%d leaders at once", n)
			}
			if leads != nil {
				close(leads)
			}
			select {
			case <-mayReturn:
			case <-work.Done():
				t.Errorf("%s's work ended while it led: %v", owner, context.Cause(work))
			}
			leaders.Add(-1)
			reigns <- reign{owner: owner, term: leadership.Term(), began: began, ended: time.Now()}
			return nil
		}, baton.WithLeadershipTTL(30*time.Second), baton.WithLeadershipOwner(owner))
	}
	firstDone, secondDone := make(chan error, 1), make(chan error, 1)
	go func() { firstDone <- run(first, "first", firstLeads, firstMayReturn) }()
	select {
	case <-firstLeads:
	case err := <-firstDone:
		t.Fatalf("the first candidate returned without leading: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the first candidate was not elected")
	}
	alreadyReturned := make(chan struct{})
	close(alreadyReturned)
	go func() { secondDone <- run(second, "second", nil, alreadyReturned) }()
	// The second candidate's Campaign reaches Baton and waits there; it must not lead meanwhile.
	time.Sleep(300 * time.Millisecond)
	if len(reigns) != 0 {
		t.Fatalf("the second candidate ran its work while the first led")
	}
	close(firstMayReturn)
	for _, done := range []chan error{firstDone, secondDone} {
		select {
		case err := <-done:
			if err != nil {
				t.Fatalf("RunAsLeader: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the second candidate did not lead within 5 s of the first's return")
		}
	}
	firstReign, secondReign := <-reigns, <-reigns
	if firstReign.owner != "first" || secondReign.owner != "second" {
		t.Fatalf("reigns in the order %s, %s", firstReign.owner, secondReign.owner)
	}
	if secondReign.term <= firstReign.term {
		t.Errorf("terms %d then %d, want rising", firstReign.term, secondReign.term)
	}
	handover := secondReign.began.Sub(firstReign.ended)
	t.Logf("handover %s", handover)
	if handover < 0 || handover > 2*time.Second {
		t.Errorf("the second leader began %s after the first's work returned, want after it and within 2 s", handover)
	}
}

func TestTheWorkEndsWhenTheLeadershipIsResignedBehindItsBack(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	var proclaimErr error
	err := client.RunAsLeader(ctx, unique("compactor"), []byte("a"), func(work context.Context, leadership *baton.Leadership) error {
		// Someone else holding the lease id resigns it: the next heartbeat finds it gone.
		resigned, err := client.Elections.Resign(ctx, &batonv1.ResignRequest{Name: leadership.Name(), LeaseId: leadership.LeaseID()})
		if err != nil || !resigned.GetResigned() {
			return fmt.Errorf("resigning behind the helper's back: %v, %w", resigned, err)
		}
		select {
		case <-work.Done():
		case <-time.After(5 * time.Second):
			t.Error("the work's context was not cancelled after the leadership was resigned")
		}
		proclaimErr = leadership.Proclaim(ctx, []byte("b"))
		return context.Cause(work)
	}, baton.WithLeadershipTTL(time.Second))
	if !errors.Is(err, baton.ErrLeadershipLost) || !errors.Is(err, baton.ErrLeaseNotHeld) {
		t.Fatalf("RunAsLeader: got %v, want ErrLeadershipLost caused by LEASE_NOT_HELD", err)
	}
	if !errors.Is(proclaimErr, baton.ErrLeadershipLost) {
		t.Fatalf("Proclaim after the loss: got %v, want ErrLeadershipLost", proclaimErr)
	}
}

func TestTheWorkEndsWithinTheTTLWhenTheLeadersReplicaFreezes(t *testing.T) {
	redis := batontest.StartRedis(t)
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0")
	client := connect(t, replica.Addr)
	ctx := testContext(t)
	defer replica.Signal(syscall.SIGCONT)
	const ttl = time.Second
	var frozenFor time.Duration
	err := client.RunAsLeader(ctx, unique("frozen-replica"), nil, func(work context.Context, leadership *baton.Leadership) error {
		time.Sleep(ttl / 2) // a heartbeat or two renewed before the freeze
		// The stream stalls: heartbeats go out, nothing answers, Baton renews nothing.
		replica.Signal(syscall.SIGSTOP)
		frozenAt := time.Now()
		select {
		case <-work.Done():
			frozenFor = time.Since(frozenAt)
		case <-time.After(3 * ttl):
			t.Error("the work's context was not cancelled while the replica answered nothing")
		}
		replica.Signal(syscall.SIGCONT) // for the resignation
		if cause := context.Cause(work); !errors.Is(cause, baton.ErrLeadershipLost) {
			t.Errorf("the work's context ended with %v, want ErrLeadershipLost", cause)
		}
		return nil
	}, baton.WithLeadershipTTL(ttl))
	if !errors.Is(err, baton.ErrLeadershipLost) {
		t.Fatalf("RunAsLeader: got %v, want ErrLeadershipLost", err)
	}
	// Baton renewed nothing after the last heartbeat answered before the freeze, so the
	// leadership expires at most a ttl after the freeze: the work must end before.
	t.Logf("the work ended %s after the freeze", frozenFor)
	if frozenFor == 0 || frozenFor >= ttl {
		t.Fatalf("the work ended %s after the freeze, want within the ttl (%s)", frozenFor, ttl)
	}
}

func TestRunAsLeaderGivesUpWhenItsContextEndsWhileCampaigning(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("singleton")
	leading, mayReturn, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- client.RunAsLeader(ctx, name, nil, func(work context.Context, leadership *baton.Leadership) error {
			close(leading)
			<-mayReturn
			return nil
		})
	}()
	select {
	case <-leading:
	case <-time.After(10 * time.Second):
		t.Fatal("the first candidate was not elected")
	}
	defer func() {
		close(mayReturn)
		if err := <-done; err != nil {
			t.Errorf("the leader's RunAsLeader: %v", err)
		}
	}()

	shortCtx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	started := time.Now()
	err := client.RunAsLeader(shortCtx, name, nil, func(context.Context, *baton.Leadership) error {
		t.Error("ran the work while another candidate led")
		return nil
	})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("got %v, want context.DeadlineExceeded", err)
	}
	if waited := time.Since(started); waited < 400*time.Millisecond || waited > 3*time.Second {
		t.Fatalf("gave up after %s, want about 500 ms", waited)
	}
}

func TestLeaderReportsTheLeadersValueAndTerm(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("primary")
	if leader, err := client.Leader(ctx, name); err != nil || leader != nil {
		t.Fatalf("Leader before any election: got %+v, %v, want nil", leader, err)
	}
	err := client.RunAsLeader(ctx, name, []byte("10.0.0.7:5432"), func(work context.Context, leadership *baton.Leadership) error {
		leader, err := client.Leader(ctx, name)
		if err != nil {
			return err
		}
		if leader == nil || string(leader.Value) != "10.0.0.7:5432" || leader.Term != leadership.Term() || leader.Owner != "db-1" || leader.Name != name {
			return fmt.Errorf("Leader while leading: got %+v, want value 10.0.0.7:5432, term %d, owner db-1", leader, leadership.Term())
		}
		// Without WithLeadershipTTL the leadership lasts 10 s; the first heartbeat has renewed
		// it once already.
		if lasts := leader.ExpiresAt.Sub(leader.Since); lasts < 10*time.Second || lasts > 12*time.Second {
			return fmt.Errorf("the leadership lasts %s past its beginning, want the default 10 s ttl", lasts)
		}
		if err := leadership.Proclaim(ctx, []byte("10.0.0.8:5432")); err != nil {
			return err
		}
		leader, err = client.Leader(ctx, name)
		if err != nil {
			return err
		}
		if leader == nil || string(leader.Value) != "10.0.0.8:5432" || leader.Term != leadership.Term() {
			return fmt.Errorf("Leader after Proclaim: got %+v, want the new value with term %d", leader, leadership.Term())
		}
		return nil
	}, baton.WithLeadershipOwner("db-1"))
	if err != nil {
		t.Fatal(err)
	}
	if leader, err := client.Leader(ctx, name); err != nil || leader != nil {
		t.Fatalf("Leader after RunAsLeader returned: got %+v, %v, want nil", leader, err)
	}
}

func TestRunAsLeaderReturnsTheWorksError(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	failed := errors.New("the work failed")
	err := client.RunAsLeader(ctx, unique("failing"), nil, func(context.Context, *baton.Leadership) error { return failed })
	if err != failed {
		t.Fatalf("got %v, want the work's own error", err)
	}
}

// observeElection collects the events of client.Observe until ctx ends; ended is closed
// when the iteration has returned.
func observeElection(ctx context.Context, t *testing.T, client *baton.Client, name string) (events <-chan baton.ElectionEvent, ended <-chan struct{}) {
	collected, done := make(chan baton.ElectionEvent), make(chan struct{})
	go func() {
		defer close(done)
		for event, err := range client.Observe(ctx, name) {
			if err != nil {
				t.Errorf("observing %q: %v", name, err)
				return
			}
			select {
			case collected <- event:
			case <-ctx.Done():
			}
		}
	}()
	return collected, done
}

func nextEvent(t *testing.T, events <-chan baton.ElectionEvent, want baton.ElectionEventKind) baton.ElectionEvent {
	t.Helper()
	select {
	case event := <-events:
		if event.Kind != want {
			t.Fatalf("got a %s event (%+v), want %s", event.Kind, event.Leader, want)
		}
		return event
	case <-time.After(5 * time.Second):
		t.Fatalf("no %s event within 5 s", want)
		return baton.ElectionEvent{}
	}
}

func TestObserveSeesCurrentElectedProclaimedResignedInOrder(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("coordinator")
	observeCtx, stopObserving := context.WithCancel(ctx)
	defer stopObserving()
	events, ended := observeElection(observeCtx, t, client, name)
	if current := nextEvent(t, events, baton.LeaderCurrent); current.Leader != nil {
		t.Fatalf("CURRENT before any election: got %+v, want nobody leading", current.Leader)
	}

	var term uint64
	err := client.RunAsLeader(ctx, name, []byte("a"), func(work context.Context, leadership *baton.Leadership) error {
		term = leadership.Term()
		return leadership.Proclaim(ctx, []byte("b"))
	}, baton.WithLeadershipOwner("node-1"))
	if err != nil {
		t.Fatal(err)
	}
	elected := nextEvent(t, events, baton.LeaderElected)
	if string(elected.Leader.Value) != "a" || elected.Leader.Term != term || elected.Leader.Owner != "node-1" {
		t.Fatalf("ELECTED: got %+v, want value a, term %d, owner node-1", elected.Leader, term)
	}
	proclaimed := nextEvent(t, events, baton.LeaderProclaimed)
	if string(proclaimed.Leader.Value) != "b" || proclaimed.Leader.Term != term {
		t.Fatalf("PROCLAIMED: got %+v, want value b, term %d", proclaimed.Leader, term)
	}
	resigned := nextEvent(t, events, baton.LeaderResigned)
	if resigned.Leader == nil || resigned.Leader.Term != term {
		t.Fatalf("RESIGNED: got %+v, want the ended term %d", resigned.Leader, term)
	}
	if elected.At.After(proclaimed.At) || proclaimed.At.After(resigned.At) {
		t.Fatalf("events out of time order: %s, %s, %s", elected.At, proclaimed.At, resigned.At)
	}

	stopObserving()
	select {
	case <-ended:
	case <-time.After(5 * time.Second):
		t.Fatal("the iteration did not end when its context was cancelled")
	}
}

func TestObserveResumesOnAnotherReplicaWithTheCurrentState(t *testing.T) {
	redis := batontest.StartRedis(t)
	first := batontest.StartBaton(t, redis, "127.0.0.1:0")
	secondAddr := fmt.Sprintf("127.0.0.1:%d", batontest.FreePort(t))
	client := connect(t, "ipv4:"+first.Addr+","+secondAddr)
	ctx := testContext(t)
	name := unique("rebalancer")
	var gaps atomic.Int64
	t.Cleanup(baton.ObserveReconnects(func(kind string, gap time.Duration) {
		if kind == "observe" {
			gaps.Store(int64(gap))
		}
	}))

	// Only the first replica is up, so the Observe and KeepAlive streams start there.
	events, _ := observeElection(ctx, t, client, name)
	nextEvent(t, events, baton.LeaderCurrent)
	const ttl = 2 * time.Second
	leadership, mayReturn, done := make(chan *baton.Leadership, 1), make(chan struct{}), make(chan error, 1)
	go func() {
		done <- client.RunAsLeader(ctx, name, []byte("v1"), func(work context.Context, held *baton.Leadership) error {
			leadership <- held
			select {
			case <-mayReturn:
				return nil
			case <-work.Done():
				return context.Cause(work)
			}
		}, baton.WithLeadershipTTL(ttl))
	}()
	var term uint64
	select {
	case held := <-leadership:
		term = held.Term()
	case <-time.After(10 * time.Second):
		t.Fatal("not elected")
	}
	nextEvent(t, events, baton.LeaderElected)

	batontest.StartBaton(t, redis, secondAddr)
	// Leave time for the client's reconnect backoff (at most 250 ms) to find the second replica.
	time.Sleep(500 * time.Millisecond)
	first.Terminate()

	// The stream reopened on the second replica sums up what it missed: the same leader.
	current := nextEvent(t, events, baton.LeaderCurrent)
	if current.Leader == nil || current.Leader.Term != term || string(current.Leader.Value) != "v1" {
		t.Fatalf("CURRENT after the replica shut down: got %+v, want term %d leading", current.Leader, term)
	}
	t.Logf("observe stream down for %s", time.Duration(gaps.Load()))
	// The leadership's KeepAlive stream resumed on the second replica too.
	for end := time.Now().Add(2 * ttl); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		select {
		case err := <-done:
			t.Fatalf("the leadership ended when its replica shut down: %v", err)
		default:
		}
	}
	close(mayReturn)
	if err := <-done; err != nil {
		t.Fatalf("RunAsLeader through the second replica: %v", err)
	}
	if resigned := nextEvent(t, events, baton.LeaderResigned); resigned.Leader == nil || resigned.Leader.Term != term {
		t.Fatalf("RESIGNED: got %+v, want term %d", resigned.Leader, term)
	}
}
