package baton_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

func TestMain(m *testing.M) {
	// The child process of TestTwoWorkersOneKilledMidJob.
	if target := os.Getenv("DOOMED_WORKER_TARGET"); target != "" {
		runDoomedWorker(target, os.Getenv("DOOMED_WORKER_QUEUE"))
		return
	}
	// The child process of TestAFrozenHolderIsReportedLostBeforeTheLockChangesHands.
	if target := os.Getenv("LOCK_HOLDER_TARGET"); target != "" {
		runLockHolder(target, os.Getenv("LOCK_HOLDER_NAME"))
		return
	}
	os.Exit(m.Run())
}

// server starts a private redis-server and baton for one test and returns a client for it.
func server(t *testing.T, options ...baton.Option) (*baton.Client, *batontest.Redis) {
	t.Helper()
	redis := batontest.StartRedis(t)
	replica := batontest.StartBaton(t, redis, "127.0.0.1:0")
	return connect(t, replica.Addr, options...), redis
}

func connect(t *testing.T, target string, options ...baton.Option) *baton.Client {
	t.Helper()
	client, err := baton.New(target, options...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	return client
}

func testContext(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// unique names keep tests independent even on a shared Redis.
func unique(prefix string) string {
	var suffix [6]byte
	_, _ = rand.Read(suffix[:])
	return prefix + ":" + hex.EncodeToString(suffix[:])
}
