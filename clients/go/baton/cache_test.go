package baton_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

func TestCacheSetGetDeleteAndCompareAndSet(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	key := unique("user")
	first, err := client.CacheSet(ctx, key, []byte("v1"), time.Minute, baton.WithTags("users"))
	if err != nil {
		t.Fatal(err)
	}
	entry, found, err := client.CacheGet(ctx, key)
	if err != nil || !found || string(entry.Value) != "v1" || entry.Version != first.Version {
		t.Fatalf("CacheGet: %+v %v %v, want v1 at version %d", entry, found, err, first.Version)
	}
	if _, err := client.CacheSet(ctx, key, []byte("v2"), time.Minute, baton.WithIfVersion(first.Version)); err != nil {
		t.Fatal(err)
	}
	_, err = client.CacheSet(ctx, key, []byte("v3"), time.Minute, baton.WithIfVersion(first.Version))
	if !errors.Is(err, baton.ErrVersionMismatch) {
		t.Fatalf("a write at an old version: got %v, want ErrVersionMismatch", err)
	}
	_, err = client.CacheSet(ctx, key, []byte("v3"), time.Minute, baton.WithIfAbsent())
	if !errors.Is(err, baton.ErrAlreadyExists) {
		t.Fatalf("if-absent on a present key: got %v, want ErrAlreadyExists", err)
	}
	if deleted, err := client.CacheDelete(ctx, key); err != nil || !deleted {
		t.Fatalf("CacheDelete: %v %v", deleted, err)
	}
	if _, found, err := client.CacheGet(ctx, key); err != nil || found {
		t.Fatalf("after delete: found %v, err %v", found, err)
	}

	if _, err := client.CacheSet(ctx, key, []byte("tagged"), time.Minute, baton.WithTags("users")); err != nil {
		t.Fatal(err)
	}
	if err := client.InvalidateTag(ctx, "users"); err != nil {
		t.Fatal(err)
	}
	if _, found, _ := client.CacheGet(ctx, key); found {
		t.Fatal("an entry of an invalidated tag is still found")
	}
}

func TestGetOrLoadRunsOneLoaderFor50ConcurrentCallers(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	// Five connections, as if five processes: one loader must win across all of them.
	clients := []*baton.Client{client}
	for range 4 {
		clients = append(clients, connect(t, client.Conn().Target()))
	}
	key := unique("profile")
	var loads atomic.Int32
	load := func(context.Context) ([]byte, error) {
		loads.Add(1)
		time.Sleep(200 * time.Millisecond) // a slow database
		return []byte(`{"name":"Ada"}`), nil
	}
	start := make(chan struct{})
	var wg sync.WaitGroup
	values := make([]string, 50)
	errs := make([]error, 50)
	for i := range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			value, err := clients[i%len(clients)].GetOrLoad(ctx, key, time.Minute, load)
			values[i], errs[i] = string(value), err
		}()
	}
	close(start)
	wg.Wait()
	for i := range 50 {
		if errs[i] != nil || values[i] != `{"name":"Ada"}` {
			t.Fatalf("caller %d: %q, %v", i, values[i], errs[i])
		}
	}
	if n := loads.Load(); n != 1 {
		t.Fatalf("the loader ran %d times for 50 concurrent callers, want once", n)
	}
}

func TestGetOrLoadHandsTheLoadOnWhenTheLoaderFails(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	key := unique("profile")
	loading, fail := make(chan struct{}), make(chan struct{})
	firstErr := make(chan error, 1)
	go func() {
		_, err := client.GetOrLoad(ctx, key, time.Minute, func(context.Context) ([]byte, error) {
			close(loading)
			<-fail
			return nil, errors.New("database down")
		}, baton.WithLoadTimeout(time.Minute))
		firstErr <- err
	}()
	<-loading
	second := make(chan string, 1)
	go func() {
		value, _ := client.GetOrLoad(ctx, key, time.Minute, func(context.Context) ([]byte, error) {
			return []byte("from the second loader"), nil
		})
		second <- string(value)
	}()
	time.Sleep(100 * time.Millisecond) // the second caller is now waiting on the first's load
	failedAt := time.Now()
	close(fail)
	if err := <-firstErr; err == nil || err.Error() != "database down" {
		t.Fatalf("the failing caller got %v, want its loader's error", err)
	}
	// Abandoned, not left to its one-minute load timeout.
	select {
	case value := <-second:
		if value != "from the second loader" || time.Since(failedAt) > 3*time.Second {
			t.Fatalf("the waiting caller got %q after %s", value, time.Since(failedAt))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting caller was not handed the load")
	}
}
