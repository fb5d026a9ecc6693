// An email job queue with a worker: the sign-up handler enqueues a welcome email (once per
// user, thanks to the dedup key, however often the request is retried), and workers send
// them, retried with backoff when the mail server fails.
//
// Run against `make run`'s baton (from the repository root, in other terminals):
//
//	cd clients/go && go run ./examples/email-queue worker    # as many as you like; Ctrl-C stops one
//	cd clients/go && go run ./examples/email-queue enqueue ada@example.com
//
// BATON_TARGET overrides the default localhost:50051.
package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"math/rand/v2"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

const queue = "emails"

func main() {
	client, err := baton.New(target())
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	switch {
	case len(os.Args) == 3 && os.Args[1] == "enqueue":
		enqueue(client, os.Args[2])
	case len(os.Args) == 2 && os.Args[1] == "worker":
		work(client)
	default:
		log.Fatalf("usage: %s worker | enqueue ADDRESS", os.Args[0])
	}
}

func enqueue(client *baton.Client, address string) {
	job, err := client.Enqueue(context.Background(), queue, []byte(address),
		baton.WithJobType("welcome"),
		baton.WithDedupKey("welcome:"+address, 24*time.Hour),
		baton.WithMaxAttempts(5),
		baton.WithRetryBackoff(time.Second, time.Minute, 2))
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("job %s (duplicate: %v)", job.JobID, job.Duplicate)
}

func work(client *baton.Client) {
	// SIGTERM (Kubernetes) or Ctrl-C: Baton delivers nothing more, the jobs prefetched but
	// not started go back to the queue at once (no attempt charged), and the ones running get
	// up to 10 s to finish and be acked; Consume returns as soon as they have.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log.Print("worker ready")
	err := client.Consume(ctx, queue, 4, sendWelcome,
		baton.WithPrefetch(4),
		baton.WithShutdownGrace(10*time.Second),
		baton.WithOnSettled(func(job *baton.Job, err error) {
			log.Printf("job %s attempt %d: %v", job.ID, job.Attempt, errOrAcked(err))
		}))
	if err != nil {
		log.Fatal(err)
	}
}

func sendWelcome(ctx context.Context, job *baton.Job) ([]byte, error) {
	if rand.IntN(3) == 0 {
		return nil, errors.New("smtp: 421 service not available") // nacked: retried after backoff
	}
	select {
	case <-time.After(200 * time.Millisecond):
	case <-ctx.Done(): // cancelled, or the shutdown grace ran out: the job is not acked
		return nil, ctx.Err()
	}
	return []byte(fmt.Sprint("sent to ", string(job.Payload))), nil
}

func errOrAcked(err error) any {
	if err == nil {
		return "acked"
	}
	return err
}

func target() string {
	if target := os.Getenv("BATON_TARGET"); target != "" {
		return target
	}
	return "localhost:50051"
}
