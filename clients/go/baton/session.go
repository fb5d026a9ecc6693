package baton

import (
	"context"
	"time"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// Session is a session's public view; it never holds the secret session id.
type Session struct {
	// Handle is a public, non-secret id for listing and revoking; it changes on rotation.
	Handle     string
	Subject    string
	Data       map[string][]byte
	Attributes map[string]string
	// Version changes on every update of Data; see [SessionUpdate.IfVersion].
	Version           uint64
	CreatedAt         time.Time
	LastSeenAt        time.Time
	IdleExpiresAt     time.Time
	AbsoluteExpiresAt time.Time
}

func sessionOf(s *batonv1.Session) *Session {
	return &Session{
		Handle:            s.GetHandle(),
		Subject:           s.GetSubject(),
		Data:              s.GetData(),
		Attributes:        s.GetAttributes(),
		Version:           s.GetVersion(),
		CreatedAt:         s.GetCreatedAt().AsTime(),
		LastSeenAt:        s.GetLastSeenAt().AsTime(),
		IdleExpiresAt:     s.GetIdleExpiresAt().AsTime(),
		AbsoluteExpiresAt: s.GetAbsoluteExpiresAt().AsTime(),
	}
}

// SessionOption tunes [Client.CreateSession].
type SessionOption func(*batonv1.CreateSessionRequest)

// WithSessionID uses id instead of a server-generated one, for frameworks that pick their
// own ids: 22..=256 characters of [A-Za-z0-9_-] (at least 128 bits of entropy). An id in
// use fails with [ErrSessionExists]. Never reuse the id of a session that ended: that would
// bring it back for whoever still holds the old cookie.
func WithSessionID(id string) SessionOption {
	return func(r *batonv1.CreateSessionRequest) { r.SessionId = id }
}

// WithIdleTimeout ends the session after this long without being seen (default: the
// server's, 30 min unless configured).
func WithIdleTimeout(timeout time.Duration) SessionOption {
	return func(r *batonv1.CreateSessionRequest) { r.IdleTimeout = optionalDuration(timeout) }
}

// WithAbsoluteTimeout ends the session this long after its creation, however active
// (default: the server's, 24 h unless configured).
func WithAbsoluteTimeout(timeout time.Duration) SessionOption {
	return func(r *batonv1.CreateSessionRequest) { r.AbsoluteTimeout = optionalDuration(timeout) }
}

// WithAttributes describes the session in listings ("ip", "user_agent", …).
func WithAttributes(attributes map[string]string) SessionOption {
	return func(r *batonv1.CreateSessionRequest) { r.Attributes = attributes }
}

// CreateSession starts a session of subject (a user id) with data, and returns its secret id:
// hand it to the user agent (in a cookie), never log it. Not retried: a retry after a lost
// answer would start a second session.
func (c *Client) CreateSession(ctx context.Context, subject string, data map[string][]byte, options ...SessionOption) (string, *Session, error) {
	request := &batonv1.CreateSessionRequest{Subject: subject, Data: data}
	for _, option := range options {
		option(request)
	}
	response, err := c.Sessions.CreateSession(ctx, request)
	if err != nil {
		return "", nil, FromError(err)
	}
	return response.GetSessionId(), sessionOf(response.GetSession()), nil
}

// GetSession reads a session and slides its idle timeout; [ErrSessionNotFound] when it has
// ended. Retried on UNAVAILABLE.
func (c *Client) GetSession(ctx context.Context, id string) (*Session, error) {
	return c.getSession(ctx, id, false)
}

// PeekSession reads a session without sliding its idle timeout.
func (c *Client) PeekSession(ctx context.Context, id string) (*Session, error) {
	return c.getSession(ctx, id, true)
}

func (c *Client) getSession(ctx context.Context, id string, noTouch bool) (*Session, error) {
	var response *batonv1.GetSessionResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Sessions.GetSession(ctx, &batonv1.GetSessionRequest{SessionId: id, NoTouch: noTouch})
		return err
	})
	if err != nil {
		return nil, err
	}
	return sessionOf(response.GetSession()), nil
}

// SessionUpdate is one atomic change of a session's data and, optionally, of its lifetime.
type SessionUpdate struct {
	Set    map[string][]byte
	Remove []string
	// IfVersion, when non-zero, applies the change only at this version (else
	// [ErrVersionMismatch]).
	IfVersion uint64
	// IdleTimeout, when non-zero, replaces the session's idle timeout from now on: its idle
	// deadline moves to now + IdleTimeout, earlier or later, never past its absolute
	// deadline. For sites that decide a session's lifetime per request (express-session's
	// cookie.maxAge, Django's set_expiry, "remember me"). Same range as at creation
	// (100 ms up to the server's maximum).
	IdleTimeout time.Duration
	// AbsoluteTimeout, when non-zero, replaces the session's absolute timeout, still
	// counted from its creation: it may lengthen ("remember me") or shorten the session. A
	// deadline that is already past ends the session: the update fails with
	// [ErrSessionNotFound] and the session is gone.
	AbsoluteTimeout time.Duration
}

// UpdateSession applies update (and slides the idle timeout); [ErrSessionNotFound] when the
// session has ended — an update never brings one back. Not retried: with IfVersion, a
// retry after a lost answer would report [ErrVersionMismatch] for its own first attempt.
func (c *Client) UpdateSession(ctx context.Context, id string, update SessionUpdate) (*Session, error) {
	response, err := c.Sessions.UpdateSession(ctx, &batonv1.UpdateSessionRequest{
		SessionId:       id,
		Set:             update.Set,
		Remove:          update.Remove,
		IfVersion:       update.IfVersion,
		IdleTimeout:     optionalDuration(update.IdleTimeout),
		AbsoluteTimeout: optionalDuration(update.AbsoluteTimeout),
	})
	if err != nil {
		return nil, FromError(err)
	}
	return sessionOf(response.GetSession()), nil
}

// RotateSession gives the session a new id (returned) and kills the old one, keeping its
// data: call it when privileges change, against session fixation. Not retried: a lost answer
// would lose the new id.
func (c *Client) RotateSession(ctx context.Context, id string) (string, *Session, error) {
	response, err := c.Sessions.RotateSession(ctx, &batonv1.RotateSessionRequest{SessionId: id})
	if err != nil {
		return "", nil, FromError(err)
	}
	return response.GetSessionId(), sessionOf(response.GetSession()), nil
}

// DeleteSession ends a session (log-out); false when it had already ended. Retried on
// UNAVAILABLE.
func (c *Client) DeleteSession(ctx context.Context, id string) (bool, error) {
	var response *batonv1.DeleteSessionResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Sessions.DeleteSession(ctx, &batonv1.DeleteSessionRequest{SessionId: id})
		return err
	})
	return response.GetDeleted(), err
}

// ListSessions lists subject's live sessions, oldest first ("your devices").
func (c *Client) ListSessions(ctx context.Context, subject string) ([]*Session, error) {
	var response *batonv1.ListSessionsResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Sessions.ListSessions(ctx, &batonv1.ListSessionsRequest{Subject: subject})
		return err
	})
	if err != nil {
		return nil, err
	}
	sessions := make([]*Session, 0, len(response.GetSessions()))
	for _, session := range response.GetSessions() {
		sessions = append(sessions, sessionOf(session))
	}
	return sessions, nil
}

type revokeConfig struct {
	handles []string
	except  string
}

// RevokeOption narrows [Client.RevokeSessions].
type RevokeOption func(*revokeConfig)

// OnlyHandles revokes just these sessions instead of all of the subject's.
func OnlyHandles(handles ...string) RevokeOption {
	return func(c *revokeConfig) { c.handles = handles }
}

// ExceptHandle keeps this session (typically the caller's own: "log out other devices").
func ExceptHandle(handle string) RevokeOption {
	return func(c *revokeConfig) { c.except = handle }
}

// RevokeSessions ends every session of subject ("log out everywhere"), or those options
// name, and returns how many it ended. Not retried: a retry would also end sessions started
// in between.
func (c *Client) RevokeSessions(ctx context.Context, subject string, options ...RevokeOption) (uint64, error) {
	var cfg revokeConfig
	for _, option := range options {
		option(&cfg)
	}
	response, err := c.Sessions.RevokeSessions(ctx, &batonv1.RevokeSessionsRequest{
		Subject:      subject,
		Handles:      cfg.handles,
		ExceptHandle: cfg.except,
	})
	if err != nil {
		return 0, FromError(err)
	}
	return response.GetRevoked(), nil
}

// CountSessions counts the live sessions of the client's tenant, logged in or anonymous
// (express-session's store.length). Its cost grows with the number of sessions: for tests
// and admin tools, not per request. Retried on UNAVAILABLE.
func (c *Client) CountSessions(ctx context.Context) (uint64, error) {
	var response *batonv1.CountSessionsResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Sessions.CountSessions(ctx, &batonv1.CountSessionsRequest{})
		return err
	})
	return response.GetLive(), err
}

// ClearSessions ends every session of the client's tenant, logged in or anonymous
// (express-session's store.clear), and returns how many it ended; sessions created while
// it runs may survive it. Retried on UNAVAILABLE: a retry only ends what the first attempt
// missed.
func (c *Client) ClearSessions(ctx context.Context) (uint64, error) {
	var response *batonv1.ClearSessionsResponse
	err := c.retryUnavailable(ctx, func(ctx context.Context) (err error) {
		response, err = c.Sessions.ClearSessions(ctx, &batonv1.ClearSessionsRequest{})
		return err
	})
	return response.GetCleared(), err
}
