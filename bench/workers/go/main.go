// Command go measures end-to-end jobs/s through the Go client's own worker (Client.Consume):
// a few producers enqueue the jobs with EnqueueBatch while one worker consumes them with a
// handler that does nothing; the clock runs from the first enqueue to the last ack. It
// prints one JSON line. See ../README.md.
//
//	go run . ADDRESS [QUEUE] [JOBS] [CONCURRENCY] [BATCH]
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

const (
	producers = 4
	patience  = 5 * time.Minute
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "bench/workers/go:", err)
		os.Exit(1)
	}
}

func arg(i int, fallback int) (int, error) {
	if len(os.Args) <= i || os.Args[i] == "" {
		return fallback, nil
	}
	n, err := strconv.Atoi(os.Args[i])
	if err != nil || n <= 0 {
		return 0, fmt.Errorf("argument %d: want a positive integer, got %q", i, os.Args[i])
	}
	return n, nil
}

func run() error {
	if len(os.Args) < 2 {
		return fmt.Errorf("usage: go run . ADDRESS [QUEUE] [JOBS=20000] [CONCURRENCY=256] [BATCH=100]")
	}
	addr := os.Args[1]
	queue := fmt.Sprintf("bench-workers-go-%d", os.Getpid())
	if len(os.Args) > 2 && os.Args[2] != "" {
		queue = os.Args[2]
	}
	jobs, err := arg(3, 20_000)
	if err != nil {
		return err
	}
	concurrency, err := arg(4, 256)
	if err != nil {
		return err
	}
	batch, err := arg(5, 100)
	if err != nil {
		return err
	}
	// ACK_BATCH_SIZE=0 measures the worker without ack coalescing (one Ack per job).
	ackBatch, err := envCount("ACK_BATCH_SIZE", baton.DefaultAckBatchSize)
	if err != nil {
		return err
	}
	// PREFETCH leases that many jobs beyond the concurrency.
	prefetch, err := envCount("PREFETCH", 0)
	if err != nil {
		return err
	}

	client, err := baton.New(addr)
	if err != nil {
		return err
	}
	defer client.Close()

	var acked, failed atomic.Int64
	allAcked := make(chan struct{})
	// As bench/peers/bullmq.mjs measures BullMQ: the clock starts once the worker has acked
	// 4 × its concurrency (its ramp-up), and the rate counts the jobs acked after that.
	warmup := min(4*concurrency, jobs/2)
	warmed := make(chan time.Time, 1)
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	consumed := make(chan error, 1)
	go func() {
		consumed <- client.Consume(ctx, queue, concurrency,
			func(context.Context, *baton.Job) ([]byte, error) { return nil, nil },
			baton.WithAckBatchSize(ackBatch),
			baton.WithPrefetch(prefetch),
			baton.WithOnSettled(func(job *baton.Job, err error) {
				if err != nil {
					if failed.Add(1) <= 5 {
						fmt.Fprintf(os.Stderr, "job %s: %v\n", job.ID, err)
					}
					return
				}
				n := acked.Add(1)
				if n == int64(warmup) {
					warmed <- time.Now()
				}
				if n == int64(jobs) {
					close(allAcked)
				}
			}))
	}()

	payload := []byte("jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj") // 64 bytes
	started := time.Now()
	var producing sync.WaitGroup
	enqueueErrs := make(chan error, producers)
	for p := range producers {
		share := jobs/producers + btoi(p < jobs%producers)
		producing.Add(1)
		go func() {
			defer producing.Done()
			for share > 0 {
				n := min(share, batch)
				requests := make([]*batonv1.EnqueueRequest, n)
				for i := range requests {
					requests[i] = &batonv1.EnqueueRequest{Queue: queue, Payload: payload}
				}
				if _, err := client.Queue.EnqueueBatch(ctx, &batonv1.EnqueueBatchRequest{Requests: requests}); err != nil {
					enqueueErrs <- baton.FromError(err)
					return
				}
				share -= n
			}
		}()
	}
	producing.Wait()
	close(enqueueErrs)
	if err := <-enqueueErrs; err != nil {
		return fmt.Errorf("EnqueueBatch: %w", err)
	}
	select {
	case <-allAcked:
	case err := <-consumed:
		return fmt.Errorf("Consume returned early: %v", err)
	case <-time.After(patience):
		return fmt.Errorf("%d of %d jobs acked after %s", acked.Load(), jobs, patience)
	}
	from := started
	select {
	case from = <-warmed:
	default:
	}
	seconds := time.Since(from).Seconds()
	stop()
	if err := <-consumed; err != nil {
		return fmt.Errorf("Consume: %w", err)
	}
	if failed.Load() > 0 {
		return fmt.Errorf("%d deliveries were not acked", failed.Load())
	}
	return json.NewEncoder(os.Stdout).Encode(result{
		Client:       "go",
		Jobs:         jobs,
		Warmup:       warmup,
		Seconds:      round(seconds, 3),
		JobsPerS:     round(float64(jobs-warmup)/seconds, 0),
		Concurrency:  concurrency,
		AckBatchSize: ackBatch,
		Prefetch:     prefetch,
	})
}

// envCount reads a count from the environment: fallback when it is unset.
func envCount(name string, fallback int) (int, error) {
	value := os.Getenv(name)
	if value == "" {
		return fallback, nil
	}
	n, err := strconv.Atoi(value)
	if err != nil {
		return 0, fmt.Errorf("%s: %w", name, err)
	}
	return n, nil
}

// result is the JSON line, its fields in this order.
type result struct {
	Client       string  `json:"client"`
	Jobs         int     `json:"jobs"`
	Warmup       int     `json:"warmup"`
	Seconds      float64 `json:"seconds"`
	JobsPerS     float64 `json:"jobs_per_s"`
	Concurrency  int     `json:"concurrency"`
	AckBatchSize int     `json:"ack_batch_size"`
	Prefetch     int     `json:"prefetch"`
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func round(x float64, digits int) float64 {
	scale := 1.0
	for range digits {
		scale *= 10
	}
	return float64(int64(x*scale+0.5)) / scale
}
