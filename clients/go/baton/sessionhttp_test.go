package baton_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/baton-dev/baton/clients/go/baton"
)

// webApp is a shop with sessions kept by baton.SessionManager, served over real HTTP:
// anonymous visitors fill a cart, sign in (optionally "remember me") and out.
func webApp(t *testing.T, sessions *baton.SessionManager) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /cart", func(w http.ResponseWriter, r *http.Request) {
		cart, ok := baton.SessionFrom(r).Get("cart")
		if !ok {
			cart = []byte("empty")
		}
		w.Write(cart)
	})
	mux.HandleFunc("POST /cart", func(w http.ResponseWriter, r *http.Request) {
		session := baton.SessionFrom(r)
		var err error
		if r.FormValue("remember") == "on" {
			err = session.SetLifetime(r.Context(), rememberMe)
		}
		if err == nil {
			err = session.Set(r.Context(), "cart", []byte(r.FormValue("item")))
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /cart-after-the-headers", func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusAccepted)
		err := baton.SessionFrom(r).Set(r.Context(), "cart", []byte(r.FormValue("item")))
		fmt.Fprint(w, errors.Is(err, baton.ErrSessionHeadersSent))
	})
	mux.HandleFunc("POST /remember-me", func(w http.ResponseWriter, r *http.Request) {
		if err := baton.SessionFrom(r).SetLifetime(r.Context(), rememberMe); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /login", func(w http.ResponseWriter, r *http.Request) {
		// A real site checks a password first.
		session, err := sessions.Login(w, r, r.FormValue("user"), map[string][]byte{"theme": []byte("dark")})
		if err == nil && r.FormValue("remember") == "on" {
			err = session.SetLifetime(r.Context(), rememberMe)
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("GET /me", func(w http.ResponseWriter, r *http.Request) {
		session := baton.SessionFrom(r)
		if !session.LoggedIn() {
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		theme, _ := session.Get("theme")
		cart, _ := session.Get("cart")
		fmt.Fprintf(w, "%s %s %s", session.Subject, theme, cart)
	})
	mux.HandleFunc("POST /theme", func(w http.ResponseWriter, r *http.Request) {
		session := baton.SessionFrom(r)
		if !session.LoggedIn() {
			http.Error(w, "not logged in", http.StatusUnauthorized)
			return
		}
		if err := session.Set(r.Context(), "theme", []byte(r.FormValue("theme"))); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
		}
	})
	mux.HandleFunc("POST /logout", func(w http.ResponseWriter, r *http.Request) {
		if err := sessions.Logout(w, r); err != nil {
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
	site := httptest.NewServer(sessions.Middleware(mux))
	t.Cleanup(site.Close)
	return site.URL
}

var rememberMe = baton.SessionLifetime{IdleTimeout: 7 * 24 * time.Hour, AbsoluteTimeout: 30 * 24 * time.Hour, PersistentCookie: true}

// browser is one device: an HTTP client with its own cookie jar.
type browser struct {
	t    *testing.T
	site *url.URL
	jar  http.CookieJar
	http *http.Client
}

func newBrowser(t *testing.T, site string) *browser {
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	siteURL, err := url.Parse(site)
	if err != nil {
		t.Fatal(err)
	}
	return &browser{t: t, site: siteURL, jar: jar, http: &http.Client{Jar: jar, Timeout: 10 * time.Second}}
}

func (b *browser) do(method, path string, form url.Values) (int, string) {
	b.t.Helper()
	response, body := b.exchange(method, path, form)
	return response.StatusCode, body
}

// exchange is do with the whole response, for its headers.
func (b *browser) exchange(method, path string, form url.Values) (*http.Response, string) {
	b.t.Helper()
	request, err := http.NewRequest(method, b.site.String()+path, strings.NewReader(form.Encode()))
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
	return response, string(body)
}

// sessionID is the session cookie the browser holds ("" for none).
func (b *browser) sessionID() string {
	for _, cookie := range b.jar.Cookies(b.site) {
		if cookie.Name == baton.DefaultSessionCookie {
			return cookie.Value
		}
	}
	return ""
}

// setSessionID plants a session cookie, as an attacker would for session fixation.
func (b *browser) setSessionID(id string) {
	b.jar.SetCookies(b.site, []*http.Cookie{{Name: baton.DefaultSessionCookie, Value: id, Path: "/"}})
}

// sessionCookie is the session cookie a response sets, or nil.
func sessionCookie(response *http.Response) *http.Cookie {
	for _, cookie := range response.Cookies() {
		if cookie.Name == baton.DefaultSessionCookie {
			return cookie
		}
	}
	return nil
}

var batonSessionID = regexp.MustCompile(`^[A-Za-z0-9_-]{43}$`)

func TestAnonymousVisitorKeepsACartAcrossRequests(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	site := webApp(t, &baton.SessionManager{Client: client})
	visitor, other := newBrowser(t, site), newBrowser(t, site)

	response, body := visitor.exchange("POST", "/cart", url.Values{"item": {"1 book"}})
	if response.StatusCode != http.StatusOK {
		t.Fatalf("first write of an anonymous visitor: %d %q", response.StatusCode, body)
	}
	cookie := sessionCookie(response)
	if cookie == nil || !cookie.HttpOnly || cookie.MaxAge != 0 || !cookie.Expires.IsZero() {
		t.Fatalf("the first write sets an HttpOnly browser-session cookie; got %v", cookie)
	}
	if vary := response.Header.Values("Vary"); !slices.Contains(vary, "Cookie") {
		t.Fatalf("a response that sets the session cookie must vary on Cookie for caches; Vary: %q", vary)
	}
	if got := response.Header.Values("Cache-Control"); !slices.Contains(got, `no-cache="Set-Cookie"`) {
		t.Fatalf(`a response that sets the session cookie must keep shared caches from storing it; Cache-Control: %q`, got)
	}
	// The cookie is the secret id alone: the data stays in Baton, under no subject.
	if !batonSessionID.MatchString(cookie.Value) {
		t.Fatalf("cookie value %q is not a Baton session id", cookie.Value)
	}
	stored, err := client.PeekSession(ctx, cookie.Value)
	if err != nil || stored.Subject != "" || string(stored.Data["cart"]) != "1 book" {
		t.Fatalf("the anonymous session in Baton: %+v, %v", stored, err)
	}

	if status, body := visitor.do("POST", "/cart", url.Values{"item": {"2 books"}}); status != http.StatusOK {
		t.Fatalf("second write: %d %q", status, body)
	}
	if status, body := visitor.do("GET", "/cart", nil); status != http.StatusOK || body != "2 books" {
		t.Fatalf("the cart on a later request: %d %q, want 2 books", status, body)
	}
	if visitor.sessionID() != cookie.Value {
		t.Fatalf("a write to a stored session changed its id")
	}
	if status, body := other.do("GET", "/cart", nil); status != http.StatusOK || body != "empty" {
		t.Fatalf("another visitor's cart: %d %q, want empty", status, body)
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 1 {
		t.Fatalf("sessions after two writes by one visitor and a read by another: %d, %v; want 1", live, err)
	}
	if status, body := visitor.do("GET", "/me", nil); status != http.StatusUnauthorized {
		t.Fatalf("an anonymous session is not logged in: %d %q", status, body)
	}
}

func TestVisitorsWhoStoreNothingGetNoSessionAndNoCookie(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	site := webApp(t, &baton.SessionManager{Client: client})
	for _, request := range []struct{ method, path string }{
		{"GET", "/cart"}, {"GET", "/me"}, {"POST", "/remember-me"}, {"POST", "/logout"}, {"POST", "/cart-after-the-headers"},
	} {
		visitor := newBrowser(t, site)
		response, body := visitor.exchange(request.method, request.path, url.Values{"item": {"1 book"}})
		if cookies := response.Header.Values("Set-Cookie"); len(cookies) != 0 {
			t.Fatalf("%s %s by a new visitor set %q", request.method, request.path, cookies)
		}
		if request.path == "/cart-after-the-headers" && body != "true" {
			t.Fatalf("a first write after the headers were sent: got %q, want ErrSessionHeadersSent", body)
		}
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 0 {
		t.Fatalf("sessions stored for visitors who stored nothing: %d, %v; want 0", live, err)
	}

	// A cookie naming no session is cleared, and still nothing is stored.
	stale := newBrowser(t, site)
	stale.setSessionID("ended-session-0123456789abcdef")
	response, _ := stale.exchange("GET", "/cart", nil)
	if cookie := sessionCookie(response); cookie == nil || cookie.MaxAge >= 0 {
		t.Fatalf("a cookie naming no session: got %v, want it cleared", cookie)
	}
	if stale.sessionID() != "" {
		t.Fatal("the browser kept a cookie naming no session")
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 0 {
		t.Fatalf("sessions after a stale cookie was read: %d, %v; want 0", live, err)
	}
}

func TestLoginKeepsTheAnonymousDataAndKillsTheAnonymousID(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	site := webApp(t, &baton.SessionManager{Client: client})
	ada := unique("ada")
	visitor := newBrowser(t, site)
	if status, body := visitor.do("POST", "/cart", url.Values{"item": {"1 book"}}); status != http.StatusOK {
		t.Fatalf("anonymous write: %d %q", status, body)
	}
	anonymousID := visitor.sessionID()
	// An attacker who planted or learned the anonymous id before the sign-in.
	attacker := newBrowser(t, site)
	attacker.setSessionID(anonymousID)

	if status, body := visitor.do("POST", "/login", url.Values{"user": {ada}}); status != http.StatusOK {
		t.Fatalf("login: %d %q", status, body)
	}
	loggedInID := visitor.sessionID()
	if loggedInID == "" || loggedInID == anonymousID {
		t.Fatalf("login must give the session a new id; before %q, after %q", anonymousID, loggedInID)
	}
	if status, body := visitor.do("GET", "/me", nil); status != http.StatusOK || body != ada+" dark 1 book" {
		t.Fatalf("after login: %d %q, want the login's data and the anonymous cart", status, body)
	}
	if _, err := client.PeekSession(ctx, anonymousID); !errors.Is(err, baton.ErrSessionNotFound) {
		t.Fatalf("the anonymous id after login: got %v, want ErrSessionNotFound", err)
	}
	if status, body := attacker.do("GET", "/me", nil); status != http.StatusUnauthorized {
		t.Fatalf("the pre-login id after login: %d %q, want not logged in", status, body)
	}
	if status, body := attacker.do("GET", "/cart", nil); status != http.StatusOK || body != "empty" {
		t.Fatalf("the pre-login id still reaches the cart: %d %q", status, body)
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 1 {
		t.Fatalf("sessions after one anonymous visit and one login: %d, %v; want 1", live, err)
	}

	// Another user signing in on the same browser does not inherit ada's session.
	bob := unique("bob")
	if status, body := visitor.do("POST", "/login", url.Values{"user": {bob}}); status != http.StatusOK {
		t.Fatalf("second login: %d %q", status, body)
	}
	if status, body := visitor.do("GET", "/me", nil); status != http.StatusOK || body != bob+" dark " {
		t.Fatalf("bob after ada on one browser: %d %q, want no cart of ada's", status, body)
	}
	if _, err := client.PeekSession(ctx, loggedInID); !errors.Is(err, baton.ErrSessionNotFound) {
		t.Fatalf("ada's session after bob signed in on her browser: got %v, want it ended", err)
	}

	if status, body := visitor.do("POST", "/logout", nil); status != http.StatusOK {
		t.Fatalf("logout: %d %q", status, body)
	}
	if visitor.sessionID() != "" {
		t.Fatal("logout left the cookie")
	}
	if live, err := client.CountSessions(ctx); err != nil || live != 0 {
		t.Fatalf("sessions after logout: %d, %v; want 0", live, err)
	}
}

func TestRememberMeLengthensTheSessionAndTheCookieFollows(t *testing.T) {
	client, _ := server(t)
	ctx := testContext(t)
	site := webApp(t, &baton.SessionManager{Client: client, IdleTimeout: 30 * time.Minute, AbsoluteTimeout: 12 * time.Hour})
	forgetful, remembered := newBrowser(t, site), newBrowser(t, site)

	response, body := forgetful.exchange("POST", "/login", url.Values{"user": {unique("ada")}})
	if response.StatusCode != http.StatusOK {
		t.Fatalf("login: %d %q", response.StatusCode, body)
	}
	if cookie := sessionCookie(response); cookie == nil || cookie.MaxAge != 0 || !cookie.Expires.IsZero() {
		t.Fatalf("login without remember-me: cookie %v, want one that ends with the browser", cookie)
	}
	session, err := client.PeekSession(ctx, forgetful.sessionID())
	if err != nil || session.AbsoluteExpiresAt.Sub(session.CreatedAt) != 12*time.Hour {
		t.Fatalf("login without remember-me: %+v, %v; want the manager's 12 h", session, err)
	}

	response, body = remembered.exchange("POST", "/login", url.Values{"user": {unique("bob")}, "remember": {"on"}})
	if response.StatusCode != http.StatusOK {
		t.Fatalf("login with remember-me: %d %q", response.StatusCode, body)
	}
	session, err = client.PeekSession(ctx, remembered.sessionID())
	if err != nil {
		t.Fatal(err)
	}
	if got := session.AbsoluteExpiresAt.Sub(session.CreatedAt); got != rememberMe.AbsoluteTimeout {
		t.Fatalf("remember-me: absolute timeout %s, want %s", got, rememberMe.AbsoluteTimeout)
	}
	if got := session.IdleExpiresAt.Sub(session.LastSeenAt); got != rememberMe.IdleTimeout {
		t.Fatalf("remember-me: idle timeout %s, want %s", got, rememberMe.IdleTimeout)
	}
	assertCookieFollows(t, "login with remember-me", sessionCookie(response), session)

	// Every later request re-sends the cookie: its expiry slides with the idle deadline.
	response, body = remembered.exchange("GET", "/me", nil)
	if response.StatusCode != http.StatusOK {
		t.Fatalf("a remembered session on a later request: %d %q", response.StatusCode, body)
	}
	session, err = client.PeekSession(ctx, remembered.sessionID())
	if err != nil {
		t.Fatal(err)
	}
	assertCookieFollows(t, "a later request", sessionCookie(response), session)
	if response, _ := forgetful.exchange("GET", "/me", nil); sessionCookie(response) != nil {
		t.Fatal("a browser-session cookie was re-sent on a request that changed nothing")
	}

	// Asked for before the first write of the request, the lifetime applies when that write
	// creates the session: one CreateSession, no update.
	early := newBrowser(t, site)
	response, body = early.exchange("POST", "/cart", url.Values{"item": {"1 book"}, "remember": {"on"}})
	if response.StatusCode != http.StatusOK {
		t.Fatalf("remember-me then a first write: %d %q", response.StatusCode, body)
	}
	session, err = client.PeekSession(ctx, early.sessionID())
	if err != nil || session.Version != 1 || session.AbsoluteExpiresAt.Sub(session.CreatedAt) != rememberMe.AbsoluteTimeout {
		t.Fatalf("remember-me then a first write: %+v, %v; want a session created with the remembered lifetime", session, err)
	}
	if got := session.IdleExpiresAt.Sub(session.LastSeenAt); got != rememberMe.IdleTimeout {
		t.Fatalf("remember-me then a first write: idle timeout %s, want %s", got, rememberMe.IdleTimeout)
	}
	assertCookieFollows(t, "remember-me then a first write", sessionCookie(response), session)

	// Remembering an anonymous cart is no reason to remember the sign-in that follows.
	response, body = early.exchange("POST", "/login", url.Values{"user": {unique("cyd")}})
	if response.StatusCode != http.StatusOK {
		t.Fatalf("login after a remembered cart: %d %q", response.StatusCode, body)
	}
	if cookie := sessionCookie(response); cookie == nil || cookie.MaxAge != 0 || !cookie.Expires.IsZero() {
		t.Fatalf("login without remember-me after a remembered cart: cookie %v, want one that ends with the browser", cookie)
	}
	session, err = client.PeekSession(ctx, early.sessionID())
	if err != nil || session.AbsoluteExpiresAt.Sub(session.CreatedAt) != 12*time.Hour || string(session.Data["cart"]) != "1 book" {
		t.Fatalf("login after a remembered cart: %+v, %v; want the cart, with the manager's 12 h", session, err)
	}
}

// assertCookieFollows checks a persistent cookie ends with its session.
func assertCookieFollows(t *testing.T, what string, cookie *http.Cookie, session *baton.Session) {
	t.Helper()
	if cookie == nil {
		t.Fatalf("%s: no session cookie sent", what)
	}
	deadline := session.IdleExpiresAt
	if got := cookie.Expires.Sub(deadline); got < -time.Second || got > time.Second {
		t.Fatalf("%s: cookie Expires %s, session deadline %s", what, cookie.Expires, deadline)
	}
	if got := time.Duration(cookie.MaxAge) * time.Second; got < time.Until(deadline)-time.Minute || got > time.Until(deadline)+time.Second {
		t.Fatalf("%s: cookie Max-Age %s, session deadline in %s", what, got, time.Until(deadline))
	}
}

func TestSessionMiddlewareLoginReadAndLogOutEverywhere(t *testing.T) {
	client, _ := server(t)
	site := webApp(t, &baton.SessionManager{Client: client})
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
	if status, body := laptop.do("GET", "/me", nil); status != http.StatusOK || body != ada+" dark " {
		t.Fatalf("laptop after login: %d %q", status, body)
	}
	if status, body := phone.do("GET", "/me", nil); status != http.StatusOK || body != ada+" light " {
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
