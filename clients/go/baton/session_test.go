package baton_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cookiejar"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
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

// webApp is a site with sessions kept by baton.SessionManager, served over real HTTP.
func webApp(t *testing.T, client *baton.Client) string {
	t.Helper()
	sessions := &baton.SessionManager{Client: client}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		// A real site checks a password first.
		if _, err := sessions.Login(w, r, r.FormValue("user"), map[string][]byte{"theme": []byte("dark")}); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("GET /me", func(w http.ResponseWriter, r *http.Request) {
		session := baton.SessionFrom(r)
		if session == nil {
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		theme, _ := session.Get("theme")
		fmt.Fprintf(w, "%s %s", session.Subject, theme)
	})
	mux.HandleFunc("POST /theme", func(w http.ResponseWriter, r *http.Request) {
		session := baton.SessionFrom(r)
		if session == nil {
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		if err := session.Set(r.Context(), "theme", []byte(r.FormValue("theme"))); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /logout-everywhere", func(w http.ResponseWriter, r *http.Request) {
		revoked, err := sessions.LogoutEverywhere(w, r)
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		fmt.Fprint(w, revoked)
	})
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	site := &http.Server{Handler: sessions.Middleware(mux), ReadHeaderTimeout: 5 * time.Second}
	go site.Serve(listener)
	t.Cleanup(func() { site.Shutdown(context.Background()) })
	return "http://" + listener.Addr().String()
}

// browser is one device: an HTTP client with its own cookie jar.
type browser struct {
	t    *testing.T
	site string
	http *http.Client
}

func newBrowser(t *testing.T, site string) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, site: site, http: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
}

func (b *browser) do(method, path string, form url.Values) (int, string) {
	b.t.Helper()
	request, err := http.NewRequest(method, b.site+path, strings.NewReader(form.Encode()))
	if err != nil {
		b.t.Fatal(err)
	}
	request.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	response, err := b.http.Do(request)
	if err != nil {
		b.t.Fatal(err)
	}
	defer response.Body.Close()
	body, _ := io.ReadAll(response.Body)
	return response.StatusCode, string(body)
}

func TestSessionMiddlewareLoginReadAndLogOutEverywhere(t *testing.T) {
	client, _ := server(t)
	site := webApp(t, client)
	ada := unique("ada")
	laptop, phone, bobsLaptop := newBrowser(t, site), newBrowser(t, site), newBrowser(t, site)

	if status, body := laptop.do("GET", "/me", nil); status != http.StatusUnauthorized {
		t.Fatalf("before login: %d %q", status, body)
	}
	for _, device := range []*browser{laptop, phone} {
		if status, body := device.do("POST", "/login", url.Values{"user": {ada}}); status != http.StatusOK {
			t.Fatalf("login: %d %q", status, body)
		}
	}
	if status, body := bobsLaptop.do("POST", "/login", url.Values{"user": {unique("bob")}}); status != http.StatusOK {
		t.Fatalf("login: %d %q", status, body)
	}
	if status, body := phone.do("POST", "/theme", url.Values{"theme": {"light"}}); status != http.StatusOK {
		t.Fatalf("set theme: %d %q", status, body)
	}
	if status, body := laptop.do("GET", "/me", nil); status != http.StatusOK || body != ada+" dark" {
		t.Fatalf("laptop after login: %d %q", status, body)
	}
	if status, body := phone.do("GET", "/me", nil); status != http.StatusOK || body != ada+" light" {
		t.Fatalf("phone after login: %d %q", status, body)
	}

	if status, body := laptop.do("POST", "/logout-everywhere", nil); status != http.StatusOK || body != "2" {
		t.Fatalf("log out everywhere: %d %q, want both of ada's sessions revoked", status, body)
	}
	for name, device := range map[string]*browser{"laptop": laptop, "phone": phone} {
		if status, body := device.do("GET", "/me", nil); status != http.StatusUnauthorized {
			t.Fatalf("%s after logging out everywhere: %d %q", name, status, body)
		}
	}
	if status, _ := bobsLaptop.do("GET", "/me", nil); status != http.StatusOK {
		t.Fatalf("another user's session ended too: %d", status)
	}
}
