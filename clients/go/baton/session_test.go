package baton_test

import (
	"errors"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
	"github.com/baton-dev/baton/clients/go/internal/batontest"
)

func TestSessionsCreateGetUpdateRotateAndRevoke(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	subject := unique("user")
	chosenID := "express-style-id-0123456789abcdef"
	id, created, err := client.CreateSession(ctx, subject, map[string][]byte{"cart": []byte("1 book")}, baton.WithSessionID(chosenID))
	if err != nil || id != chosenID {
		t.Fatalf("CreateSession with a chosen id: %q, %v", id, err)
	}
	if _, _, err := client.CreateSession(ctx, subject, nil, baton.WithSessionID(chosenID)); !errors.Is(err, baton.ErrSessionExists) {
		t.Fatalf("reusing a live id: got %v, want ErrSessionExists", err)
	}
	var invalid *baton.Error
	if _, _, err := client.CreateSession(ctx, subject, nil, baton.WithSessionID("short")); !errors.As(err, &invalid) ||
		!errors.Is(err, baton.ErrInvalidArgument) || invalid.Field != "session_id" {
		t.Fatalf("a malformed id: got %v, want INVALID_ARGUMENT on session_id", err)
	}

	updated, err := client.UpdateSession(ctx, id, baton.SessionUpdate{Set: map[string][]byte{"theme": []byte("dark")}, Remove: []string{"cart"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := client.UpdateSession(ctx, id, baton.SessionUpdate{Remove: []string{"theme"}, IfVersion: created.Version}); !errors.Is(err, baton.ErrVersionMismatch) {
		t.Fatalf("an update at an old version: got %v, want ErrVersionMismatch", err)
	}
	read, err := client.GetSession(ctx, id)
	if err != nil || read.Version != updated.Version || string(read.Data["theme"]) != "dark" || read.Data["cart"] != nil {
		t.Fatalf("GetSession: %+v, %v", read, err)
	}

	rotatedID, rotated, err := client.RotateSession(ctx, id)
	if err != nil || rotatedID == id || string(rotated.Data["theme"]) != "dark" {
		t.Fatalf("RotateSession: %q %+v %v", rotatedID, rotated, err)
	}
	if _, err := client.GetSession(ctx, id); !errors.Is(err, baton.ErrSessionNotFound) {
		t.Fatalf("the id rotated away: got %v, want ErrSessionNotFound", err)
	}

	otherID, _, err := client.CreateSession(ctx, subject, nil)
	if err != nil {
		t.Fatal(err)
	}
	if sessions, err := client.ListSessions(ctx, subject); err != nil || len(sessions) != 2 {
		t.Fatalf("ListSessions: %d sessions, %v; want 2", len(sessions), err)
	}
	revoked, err := client.RevokeSessions(ctx, subject, baton.ExceptHandle(rotated.Handle))
	if err != nil || revoked != 1 {
		t.Fatalf("RevokeSessions except one: %d, %v", revoked, err)
	}
	if _, err := client.GetSession(ctx, otherID); !errors.Is(err, baton.ErrSessionNotFound) {
		t.Fatalf("a revoked session: got %v", err)
	}
	if deleted, err := client.DeleteSession(ctx, rotatedID); err != nil || !deleted {
		t.Fatalf("DeleteSession: %v %v", deleted, err)
	}
}

func TestUpdateSessionChangesItsTimeouts(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	id, created, err := client.CreateSession(ctx, unique("user"), nil,
		baton.WithIdleTimeout(time.Hour), baton.WithAbsoluteTimeout(2*time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	if got := created.AbsoluteExpiresAt.Sub(created.CreatedAt); got != 2*time.Hour {
		t.Fatalf("absolute timeout at creation: %s, want 2h", got)
	}

	// "Remember me": both timeouts lengthen, the absolute one still counted from creation.
	remembered, err := client.UpdateSession(ctx, id, baton.SessionUpdate{IdleTimeout: 7 * 24 * time.Hour, AbsoluteTimeout: 30 * 24 * time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	if got := remembered.AbsoluteExpiresAt.Sub(remembered.CreatedAt); got != 30*24*time.Hour {
		t.Fatalf("absolute deadline after lengthening: created_at + %s, want + 720h", got)
	}
	if got := remembered.IdleExpiresAt.Sub(remembered.LastSeenAt); got != 7*24*time.Hour {
		t.Fatalf("idle deadline after lengthening: last_seen_at + %s, want + 168h", got)
	}
	if !remembered.CreatedAt.Equal(created.CreatedAt) {
		t.Fatalf("created_at moved: %s, was %s", remembered.CreatedAt, created.CreatedAt)
	}

	// The new idle timeout stays: a later plain update slides the deadline by it, not by 1 h.
	slid, err := client.UpdateSession(ctx, id, baton.SessionUpdate{Set: map[string][]byte{"k": []byte("v")}})
	if err != nil {
		t.Fatal(err)
	}
	if got := slid.IdleExpiresAt.Sub(slid.LastSeenAt); got < 7*24*time.Hour-time.Minute {
		t.Fatalf("a plain update after the change: idle deadline last_seen_at + %s, want about 168h", got)
	}

	// Shortening the idle timeout moves the deadline earlier at once.
	if _, err := client.UpdateSession(ctx, id, baton.SessionUpdate{IdleTimeout: 200 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	// Peek, not Get: a read that touches would keep sliding the 200 ms deadline.
	batontest.Eventually(t, 10*time.Second, "the session ends 200 ms after its idle timeout was shortened", func() bool {
		_, err := client.PeekSession(ctx, id)
		return errors.Is(err, baton.ErrSessionNotFound)
	})
}

func TestAnAbsoluteTimeoutAlreadyPastEndsTheSession(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	// A 2 s idle timeout makes every touching read move last_seen_at (touches are coalesced
	// to 1 % of the idle timeout), so last_seen_at shows the server's clock.
	id, created, err := client.CreateSession(ctx, unique("user"), map[string][]byte{"cart": []byte("1 book")}, baton.WithIdleTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the server's clock is past created_at + 100 ms (the shortest timeout).
	batontest.Eventually(t, 10*time.Second, "the server clock passes created_at + 150 ms", func() bool {
		read, err := client.GetSession(ctx, id)
		return err == nil && read.LastSeenAt.Sub(created.CreatedAt) > 150*time.Millisecond
	})
	if _, err := client.UpdateSession(ctx, id, baton.SessionUpdate{AbsoluteTimeout: 100 * time.Millisecond}); !errors.Is(err, baton.ErrSessionNotFound) {
		t.Fatalf("an absolute deadline already past: got %v, want ErrSessionNotFound", err)
	}
	if _, err := client.PeekSession(ctx, id); !errors.Is(err, baton.ErrSessionNotFound) {
		t.Fatalf("the session after its absolute deadline was moved into the past: got %v, want it gone", err)
	}
	var invalid *baton.Error
	if _, err := client.UpdateSession(ctx, "no-such-session-0123456789", baton.SessionUpdate{IdleTimeout: time.Millisecond}); !errors.As(err, &invalid) ||
		invalid.Code != baton.ErrInvalidArgument.Code || invalid.Field != "idle_timeout" {
		t.Fatalf("an idle timeout under the minimum: got %v, want INVALID_ARGUMENT on idle_timeout", err)
	}
}

func TestCountAndClearSessionsSeeEverySubjectAndNone(t *testing.T) {
	client, _ := server(t) // a private baton and Redis: the counts are exact
	ctx := testContext(t)
	if live, err := client.CountSessions(ctx); err != nil || live != 0 {
		t.Fatalf("CountSessions on an empty store: %d, %v", live, err)
	}
	ada, bob := unique("ada"), unique("bob")
	var ids []string
	for _, subject := range []string{ada, ada, bob, "", ""} { // "": anonymous sessions
		id, _, err := client.CreateSession(ctx, subject, map[string][]byte{"k": []byte("v")})
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 5 {
		t.Fatalf("CountSessions: %d, %v; want 5", live, err)
	}
	if _, err := client.DeleteSession(ctx, ids[3]); err != nil {
		t.Fatal(err)
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 4 {
		t.Fatalf("CountSessions after one deletion: %d, %v; want 4", live, err)
	}

	if cleared, err := client.ClearSessions(ctx); err != nil || cleared != 4 {
		t.Fatalf("ClearSessions: %d, %v; want 4", cleared, err)
	}
	for i, id := range ids {
		if _, err := client.PeekSession(ctx, id); !errors.Is(err, baton.ErrSessionNotFound) {
			t.Fatalf("session %d after ClearSessions: got %v, want ErrSessionNotFound", i, err)
		}
	}
	if sessions, err := client.ListSessions(ctx, ada); err != nil || len(sessions) != 0 {
		t.Fatalf("ListSessions after ClearSessions: %d, %v; want none", len(sessions), err)
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 0 {
		t.Fatalf("CountSessions after ClearSessions: %d, %v; want 0", live, err)
	}
	if cleared, err := client.ClearSessions(ctx); err != nil || cleared != 0 {
		t.Fatalf("ClearSessions again: %d, %v; want 0", cleared, err)
	}
	if _, _, err := client.CreateSession(ctx, ada, nil); err != nil {
		t.Fatalf("a session after ClearSessions: %v", err)
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 1 {
		t.Fatalf("CountSessions of a session created after the clear: %d, %v; want 1", live, err)
	}
}
