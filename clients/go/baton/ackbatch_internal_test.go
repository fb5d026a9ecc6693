package baton

import (
	"slices"
	"testing"
	"time"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// When a call is due: full by count or by bytes, overdue, or none in flight; the waiting
// acks' byte total stays the sum of what waits.
func TestAnAckBatchIsDueWhenFullByCountOrBytesOverdueOrNoneInFlight(t *testing.T) {
	const kib = 1 << 10
	defer SetAckBatchDelay(10 * time.Millisecond)()
	start := time.Now()
	// timerArmed: the test looks at the waiting acks itself, and there is no client to call.
	a := &ackCoalescer{maxBatch: 4, timerArmed: true}
	push := func(bytes int) {
		a.waiting = append(a.waiting, &pendingAck{request: &batonv1.AckRequest{Result: make([]byte, bytes)}, queuedAt: start})
		a.waitingBytes += bytes
	}
	take := func(inFlight int, now time.Time) [][]int {
		a.inFlight = inFlight
		var sizes [][]int
		for _, batch := range a.takeLocked(now) {
			var batchSizes []int
			for _, pending := range batch {
				batchSizes = append(batchSizes, len(pending.request.GetResult()))
			}
			sizes = append(sizes, batchSizes)
		}
		return sizes
	}
	expect := func(step string, got [][]int, want ...[]int) {
		t.Helper()
		if !slices.EqualFunc(got, want, slices.Equal[[]int]) {
			t.Fatalf("%s: calls %v, want %v", step, got, want)
		}
	}
	for range 3 {
		push(10)
	}
	expect("3 small acks wait for the call in flight", take(1, start))
	expect("none in flight: they go at once", take(0, start), []int{10, 10, 10})
	for range 5 {
		push(10)
	}
	expect("a full call goes, one is left", take(1, start), []int{10, 10, 10, 10})
	expect("overdue", take(1, start.Add(10*time.Millisecond)), []int{10})
	push(2048 * kib)
	expect("a lone ack over the byte bound is not a full call", take(1, start))
	push(10)
	expect("over the bound with two: the big one goes alone", take(1, start), []int{2048 * kib})
	push(600 * kib)
	push(600 * kib)
	expect("three would pass 1 MiB", take(1, start), []int{10, 600 * kib})
	if len(a.waiting) != 1 || a.waitingBytes != 600*kib {
		t.Fatalf("%d acks of %d bytes wait, want 1 of %d", len(a.waiting), a.waitingBytes, 600*kib)
	}
	expect("the last", take(0, start), []int{600 * kib})
	if a.waitingBytes != 0 {
		t.Fatalf("%d bytes counted with no ack waiting", a.waitingBytes)
	}
}
