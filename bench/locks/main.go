// Command locks measures lock cycles through the lock helper a Go user calls: Baton's
// Client.Lock + Lease.Unlock, or etcd's concurrency.Mutex (Lock + Unlock on a session made
// once per caller, as etcd's documentation uses it). One process, one client connection,
// `-concurrency` callers each cycling on names of their own; or, with `-handover`, rounds
// of one holder releasing a name another caller waits on.
//
// It prints ONE JSON line, e.g.
//
//	{"system":"etcd","mode":"cycles","concurrency":16,"cycles":40000,"seconds":5.0,"cycles_per_sec":8000,"p50_us":1900,"p99_us":4100,"client_cpu_us":95}
//
// and exits non-zero, with the reason on stderr, on the first failed call.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/concurrency"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// ttl of every lease: long enough that no renewal falls inside a run's cycle.
const ttl = 10 * time.Second

// locker is one caller's way to take and give back a named lock.
type locker interface {
	lock(ctx context.Context, name string) (unlock func(context.Context) error, err error)
	close()
}

type batonLocker struct{ client *baton.Client }

func (b batonLocker) lock(ctx context.Context, name string) (func(context.Context) error, error) {
	lease, err := b.client.Lock(ctx, name, ttl)
	if err != nil {
		return nil, err
	}
	return func(context.Context) error { return lease.Unlock() }, nil
}

func (batonLocker) close() {}

// etcdLocker holds the caller's session: etcd's recipe keeps one lease alive per session
// and puts every lock key under it.
type etcdLocker struct{ session *concurrency.Session }

func (e etcdLocker) lock(ctx context.Context, name string) (func(context.Context) error, error) {
	mutex := concurrency.NewMutex(e.session, "/bench-locks/"+name)
	if err := mutex.Lock(ctx); err != nil {
		return nil, err
	}
	return mutex.Unlock, nil
}

func (e etcdLocker) close() { _ = e.session.Close() }

type result struct {
	System       string  `json:"system"`
	Mode         string  `json:"mode"`
	Concurrency  int     `json:"concurrency"`
	Cycles       int     `json:"cycles"`
	Seconds      float64 `json:"seconds"`
	CyclesPerSec float64 `json:"cycles_per_sec"`
	P50Us        int64   `json:"p50_us"`
	P99Us        int64   `json:"p99_us"`
	// ClientCPUUs is this process's own CPU time per cycle: the helper's side of the bill,
	// which shares the machine with the server's.
	ClientCPUUs float64 `json:"client_cpu_us"`
}

func main() {
	system := flag.String("system", "baton", "baton or etcd")
	target := flag.String("target", "127.0.0.1:50051", "the server's gRPC address")
	callers := flag.Int("concurrency", 16, "concurrent callers, each on names of its own")
	duration := flag.Duration("duration", 5*time.Second, "how long the cycles run")
	handover := flag.Int("handover", 0, "measure this many hand-overs on one name instead of cycles")
	flag.Parse()

	newLocker, closeClient, err := connect(*system, *target)
	if err != nil {
		fail(err)
	}
	defer closeClient()
	var out result
	if *handover > 0 {
		out, err = measureHandover(newLocker, *handover)
	} else {
		out, err = measureCycles(newLocker, *callers, *duration)
	}
	if err != nil {
		fail(err)
	}
	out.System = *system
	line, _ := json.Marshal(out)
	fmt.Println(string(line))
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "locks:", err)
	os.Exit(1)
}

// connect opens one client for every caller of the run; each caller gets its own locker.
func connect(system, target string) (newLocker func() (locker, error), closeClient func(), err error) {
	switch system {
	case "baton":
		client, err := baton.New(target)
		if err != nil {
			return nil, nil, err
		}
		return func() (locker, error) { return batonLocker{client}, nil }, func() { _ = client.Close() }, nil
	case "etcd":
		client, err := clientv3.New(clientv3.Config{
			Endpoints:   []string{target},
			DialTimeout: 5 * time.Second,
			DialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		})
		if err != nil {
			return nil, nil, err
		}
		newLocker := func() (locker, error) {
			session, err := concurrency.NewSession(client, concurrency.WithTTL(int(ttl.Seconds())))
			if err != nil {
				return nil, err
			}
			return etcdLocker{session}, nil
		}
		return newLocker, func() { _ = client.Close() }, nil
	default:
		return nil, nil, fmt.Errorf("unknown -system %q (baton or etcd)", system)
	}
}

// measureCycles runs acquire + release cycles from `callers` callers for `duration`, each
// on names of its own (a fresh name per cycle, as distinct requests take distinct locks).
func measureCycles(newLocker func() (locker, error), callers int, duration time.Duration) (result, error) {
	lockers := make([]locker, callers)
	for i := range lockers {
		l, err := newLocker()
		if err != nil {
			return result{}, err
		}
		defer l.close()
		lockers[i] = l
	}
	var (
		wg        sync.WaitGroup
		mu        sync.Mutex
		latencies []time.Duration
		firstErr  error
	)
	ctx := context.Background()
	run := fmt.Sprintf("%d-%d", os.Getpid(), time.Now().UnixNano())
	cpuBefore := ownCPU()
	started := time.Now()
	deadline := started.Add(duration)
	for caller, l := range lockers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var own []time.Duration
			for i := 0; time.Now().Before(deadline); i++ {
				began := time.Now()
				unlock, err := l.lock(ctx, fmt.Sprintf("cycle-%s-%d-%d", run, caller, i))
				if err == nil {
					err = unlock(ctx)
				}
				if err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					return
				}
				own = append(own, time.Since(began))
			}
			mu.Lock()
			latencies = append(latencies, own...)
			mu.Unlock()
		}()
	}
	wg.Wait()
	if firstErr != nil {
		return result{}, firstErr
	}
	seconds := time.Since(started).Seconds()
	out := summarise(latencies)
	out.Mode, out.Concurrency, out.Seconds = "cycles", callers, seconds
	out.CyclesPerSec = float64(len(latencies)) / seconds
	out.ClientCPUUs = float64(ownCPU()-cpuBefore) / float64(max(len(latencies), 1))
	return out, nil
}

// measureHandover: a holder releases a name while a second caller waits for it; each
// round's figure is from the moment Unlock is called to the moment the waiter holds it.
func measureHandover(newLocker func() (locker, error), rounds int) (result, error) {
	holder, err := newLocker()
	if err != nil {
		return result{}, err
	}
	defer holder.close()
	waiter, err := newLocker()
	if err != nil {
		return result{}, err
	}
	defer waiter.close()
	ctx := context.Background()
	name := fmt.Sprintf("handover-%d-%d", os.Getpid(), time.Now().UnixNano())
	var latencies []time.Duration
	started := time.Now()
	for range rounds {
		unlock, err := holder.lock(ctx, name)
		if err != nil {
			return result{}, err
		}
		type granted struct {
			at     time.Time
			unlock func(context.Context) error
			err    error
		}
		done := make(chan granted, 1)
		go func() {
			unlock, err := waiter.lock(ctx, name)
			done <- granted{time.Now(), unlock, err}
		}()
		// The waiter's call must be waiting at the server, not still on its way.
		time.Sleep(20 * time.Millisecond)
		releasedAt := time.Now()
		if err := unlock(ctx); err != nil {
			return result{}, err
		}
		got := <-done
		if got.err != nil {
			return result{}, got.err
		}
		latencies = append(latencies, got.at.Sub(releasedAt))
		if err := got.unlock(ctx); err != nil {
			return result{}, err
		}
	}
	out := summarise(latencies)
	out.Mode, out.Concurrency, out.Seconds = "handover", 2, time.Since(started).Seconds()
	return out, nil
}

// ownCPU is this process's user + system time so far, in microseconds.
func ownCPU() int64 {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return usage.Utime.Nano()/1000 + usage.Stime.Nano()/1000
}

func summarise(latencies []time.Duration) result {
	slices.Sort(latencies)
	at := func(q float64) int64 {
		if len(latencies) == 0 {
			return 0
		}
		return latencies[min(len(latencies)-1, int(q*float64(len(latencies))))].Microseconds()
	}
	return result{Cycles: len(latencies), P50Us: at(0.50), P99Us: at(0.99)}
}
