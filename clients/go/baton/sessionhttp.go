package baton

import (
	"bufio"
	"context"
	"errors"
	"maps"
	"math"
	"net"
	"net/http"
	"strings"
	"time"
)

// DefaultSessionCookie is the name of the cookie that carries the session id.
const DefaultSessionCookie = "baton_session"

// persistentCookieKey is the data key under which a session remembers, across requests,
// whether [WebSession.SetLifetime] asked for a persistent cookie ("1") or a browser-session
// one ("0"). [WebSession] hides it from Data; applications should not use it.
const persistentCookieKey = "_baton_persistent_cookie"

// ErrSessionHeadersSent: a session change that needs a new cookie — the first write of an
// anonymous session, Login, Rotate, SetLifetime — came after the response's headers were
// sent, so the browser could never learn it. Nothing was changed: make session changes
// before writing the response.
var ErrSessionHeadersSent = errors.New("baton: the session changed after the response headers were sent")

var errNoSessionMiddleware = errors.New("baton: the request did not pass through SessionManager.Middleware")

// SessionManager keeps net/http sessions in Baton, so every replica of a web service sees
// the same sessions and "log out everywhere" works: wrap the handlers with
// [SessionManager.Middleware] and read and write the request's session with [SessionFrom].
//
// Every visitor has a session, anonymous until [SessionManager.Login]: the first
// [WebSession.Set] stores it in Baton and sets its cookie (a cart, a flash message, CSRF
// state), and a visitor who never stores anything costs no write and gets no cookie. Login
// turns it into a signed-in session under a new id (against session fixation), keeping
// its data, and ends the anonymous one; Logout and LogoutEverywhere end it.
//
// The cookie holds only the secret session id. It is written when the response's headers
// go out, so a handler may change the session any number of times before that; with it go
// "Vary: Cookie" and `Cache-Control: no-cache="Set-Cookie"`, so that no shared cache hands
// one visitor's id to another.
//
// The zero value of every field but Client is usable.
type SessionManager struct {
	Client *Client
	// CookieName defaults to [DefaultSessionCookie].
	CookieName string
	// CookiePath defaults to "/".
	CookiePath   string
	CookieDomain string
	// Secure sets the cookie's Secure attribute: do so whenever the site is served over HTTPS.
	Secure bool
	// SameSite defaults to http.SameSiteLaxMode. The cookie is always HttpOnly.
	SameSite http.SameSite
	// PersistentCookies gives every session's cookie Expires and Max-Age at the session's
	// deadline (its idle deadline, capped at its absolute one, rewritten as it slides), so
	// the cookie outlives the browser. When false (the default) the browser forgets the
	// cookie when it closes. [WebSession.SetLifetime] overrides it per session.
	PersistentCookies bool
	// IdleTimeout and AbsoluteTimeout are every new session's, anonymous or signed in,
	// unless [WebSession.SetLifetime] says otherwise; they default to the server's (30 min
	// and 24 h unless configured).
	IdleTimeout     time.Duration
	AbsoluteTimeout time.Duration
	// ErrorHandler answers a request whose session could not be read because Baton failed
	// (not because the session ended). Default: 503 Service Unavailable.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)
}

// WebSession is the session of one request, anonymous or signed in; its methods write
// through to Baton. It belongs to its request: use it from one goroutine at a time.
type WebSession struct {
	// Session is never nil. Until the session is stored (an anonymous visitor who has not
	// written anything) it has empty Data, no Subject, no Handle and zero times.
	*Session

	manager *SessionManager
	request *http.Request
	// id is the secret session id; empty until the session is stored.
	id string
	// persistentCookie is what SetLifetime chose for this session; nil follows the manager.
	persistentCookie *bool
	// lifetime is what SetLifetime asked for during this request: the timeouts a session
	// created later in the request (first write, Login) starts with.
	lifetime *SessionLifetime
	// cookieChanged: the browser must be sent a new cookie (new id, new persistence) or be
	// told to forget it.
	cookieChanged bool
	// headersSent: too late to send any cookie.
	headersSent bool
}

// SessionLifetime is how long one session lives and whether its cookie outlives the
// browser; see [WebSession.SetLifetime].
type SessionLifetime struct {
	// IdleTimeout, when non-zero, ends the session this long after it was last seen.
	IdleTimeout time.Duration
	// AbsoluteTimeout, when non-zero, ends the session this long after its creation,
	// however active; it may lengthen or shorten the session, and one already past ends it.
	AbsoluteTimeout time.Duration
	// PersistentCookie gives the cookie Expires and Max-Age at the session's deadline, so it
	// survives the browser closing ("remember me"); false makes it a browser-session cookie,
	// whatever [SessionManager.PersistentCookies] says.
	PersistentCookie bool
}

// Get returns the value of key in the session's data.
func (s *WebSession) Get(key string) ([]byte, bool) {
	value, ok := s.Data[key]
	return value, ok
}

// LoggedIn reports whether the session belongs to a user (started by Login), rather than
// to an anonymous visitor.
func (s *WebSession) LoggedIn() bool {
	return s.id != "" && s.Subject != ""
}

// Set stores key in the session's data. The first Set of an anonymous visitor creates the
// session in Baton and its cookie, so it must come before the response's headers are sent
// ([ErrSessionHeadersSent]); later ones may come at any time.
func (s *WebSession) Set(ctx context.Context, key string, value []byte) error {
	if s.id == "" {
		id, stored, err := s.create(ctx, "", map[string][]byte{key: value})
		if err != nil {
			return err
		}
		s.adopt(id, stored)
		s.cookieChanged = true
		return nil
	}
	return s.update(ctx, SessionUpdate{Set: map[string][]byte{key: value}})
}

// Remove deletes keys from the session's data; a session not stored yet stays so.
func (s *WebSession) Remove(ctx context.Context, keys ...string) error {
	if s.id == "" {
		return nil
	}
	return s.update(ctx, SessionUpdate{Remove: keys})
}

// SetLifetime changes how long the session lives from now on and whether its cookie
// outlives the browser, e.g. for "remember me" after Login:
//
//	session.SetLifetime(ctx, baton.SessionLifetime{IdleTimeout: 30 * 24 * time.Hour,
//		AbsoluteTimeout: 90 * 24 * time.Hour, PersistentCookie: true})
//
// The cookie's Expires and Max-Age then follow the session's deadline; the choice is kept
// in the session's data under a key of the adapter's own, hidden from Data. On a session not
// stored yet it writes nothing: the lifetime applies when the first Set or Login creates
// it. Login starts a session with the lifetime asked for earlier in the same request, else
// the manager's. It must come before the response's headers are sent
// ([ErrSessionHeadersSent]); [ErrSessionNotFound] when the session ended, including when
// a shorter AbsoluteTimeout ends it.
func (s *WebSession) SetLifetime(ctx context.Context, lifetime SessionLifetime) error {
	if s.headersSent {
		return ErrSessionHeadersSent
	}
	if s.id != "" {
		err := s.update(ctx, SessionUpdate{
			Set:             map[string][]byte{persistentCookieKey: flag(lifetime.PersistentCookie)},
			IdleTimeout:     lifetime.IdleTimeout,
			AbsoluteTimeout: lifetime.AbsoluteTimeout,
		})
		if err != nil {
			return err
		}
		s.cookieChanged = true
	}
	s.lifetime = &lifetime
	s.persistentCookie = &lifetime.PersistentCookie
	return nil
}

func (s *WebSession) update(ctx context.Context, update SessionUpdate) error {
	updated, err := s.manager.Client.UpdateSession(ctx, s.id, update)
	if errors.Is(err, ErrSessionNotFound) {
		// Ended elsewhere (revoked, expired): the rest of the request is anonymous, and the
		// dead cookie goes. Writing the change to a new session instead would bring a
		// revoked session's data back.
		s.reset()
	}
	if err != nil {
		return err
	}
	s.adopt(s.id, updated)
	return nil
}

// create stores a new session with this request's lifetime and cookie choice; the caller
// adopts it.
func (s *WebSession) create(ctx context.Context, subject string, data map[string][]byte) (string, *Session, error) {
	if s.headersSent {
		return "", nil, ErrSessionHeadersSent
	}
	m := s.manager
	idle, absolute := m.IdleTimeout, m.AbsoluteTimeout
	if s.lifetime != nil {
		idle = positiveOr(s.lifetime.IdleTimeout, idle)
		absolute = positiveOr(s.lifetime.AbsoluteTimeout, absolute)
	}
	if s.persistentCookie != nil {
		data = maps.Clone(data)
		data[persistentCookieKey] = flag(*s.persistentCookie)
	}
	return m.Client.CreateSession(ctx, subject, data,
		WithIdleTimeout(idle),
		WithAbsoluteTimeout(absolute),
		WithAttributes(requestAttributes(s.request)),
	)
}

// adopt makes stored, under id, the request's session.
func (s *WebSession) adopt(id string, stored *Session) {
	if stored.Data == nil {
		stored.Data = map[string][]byte{}
	}
	s.persistentCookie = nil
	if value, ok := stored.Data[persistentCookieKey]; ok {
		persistent := string(value) == "1"
		s.persistentCookie = &persistent
		delete(stored.Data, persistentCookieKey)
	}
	s.id, s.Session = id, stored
}

// reset makes the request's session a new anonymous one, not stored, and has the cookie of
// the one before cleared.
func (s *WebSession) reset() {
	if s.id != "" {
		s.cookieChanged = true
	}
	s.id, s.Session = "", &Session{Data: map[string][]byte{}}
	s.persistentCookie, s.lifetime = nil, nil
}

func (s *WebSession) persistent() bool {
	if s.persistentCookie != nil {
		return *s.persistentCookie
	}
	return s.manager.PersistentCookies
}

type webSessionKey struct{}

// SessionFrom is the request's session: never nil for a request that passed through
// [SessionManager.Middleware] (nil otherwise). A visitor who has not stored anything and
// has not logged in has an anonymous session that is not stored yet: check
// [WebSession.LoggedIn], not nil, before serving a signed-in page.
func SessionFrom(r *http.Request) *WebSession {
	session, _ := r.Context().Value(webSessionKey{}).(*WebSession)
	return session
}

// Middleware loads the session named by the request's cookie (sliding its idle timeout)
// for [SessionFrom], and sends the session's cookie when the response's headers go out. A
// cookie whose session has ended is cleared.
func (m *SessionManager) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		session := &WebSession{manager: m, request: r}
		session.reset()
		if cookie, err := r.Cookie(m.cookieName()); err == nil && cookie.Value != "" {
			stored, err := m.Client.GetSession(r.Context(), cookie.Value)
			switch {
			case err == nil:
				session.adopt(cookie.Value, stored)
			case errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidArgument):
				session.cookieChanged = true // ended, or never a Baton session id
			default:
				m.fail(w, r, err)
				return
			}
		}
		writer := &sessionWriter{ResponseWriter: w, session: session}
		next.ServeHTTP(writer, r.WithContext(context.WithValue(r.Context(), webSessionKey{}, session)))
		// A handler that wrote nothing: net/http sends the headers after this returns.
		writer.sendCookie()
	})
}

// Login signs subject in: it starts a session of subject under a new id and sets its
// cookie. The data of the request's session comes along when that session is anonymous
// or already subject's (a cart filled before signing in), with data written over it; a
// session of another user is ended without passing anything on. The session from before is
// dead once Login returns — a fresh id at every sign-in defeats session fixation — and if it
// cannot be ended, Login ends the new one too and fails. The new session has the lifetime
// SetLifetime asked for earlier in this request, else the manager's. Login returns the
// request's session, the one [SessionFrom] returns, now signed in; it must come before the
// response's headers are sent ([ErrSessionHeadersSent]).
func (m *SessionManager) Login(w http.ResponseWriter, r *http.Request, subject string, data map[string][]byte) (*WebSession, error) {
	session := SessionFrom(r)
	if session == nil {
		return nil, errNoSessionMiddleware
	}
	carried := map[string][]byte{}
	if session.id != "" && (session.Subject == "" || session.Subject == subject) {
		maps.Copy(carried, session.Data)
	}
	maps.Copy(carried, data)
	previousID, previousCookie := session.id, session.persistentCookie
	if session.lifetime == nil {
		// Remembering an anonymous visitor's cart is no reason to remember their sign-in.
		session.persistentCookie = nil
	}
	id, stored, err := session.create(r.Context(), subject, carried)
	if err != nil {
		session.persistentCookie = previousCookie
		return nil, err
	}
	if previousID != "" {
		if _, err := m.Client.DeleteSession(r.Context(), previousID); err != nil {
			// One sign-in, one live session: an id from before the sign-in (perhaps planted
			// by an attacker) must not outlive it. The request may be cancelled by now.
			_, _ = m.Client.DeleteSession(context.WithoutCancel(r.Context()), id)
			session.persistentCookie = previousCookie
			return nil, err
		}
	}
	session.adopt(id, stored)
	session.cookieChanged = true
	return session, nil
}

// Rotate gives the request's session a new id and cookie, keeping its data: call it when
// the user's privileges change. A session not stored yet has no id to rotate.
func (m *SessionManager) Rotate(w http.ResponseWriter, r *http.Request) error {
	session := SessionFrom(r)
	if session == nil {
		return errNoSessionMiddleware
	}
	if session.id == "" {
		return nil
	}
	if session.headersSent {
		return ErrSessionHeadersSent
	}
	id, rotated, err := m.Client.RotateSession(r.Context(), session.id)
	if errors.Is(err, ErrSessionNotFound) {
		session.reset()
	}
	if err != nil {
		return err
	}
	session.adopt(id, rotated)
	session.cookieChanged = true
	return nil
}

// Logout ends the request's session and clears its cookie; the rest of the request sees a
// new anonymous session. Even after the response's headers were sent it ends the session
// (the browser's dead cookie is cleared on its next request).
func (m *SessionManager) Logout(w http.ResponseWriter, r *http.Request) error {
	session := SessionFrom(r)
	if session == nil {
		return errNoSessionMiddleware
	}
	id := session.id
	session.reset()
	if id == "" {
		return nil
	}
	_, err := m.Client.DeleteSession(r.Context(), id)
	return err
}

// LogoutEverywhere ends every session of the request's user, on every device (an
// anonymous session: just this one), clears this request's cookie, and returns how many
// sessions it ended.
func (m *SessionManager) LogoutEverywhere(w http.ResponseWriter, r *http.Request) (uint64, error) {
	session := SessionFrom(r)
	if session == nil {
		return 0, errNoSessionMiddleware
	}
	id, subject := session.id, session.Subject
	session.reset()
	switch {
	case id == "":
		return 0, nil
	case subject == "":
		deleted, err := m.Client.DeleteSession(r.Context(), id)
		if deleted {
			return 1, err
		}
		return 0, err
	default:
		return m.Client.RevokeSessions(r.Context(), subject)
	}
}

// sessionWriter sends the session's cookie at the last moment it can: just before the
// response's headers.
type sessionWriter struct {
	http.ResponseWriter
	session *WebSession
}

func (w *sessionWriter) WriteHeader(code int) {
	// 1xx answers other than 101 are interim (103 Early Hints): the final headers follow.
	if code >= 200 || code == http.StatusSwitchingProtocols {
		w.sendCookie()
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *sessionWriter) Write(body []byte) (int, error) {
	w.sendCookie()
	return w.ResponseWriter.Write(body)
}

// Flush keeps http.Flusher (and http.ResponseController's Flush) working through the
// middleware.
func (w *sessionWriter) Flush() {
	w.sendCookie()
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

// Hijack keeps http.Hijacker (websockets) working through the middleware.
func (w *sessionWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	conn, buffered, err := http.NewResponseController(w.ResponseWriter).Hijack()
	if err == nil {
		w.session.headersSent = true
	}
	return conn, buffered, err
}

// Unwrap lets http.ResponseController reach the writer's other features (deadlines,
// full duplex).
func (w *sessionWriter) Unwrap() http.ResponseWriter {
	return w.ResponseWriter
}

func (w *sessionWriter) sendCookie() {
	s := w.session
	if s.headersSent {
		return
	}
	s.headersSent = true
	m := s.manager
	var cookie *http.Cookie
	switch {
	case s.id == "" && s.cookieChanged:
		cookie = m.cookie("")
		cookie.MaxAge, cookie.Expires = -1, time.Unix(1, 0)
	case s.id != "" && s.persistent():
		// Sent on every request, changed or not: the idle deadline slides with each one.
		cookie = m.cookie(s.id)
		deadline := s.IdleExpiresAt
		if deadline.IsZero() || s.AbsoluteExpiresAt.Before(deadline) {
			deadline = s.AbsoluteExpiresAt
		}
		cookie.Expires = deadline.Truncate(time.Second).Add(time.Second)
		cookie.MaxAge = max(1, int(math.Ceil(time.Until(deadline).Seconds())))
	case s.id != "" && s.cookieChanged:
		cookie = m.cookie(s.id)
	default:
		return
	}
	http.SetCookie(w.ResponseWriter, cookie)
	header := w.Header()
	addHeaderValue(header, "Vary", "Cookie")
	addHeaderValue(header, "Cache-Control", `no-cache="Set-Cookie"`)
}

func addHeaderValue(header http.Header, key, value string) {
	for _, present := range header.Values(key) {
		if present == value {
			return
		}
	}
	header.Add(key, value)
}

func (m *SessionManager) fail(w http.ResponseWriter, r *http.Request, err error) {
	if m.ErrorHandler != nil {
		m.ErrorHandler(w, r, err)
		return
	}
	http.Error(w, "sessions are unavailable, try again shortly", http.StatusServiceUnavailable)
}

func (m *SessionManager) cookieName() string {
	if m.CookieName == "" {
		return DefaultSessionCookie
	}
	return m.CookieName
}

// cookie is the session cookie without an expiry: a browser-session cookie.
func (m *SessionManager) cookie(value string) *http.Cookie {
	path := m.CookiePath
	if path == "" {
		path = "/"
	}
	sameSite := m.SameSite
	if sameSite == 0 {
		sameSite = http.SameSiteLaxMode
	}
	return &http.Cookie{
		Name:     m.cookieName(),
		Value:    value,
		Path:     path,
		Domain:   m.CookieDomain,
		Secure:   m.Secure,
		HttpOnly: true,
		SameSite: sameSite,
	}
}

func flag(on bool) []byte {
	if on {
		return []byte("1")
	}
	return []byte("0")
}

func positiveOr(value, fallback time.Duration) time.Duration {
	if value > 0 {
		return value
	}
	return fallback
}

// requestAttributes describe a session in ListSessions ("your devices").
func requestAttributes(r *http.Request) map[string]string {
	attributes := map[string]string{}
	if host, _, err := net.SplitHostPort(r.RemoteAddr); err == nil {
		attributes["ip"] = host
	}
	if agent := r.UserAgent(); agent != "" {
		// Baton bounds attribute values at 1024 bytes; a cut must stay valid UTF-8.
		attributes["user_agent"] = strings.ToValidUTF8(agent[:min(len(agent), 1024)], "")
	}
	return attributes
}
