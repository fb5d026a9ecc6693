package baton_test

import (
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

func TestAllowAdmitsUpToTheLimitThenDenies(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	key := unique("login")
	for want := uint64(2); ; want-- {
		decision, err := client.Allow(ctx, key, 3, time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if !decision.Allowed || decision.Remaining != want || decision.Limit != 3 {
			t.Fatalf("request %d: got %+v, want allowed with %d remaining of 3", 3-want, decision, want)
		}
		if want == 0 {
			break
		}
	}
	denied, err := client.Allow(ctx, key, 3, time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if denied.Allowed || denied.RetryAfter <= 0 || denied.RetryAfter > time.Minute {
		t.Fatalf("fourth request: got %+v, want denied with 0 < RetryAfter <= 1m", denied)
	}
}

func TestAllowWithCostAndTokenBucket(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	key := unique("upload")
	bucket := []baton.AllowOption{baton.WithAlgorithm(baton.TokenBucket), baton.WithBurst(10)}
	first, err := client.Allow(ctx, key, 1, time.Hour, append(bucket, baton.WithCost(8))...)
	if err != nil || !first.Allowed || first.Remaining != 2 {
		t.Fatalf("cost 8 of a burst of 10: got %+v, %v; want allowed, 2 remaining", first, err)
	}
	second, err := client.Allow(ctx, key, 1, time.Hour, append(bucket, baton.WithCost(3))...)
	if err != nil || second.Allowed {
		t.Fatalf("cost 3 with 2 left: got %+v, %v; want denied", second, err)
	}
}
