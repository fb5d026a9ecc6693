package baton_test

import (
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	// Leave time for the client's reconnect backoff to find the second replica.
	time.Sleep(1500 * time.Millisecond)
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
