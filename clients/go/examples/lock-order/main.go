// A lock around order processing: however many workers pick up order 1234, one processes it
// at a time, and the fencing token lets the order store refuse a write from a worker whose
// lease was lost (a long GC pause, a network partition) after another took over.
//
// Run against `make run`'s baton (from the repository root, in another terminal):
//
//	cd clients/go && go run ./examples/lock-order
//
// BATON_TARGET overrides the default localhost:50051.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"sync"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

// orderStore stands in for a database row that remembers the highest fencing token it saw.
type orderStore struct {
	mu        sync.Mutex
	lastToken uint64
	state     string
}

var errStaleToken = errors.New("stale fencing token: another worker holds the order now")

func (s *orderStore) write(token uint64, state string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if token < s.lastToken {
		return errStaleToken
	}
	s.lastToken, s.state = token, state
	return nil
}

func processOrder(ctx context.Context, client *baton.Client, store *orderStore, worker int) error {
	lease, err := client.Lock(ctx, "order:1234", 10*time.Second, baton.WithOwner(fmt.Sprint("worker-", worker)))
	if err != nil {
		return err
	}
	defer lease.Unlock()
	// lease.Context() ends if the lease is lost — or, a safety margin before Baton could let
	// it go, if no heartbeat has been answered (lease.Deadline()): stop charging the card then.
	select {
	case <-time.After(100 * time.Millisecond): // charge the card, reserve the stock
	case <-lease.Context().Done():
		return lease.Err()
	}
	if err := store.write(lease.FencingToken(), fmt.Sprint("processed by worker ", worker)); err != nil {
		return err
	}
	log.Printf("worker %d processed order 1234 with fencing token %d", worker, lease.FencingToken())
	return lease.Unlock()
}

func main() {
	client, err := baton.New(target())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	store := &orderStore{}
	var wg sync.WaitGroup
	for worker := range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := processOrder(context.Background(), client, store, worker); err != nil {
				log.Printf("worker %d: %v", worker, err)
			}
		}()
	}
	wg.Wait()
	log.Printf("order 1234: %s", store.state)
}

func target() string {
	if target := os.Getenv("BATON_TARGET"); target != "" {
		return target
	}
	return "localhost:50051"
}
