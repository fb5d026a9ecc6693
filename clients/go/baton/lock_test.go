package baton_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

func TestContendedLockIsExclusiveWithIncreasingFencingTokens(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("order")
	const workers, rounds = 5, 4
	var (
		holders atomic.Int32
		mu      sync.Mutex
		tokens  []uint64 // in the order the critical sections ran
		wg      sync.WaitGroup
		errs    = make(chan error, workers*rounds)
	)
	for worker := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range rounds {
				lease, err := client.Lock(ctx, name, 2*time.Second, baton.WithOwner(fmt.Sprint("worker-", worker)))
				if err != nil {
					errs <- err
					return
				}
				if n := holders.Add(1); n != 1 {
					errs <- fmt.Errorf("%d holders at once", n)
				}
				mu.Lock()
				tokens = append(tokens, lease.FencingToken())
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
				holders.Add(-1)
				if err := lease.Unlock(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if len(tokens) != workers*rounds {
		t.Fatalf("got %d grants, want %d", len(tokens), workers*rounds)
	}
	for i := 1; i < len(tokens); i++ {
		if tokens[i] <= tokens[i-1] {
			t.Fatalf("fencing tokens not strictly increasing in grant order: %v", tokens)
		}
	}
}

func TestLockWithWaitGivesUpWhileHeld(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("report")
	held, err := client.Lock(ctx, name, 5*time.Second, baton.WithOwner("first"))
	if err != nil {
		t.Fatal(err)
	}
	defer held.Unlock()
	started := time.Now()
	_, err = client.Lock(ctx, name, 5*time.Second, baton.WithWait(300*time.Millisecond))
	if !errors.Is(err, baton.ErrNotAcquired) {
		t.Fatalf("got %v, want ErrNotAcquired", err)
	}
	if waited := time.Since(started); waited < 250*time.Millisecond || waited > 3*time.Second {
		t.Fatalf("gave up after %s, want about 300ms", waited)
	}
}

func TestUnlockHandsTheLockToAWaiterAtOnce(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("invoice")
	first, err := client.Lock(ctx, name, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	acquired := make(chan *baton.Lease, 1)
	go func() {
		second, err := client.Lock(ctx, name, time.Minute, baton.WithWait(10*time.Second))
		if err != nil {
			t.Error(err)
		}
		acquired <- second
	}()
	time.Sleep(200 * time.Millisecond)
	if err := first.Unlock(); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(first.Err(), baton.ErrUnlocked) {
		t.Fatalf("Err after Unlock: got %v, want ErrUnlocked", first.Err())
	}
	select {
	case second := <-acquired:
		if second == nil || second.FencingToken() <= first.FencingToken() {
			t.Fatalf("the waiter got %v, want a lease with a higher token than %d", second, first.FencingToken())
		}
		second.Unlock()
	case <-time.After(5 * time.Second):
		// A minute-long ttl means only an explicit release could have freed it this fast.
		t.Fatal("the waiter did not get the lock after Unlock")
	}
}

func TestLeaseLossClosesDone(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	lease, err := client.Lock(ctx, unique("payment"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Someone else holding the lease id releases it: the next renewal finds it gone.
	released, err := client.Locks.Release(ctx, &batonv1.ReleaseRequest{Name: lease.Name(), LeaseId: lease.LeaseID()})
	if err != nil || !released.GetReleased() {
		t.Fatalf("releasing behind the helper's back: %v, %v", released, err)
	}
	select {
	case <-lease.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("Done was not closed after the lease was released out from under it")
	}
	if err := lease.Err(); !errors.Is(err, baton.ErrLeaseLost) || !errors.Is(err, baton.ErrLeaseNotHeld) {
		t.Fatalf("Err: got %v, want ErrLeaseLost caused by LEASE_NOT_HELD", err)
	}
	if err := lease.Unlock(); !errors.Is(err, baton.ErrLeaseLost) {
		t.Fatalf("Unlock after loss: got %v, want ErrLeaseLost", err)
	}
}

func TestKeepAliveResumesOnAnotherReplicaWhenOneShutsDown(t *testing.T) {
	redis := batontest.StartRedis(t)
	first := batontest.StartBaton(t, redis, "127.0.0.1:0")
	secondPort := batontest.FreePort(t)
	secondAddr := fmt.Sprintf("127.0.0.1:%d", secondPort)
	client := connect(t, "ipv4:"+first.Addr+","+secondAddr)
	ctx := testContext(t)

	// Only the first replica is up, so the lease and its KeepAlive stream live there.
	const ttl = 2 * time.Second
	lease, err := client.Lock(ctx, unique("migration"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	batontest.StartBaton(t, redis, secondAddr)
	// Leave time for the client's reconnect backoff (at most 250 ms) to find the second replica.
	time.Sleep(500 * time.Millisecond)
	first.Terminate()

	held := time.Now().Add(2 * ttl)
	for time.Now().Before(held) {
		select {
		case <-lease.Done():
			t.Fatalf("lease ended when its replica shut down: %v", lease.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	description, err := client.Locks.Describe(ctx, &batonv1.DescribeRequest{Name: lease.Name()})
	if err != nil {
		t.Fatal(err)
	}
	if holders := description.GetHolders(); len(holders) != 1 || holders[0].GetFencingToken() != lease.FencingToken() {
		t.Fatalf("after two ttls on the second replica: holders %v, want our token %d", holders, lease.FencingToken())
	}
	if err := lease.Unlock(); err != nil {
		t.Fatalf("Unlock through the second replica: %v", err)
	}
}

func TestHeartbeatsKeepAShortLeaseAndMoveItsDeadline(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	// Heartbeats every 167 ms; reported lost 50 ms early (ttl/10, and the minimum margin).
	const ttl = 500 * time.Millisecond
	lease, err := client.Lock(ctx, unique("short"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Unlock()
	var deadlines []time.Time
	for end := time.Now().Add(5 * ttl); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
		if lease.Err() != nil {
			t.Fatalf("a lease kept by heartbeats ended: %v", lease.Err())
		}
		deadline := lease.Deadline()
		if margin := lease.HeldUntil().Sub(deadline); margin != 50*time.Millisecond {
			t.Fatalf("HeldUntil - Deadline = %s, want the 50 ms minimum margin", margin)
		}
		if !time.Now().Before(deadline) {
			t.Fatalf("the deadline %s has passed while the lease is held", deadline)
		}
		if len(deadlines) == 0 || !deadline.Equal(deadlines[len(deadlines)-1]) {
			deadlines = append(deadlines, deadline)
		}
	}
	// Five ttls at one heartbeat per third of the ttl: about 15 answers.
	if len(deadlines) < 12 {
		t.Fatalf("the deadline moved %d times in %s, want about 15 (one per heartbeat)", len(deadlines), 5*ttl)
	}
	if err := lease.Unlock(); err != nil {
		t.Fatal(err)
	}
}

func TestALeaseIsReportedLostBeforeItsFrozenReplicaCouldLetItGo(t *testing.T) {
	redis := batontest.StartRedis(t)
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0")
	client := connect(t, replica.Addr)
	ctx := testContext(t)
	const ttl = time.Second
	lease, err := client.Lock(ctx, unique("stalled"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(ttl / 2)
	// The stream stalls: heartbeats go out, nothing answers, Baton renews nothing.
	replica.Signal(syscall.SIGSTOP)
	frozenAt := time.Now()
	defer replica.Signal(syscall.SIGCONT)
	select {
	case <-lease.Done():
	case <-time.After(3 * ttl):
		t.Fatal("the lease was not reported lost while its replica answered nothing")
	}
	lostAt := time.Now()
	heldUntil := lease.HeldUntil() // final: no answer moves it past the deadline
	replica.Signal(syscall.SIGCONT)
	if !errors.Is(lease.Err(), baton.ErrLeaseLost) {
		t.Fatalf("Err: got %v, want ErrLeaseLost", lease.Err())
	}
	// Baton renewed nothing after the last answered heartbeat, so the lease expires at
	// HeldUntil at the earliest: the report must come before, by the margin.
	if margin := heldUntil.Sub(lostAt); margin < 50*time.Millisecond || lostAt.Sub(frozenAt) > ttl {
		t.Fatalf("reported lost %s after the freeze and %s before HeldUntil, want within the ttl and at least 50 ms before", lostAt.Sub(frozenAt), margin)
	}
	if err := lease.Unlock(); !errors.Is(err, baton.ErrLeaseLost) {
		t.Fatalf("Unlock after loss: got %v, want ErrLeaseLost", err)
	}
}

// runLockHolder is what TestAFrozenHolderIsReportedLostBeforeTheLockChangesHands runs in a
// child process (see TestMain): it holds name with a 1 s ttl and prints, in wall-clock Unix
// nanoseconds, each new loss deadline ("deadline N") and the loss itself ("lost N ISLOST").
func runLockHolder(target, name string) {
	client, err := baton.New(target)
	if err != nil {
		panic(err)
	}
	lease, err := client.Lock(context.Background(), name, time.Second)
	if err != nil {
		panic(err)
	}
	fmt.Printf("held %d\n", lease.FencingToken())
	var reported time.Time
	poll := time.NewTicker(time.Millisecond)
	for {
		select {
		case <-lease.Done():
			fmt.Printf("lost %d %t\n", time.Now().UnixNano(), errors.Is(lease.Err(), baton.ErrLeaseLost))
			os.Exit(0)
		case <-poll.C:
			if deadline := lease.Deadline(); !deadline.Equal(reported) {
				reported = deadline
				fmt.Printf("deadline %d\n", deadline.UnixNano())
			}
		}
	}
}

func TestAFrozenHolderIsReportedLostBeforeTheLockChangesHands(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("frozen")
	holder := exec.Command(os.Args[0])
	holder.Env = append(os.Environ(), "LOCK_HOLDER_TARGET="+client.Conn().Target(), "LOCK_HOLDER_NAME="+name)
	stdout, err := holder.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = holder.Process.Kill(); _ = holder.Wait() })

	var (
		mu           sync.Mutex
		deadlines    int
		lastDeadline time.Time
		held         = make(chan struct{})
		lost         = make(chan string, 1)
	)
	go func() {
		lines := bufio.NewScanner(stdout)
		for lines.Scan() {
			fields := strings.Fields(lines.Text())
			switch {
			case len(fields) == 2 && fields[0] == "held":
				close(held)
			case len(fields) == 2 && fields[0] == "deadline":
				nanos, _ := strconv.ParseInt(fields[1], 10, 64)
				mu.Lock()
				deadlines++
				lastDeadline = time.Unix(0, nanos)
				mu.Unlock()
			case len(fields) == 3 && fields[0] == "lost":
				lost <- lines.Text()
			}
		}
	}()
	select {
	case <-held:
	case <-time.After(10 * time.Second):
		t.Fatal("the holder did not report the lock held")
	}
	// Heartbeats every third of the 1 s ttl: a few are answered before the freeze.
	batontest.Eventually(t, 3*time.Second, "three heartbeats answered", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return deadlines >= 4
	})

	if err := holder.Process.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	frozenAt := time.Now()
	const ttl = time.Second
	response, err := client.Locks.Acquire(ctx, &batonv1.AcquireRequest{
		Name: name, Ttl: durationpb.New(ttl), WaitTimeout: durationpb.New(5 * time.Second), Owner: "waiter",
	})
	if err != nil {
		t.Fatal(baton.FromError(err))
	}
	answeredAt := time.Now()
	if !response.GetAcquired() {
		t.Fatalf("the waiter did not get the lock within 5 s of the freeze (holder %v)", response.GetHolder())
	}
	// When Baton granted it, by the Redis clock (the same machine's clock).
	grantedAt := response.GetLease().GetExpiresAt().AsTime().Add(-ttl)
	mu.Lock()
	reportedDeadline := lastDeadline
	mu.Unlock()
	t.Logf("frozen→granted %s (answer after %s); holder's last loss deadline %s before the grant",
		grantedAt.Sub(frozenAt), answeredAt.Sub(frozenAt), grantedAt.Sub(reportedDeadline))
	if answeredAt.Sub(frozenAt) > 2*time.Second {
		t.Errorf("the waiter got the lock %s after the freeze, want within 2 s", answeredAt.Sub(frozenAt))
	}
	if !reportedDeadline.Before(grantedAt) {
		t.Errorf("the frozen holder would report its loss at %s, not before the lock changed hands at %s",
			reportedDeadline.Format(time.RFC3339Nano), grantedAt.Format(time.RFC3339Nano))
	}

	if err := holder.Process.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	resumedAt := time.Now()
	select {
	case line := <-lost:
		fields := strings.Fields(line)
		nanos, _ := strconv.ParseInt(fields[1], 10, 64)
		if delay := time.Unix(0, nanos).Sub(resumedAt); delay > 500*time.Millisecond {
			t.Errorf("the holder reported its loss %s after resuming, want at once", delay)
		} else {
			t.Logf("resumed→lost reported %s", delay)
		}
		if fields[2] != "true" {
			t.Errorf("the holder's loss does not wrap ErrLeaseLost: %q", line)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the resumed holder did not report its loss")
	}
	if _, err := client.Locks.Release(ctx, &batonv1.ReleaseRequest{Name: name, LeaseId: response.GetLease().GetLeaseId()}); err != nil {
		t.Fatal(baton.FromError(err))
	}
}

// keepAliveAnswers records every answer to a KeepAlive message the helper receives.
type keepAliveAnswers struct {
	mu         sync.Mutex
	notRenewed int
}

func observeKeepAliveAnswers(t *testing.T) *keepAliveAnswers {
	answers := &keepAliveAnswers{}
	t.Cleanup(baton.ObserveKeepAliveAnswers(func(renewed bool) {
		if !renewed {
			answers.mu.Lock()
			answers.notRenewed++
			answers.mu.Unlock()
		}
	}))
	return answers
}

func (a *keepAliveAnswers) notRenewedCount() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.notRenewed
}

// awaitRenewal waits until the lease's deadline moves, i.e. a heartbeat was just renewed.
func awaitRenewal(t *testing.T, lease *baton.Lease) {
	t.Helper()
	before := lease.Deadline()
	batontest.Eventually(t, lease.TTL(), "a heartbeat renewed", func() bool { return lease.Deadline().After(before) })
}

// TestHeartbeatsAnsweredNotRenewedDoNotMoveHeldUntil freezes Redis (SIGSTOP) under a held
// lease: Baton cannot renew, so it answers the heartbeats "not renewed". Those answers must
// leave HeldUntil where the last renewed heartbeat put it: the lease is kept when Redis
// comes back before the deadline, and reported lost at the deadline when it does not —
// before Baton can grant the lock to anyone else.
func TestHeartbeatsAnsweredNotRenewedDoNotMoveHeldUntil(t *testing.T) {
	redis := batontest.StartRedis(t)
	// A frozen Redis costs each heartbeat this long before it is answered "not renewed".
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0", "--redis-timeout", "200ms")
	client := connect(t, replica.Addr)
	ctx := testContext(t)
	answers := observeKeepAliveAnswers(t)
	// Heartbeats every second; reported lost 300 ms before HeldUntil.
	const ttl, margin = 3 * time.Second, 300 * time.Millisecond
	lease, err := client.Lock(ctx, unique("frozen-redis"), ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer lease.Unlock()
	defer redis.Signal(syscall.SIGCONT)

	// A short freeze, right after a renewal: one heartbeat is answered "not renewed", and the
	// lease stays held on the earlier proof until Redis is back and renews again.
	awaitRenewal(t, lease)
	heldUntil, notRenewedBefore := lease.HeldUntil(), answers.notRenewedCount()
	redis.Signal(syscall.SIGSTOP)
	frozenAt := time.Now()
	batontest.Eventually(t, ttl, "a heartbeat answered not renewed", func() bool {
		if got := lease.HeldUntil(); !got.Equal(heldUntil) {
			t.Fatalf("HeldUntil moved by %s while Redis was frozen", got.Sub(heldUntil))
		}
		return answers.notRenewedCount() > notRenewedBefore
	})
	if got := lease.HeldUntil(); !got.Equal(heldUntil) {
		t.Fatalf("a heartbeat answered not renewed moved HeldUntil by %s", got.Sub(heldUntil))
	}
	redis.Signal(syscall.SIGCONT)
	t.Logf("short freeze: %s, %d answer(s) not renewed, resumed %s before the deadline",
		time.Since(frozenAt), answers.notRenewedCount()-notRenewedBefore, time.Until(heldUntil.Add(-margin)))
	batontest.Eventually(t, ttl, "renewed again after Redis came back", func() bool { return lease.HeldUntil().After(heldUntil) })
	if err := lease.Err(); err != nil {
		t.Fatalf("the lease ended although Redis came back before its deadline: %v", err)
	}

	// A long freeze: every heartbeat is answered "not renewed" and the lease is reported lost
	// a margin before the last renewed heartbeat's send time plus the ttl.
	awaitRenewal(t, lease)
	heldUntil, notRenewedBefore = lease.HeldUntil(), answers.notRenewedCount()
	redis.Signal(syscall.SIGSTOP)
	frozenAt = time.Now()
	select {
	case <-lease.Done():
	case <-time.After(2 * ttl):
		t.Fatal("the lease was not reported lost while Redis stayed frozen")
	}
	lostAt := time.Now()
	redis.Signal(syscall.SIGCONT)
	notRenewed := answers.notRenewedCount() - notRenewedBefore
	t.Logf("long freeze: reported lost %s after the freeze, %s before HeldUntil, after %d answer(s) not renewed",
		lostAt.Sub(frozenAt), heldUntil.Sub(lostAt), notRenewed)
	if !errors.Is(lease.Err(), baton.ErrLeaseLost) {
		t.Fatalf("Err: got %v, want ErrLeaseLost", lease.Err())
	}
	// Heartbeats at about 1 s and 2 s into the freeze, each answered "not renewed".
	if notRenewed < 2 {
		t.Errorf("%d heartbeats answered not renewed during a %s freeze, want 2", notRenewed, lostAt.Sub(frozenAt))
	}
	if got := lease.HeldUntil(); !got.Equal(heldUntil) {
		t.Errorf("HeldUntil moved by %s while Redis was frozen", got.Sub(heldUntil))
	}
	if early := heldUntil.Sub(lostAt); early < margin-20*time.Millisecond || early > margin+100*time.Millisecond {
		t.Errorf("reported lost %s before HeldUntil, want at the %s margin", early, margin)
	}

	// Baton could let the lock go at the expiry of its last renewal (by the Redis clock, the
	// same machine's clock here), which came after the heartbeat that set HeldUntil was
	// sent: the loss must be reported before. Whoever asks next gets the lock only after the
	// loss (here at once: the helper ended its stream at the loss, which releases the lease).
	expiresAt := lease.ExpiresAt()
	t.Logf("reported lost %s before the expiry of the last renewal", expiresAt.Sub(lostAt))
	if !lostAt.Before(expiresAt) {
		t.Errorf("reported lost %s after the last renewal expired", lostAt.Sub(expiresAt))
	}
	response, err := client.Locks.Acquire(ctx, &batonv1.AcquireRequest{
		Name: lease.Name(), Ttl: durationpb.New(time.Second), WaitTimeout: durationpb.New(2 * ttl), Owner: "next",
	})
	if err != nil {
		t.Fatal(baton.FromError(err))
	}
	if !response.GetAcquired() {
		t.Fatalf("the lock was not granted within %s of the loss (holder %v)", 2*ttl, response.GetHolder())
	}
	grantedAt := response.GetLease().GetExpiresAt().AsTime().Add(-time.Second)
	t.Logf("granted to the next holder %s after the loss was reported", grantedAt.Sub(lostAt))
	if !grantedAt.After(lostAt) {
		t.Errorf("the lock was granted %s before the holder reported its loss", lostAt.Sub(grantedAt))
	}
}

// callCounter counts the RPCs a client makes, by full method name.
type callCounter struct {
	mu    sync.Mutex
	calls map[string]int
}

func (c *callCounter) count(method string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls[method]++
}

func (c *callCounter) options() baton.Option {
	return baton.WithDialOptions(
		grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
			c.count(method)
			return invoker(ctx, method, req, reply, cc, opts...)
		}),
		grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
			c.count(method)
			return streamer(ctx, desc, cc, method, opts...)
		}),
	)
}

func TestALockCycleIsOneKeepAliveStream(t *testing.T) {
	counter := &callCounter{calls: map[string]int{}}
	client, _ := server(t, counter.options())
	ctx := testContext(t)
	const cycles = 20
	for i := range cycles {
		lease, err := client.Lock(ctx, unique(fmt.Sprint("cycle-", i)), 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if time.Until(lease.Deadline()) < 4*time.Second {
			t.Fatalf("a lease granted at once has its deadline in %s, want about the ttl less a tenth", time.Until(lease.Deadline()))
		}
		if err := lease.Unlock(); err != nil {
			t.Fatalf("unlock %d: %v", i, err)
		}
	}
	counter.mu.Lock()
	defer counter.mu.Unlock()
	want := map[string]int{"/baton.v1.LockService/KeepAlive": cycles}
	if fmt.Sprint(counter.calls) != fmt.Sprint(want) {
		t.Fatalf("RPCs for %d lock cycles: %v, want %v (no Acquire, Release or second stream)", cycles, counter.calls, want)
	}
}

func TestALockThatWaitedLongerThanItsTtlIsDatedByItsFirstHeartbeat(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	name := unique("slow-grant")
	const ttl = time.Second
	first, err := client.Lock(ctx, name, ttl)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		// Held for longer than the waiter's ttl: a lease dated by the waiter's first send
		// would be past its deadline as it is granted.
		time.Sleep(3 * ttl / 2)
		first.Unlock()
	}()
	waited, err := client.Lock(ctx, name, ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer waited.Unlock()
	if err := waited.Err(); err != nil {
		t.Fatalf("the waiter's lease ended as it was granted: %v", err)
	}
	if left := time.Until(waited.Deadline()); left < ttl/2 {
		t.Fatalf("deadline %s after a grant that waited, want about the ttl less a tenth", left)
	}
	// Still held two ttls later: heartbeats keep it as any other.
	select {
	case <-waited.Done():
		t.Fatalf("lost: %v", waited.Err())
	case <-time.After(2 * ttl):
	}
}
