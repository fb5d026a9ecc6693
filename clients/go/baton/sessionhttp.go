package baton

import (
	"context"
	"errors"
	"net"
	"net/http"
	"strings"
	"time"
)

// DefaultSessionCookie is the name of the cookie that carries the session id.
const DefaultSessionCookie = "baton_session"

// SessionManager keeps net/http sessions in Baton, so every replica of a web service sees
// the same sessions and "log out everywhere" works: wrap the handlers with
// [SessionManager.Middleware], read the session with [SessionFrom], and start and end it
// with Login, Logout and LogoutEverywhere. The cookie holds only the secret session id.
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
	// IdleTimeout and AbsoluteTimeout default to the server's (30 min and 24 h unless
	// configured).
	IdleTimeout     time.Duration
	AbsoluteTimeout time.Duration
	// ErrorHandler answers a request whose session could not be read because Baton failed
	// (not because the session ended). Default: 503 Service Unavailable.
	ErrorHandler func(w http.ResponseWriter, r *http.Request, err error)
}

// WebSession is the session of one request; its methods write through to Baton.
type WebSession struct {
	*Session
	id     string
	client *Client
}

// Get returns the value of key in the session's data.
func (s *WebSession) Get(key string) ([]byte, bool) {
	value, ok := s.Data[key]
	return value, ok
}

// Set stores key in the session's data.
func (s *WebSession) Set(ctx context.Context, key string, value []byte) error {
	return s.update(ctx, SessionUpdate{Set: map[string][]byte{key: value}})
}

// Remove deletes keys from the session's data.
func (s *WebSession) Remove(ctx context.Context, keys ...string) error {
	return s.update(ctx, SessionUpdate{Remove: keys})
}

func (s *WebSession) update(ctx context.Context, update SessionUpdate) error {
	updated, err := s.client.UpdateSession(ctx, s.id, update)
	if err != nil {
		return err
	}
	s.Session = updated
	return nil
}

// sessionSlot is what the middleware puts in the request's context: a slot rather than the
// session itself, so that Login and Logout change what later handlers of the same request see.
type sessionSlot struct{ session *WebSession }

type sessionSlotKey struct{}

// SessionFrom is the request's session, or nil when it has none (not logged in, or the
// session ended). The request must have passed through [SessionManager.Middleware].
func SessionFrom(r *http.Request) *WebSession {
	if slot, ok := r.Context().Value(sessionSlotKey{}).(*sessionSlot); ok {
		return slot.session
	}
	return nil
}

// Middleware loads the session named by the request's cookie (sliding its idle timeout)
// for [SessionFrom]. A cookie whose session has ended is cleared.
func (m *SessionManager) Middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		slot := &sessionSlot{}
		if cookie, err := r.Cookie(m.cookieName()); err == nil && cookie.Value != "" {
			session, err := m.Client.GetSession(r.Context(), cookie.Value)
			switch {
			case err == nil:
				slot.session = &WebSession{Session: session, id: cookie.Value, client: m.Client}
			case errors.Is(err, ErrNotFound) || errors.Is(err, ErrInvalidArgument):
				m.clearCookie(w) // ended, or never a Baton session id
			default:
				m.fail(w, r, err)
				return
			}
		}
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), sessionSlotKey{}, slot)))
	})
}

// Login starts a session of subject with data and sets its cookie. A session the request
// already had is ended: a fresh id at every login defeats session fixation.
func (m *SessionManager) Login(w http.ResponseWriter, r *http.Request, subject string, data map[string][]byte) (*WebSession, error) {
	slot := m.slot(r)
	options := []SessionOption{
		WithIdleTimeout(m.IdleTimeout),
		WithAbsoluteTimeout(m.AbsoluteTimeout),
		WithAttributes(requestAttributes(r)),
	}
	id, session, err := m.Client.CreateSession(r.Context(), subject, data, options...)
	if err != nil {
		return nil, err
	}
	if slot.session != nil {
		// Best effort: the old session only lingers until its idle timeout if this fails.
		_, _ = m.Client.DeleteSession(r.Context(), slot.session.id)
	}
	slot.session = &WebSession{Session: session, id: id, client: m.Client}
	m.setCookie(w, id)
	return slot.session, nil
}

// Rotate gives the request's session a new id and cookie, keeping its data: call it when the
// user's privileges change.
func (m *SessionManager) Rotate(w http.ResponseWriter, r *http.Request) error {
	slot := m.slot(r)
	if slot.session == nil {
		return nil
	}
	id, session, err := m.Client.RotateSession(r.Context(), slot.session.id)
	if err != nil {
		return err
	}
	slot.session = &WebSession{Session: session, id: id, client: m.Client}
	m.setCookie(w, id)
	return nil
}

// Logout ends the request's session and clears its cookie.
func (m *SessionManager) Logout(w http.ResponseWriter, r *http.Request) error {
	slot := m.slot(r)
	m.clearCookie(w)
	if slot.session == nil {
		return nil
	}
	id := slot.session.id
	slot.session = nil
	_, err := m.Client.DeleteSession(r.Context(), id)
	return err
}

// LogoutEverywhere ends every session of the request's subject, on every device, and clears
// this request's cookie; it returns how many sessions it ended.
func (m *SessionManager) LogoutEverywhere(w http.ResponseWriter, r *http.Request) (uint64, error) {
	slot := m.slot(r)
	m.clearCookie(w)
	if slot.session == nil {
		return 0, nil
	}
	subject := slot.session.Subject
	slot.session = nil
	return m.Client.RevokeSessions(r.Context(), subject)
}

func (m *SessionManager) slot(r *http.Request) *sessionSlot {
	if slot, ok := r.Context().Value(sessionSlotKey{}).(*sessionSlot); ok {
		return slot
	}
	// Outside the middleware: nothing to see, and nothing to end.
	return &sessionSlot{}
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

func (m *SessionManager) cookie(value string, maxAge int) *http.Cookie {
	path := m.CookiePath
	if path == "" {
		path = "/"
	}
	sameSite := m.SameSite
	if sameSite == 0 {
		sameSite = http.SameSiteLaxMode
	}
	// No Expires: Baton decides when the session ends, and the browser forgets the cookie
	// when it closes.
	return &http.Cookie{
		Name:     m.cookieName(),
		Value:    value,
		Path:     path,
		Domain:   m.CookieDomain,
		MaxAge:   maxAge,
		Secure:   m.Secure,
		HttpOnly: true,
		SameSite: sameSite,
	}
}

func (m *SessionManager) setCookie(w http.ResponseWriter, id string) {
	http.SetCookie(w, m.cookie(id, 0))
}

func (m *SessionManager) clearCookie(w http.ResponseWriter) {
	http.SetCookie(w, m.cookie("", -1))
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
