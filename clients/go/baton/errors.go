package baton

import (
	"errors"
	"fmt"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	batonv1 "github.com/baton-dev/baton/clients/go/gen/baton/v1"
)

// Error is a failed Baton call, with the details Baton attaches to every error. Branch on
// Code and [ReasonOf] (or use errors.Is with the Err* values below), never on Message.
type Error struct {
	// Code is the gRPC status code.
	Code codes.Code
	// Reason is google.rpc.ErrorInfo.reason as sent: the name of a [batonv1.ErrorReason]
	// value such as "LEASE_NOT_HELD"; empty when the server sent none (e.g. a transport
	// failure). Compare [ReasonOf] with the generated constants rather than this string.
	Reason string
	// Field names the offending request field of an INVALID_ARGUMENT (google.rpc.BadRequest).
	Field string
	// RetryAfter is google.rpc.RetryInfo.retry_delay: how long to wait before retrying an
	// UNAVAILABLE call; zero when the server gave no advice.
	RetryAfter time.Duration
	// Message is the server's human-readable text, for logs only.
	Message string

	status *status.Status
}

// Sentinels for errors.Is: an *Error matches one when the codes agree and, where the
// sentinel has a Reason, the reasons agree too.
var (
	ErrInvalidArgument    = &Error{Code: codes.InvalidArgument}
	ErrFailedPrecondition = &Error{Code: codes.FailedPrecondition}
	ErrUnavailable        = &Error{Code: codes.Unavailable}
	ErrAborted            = &Error{Code: codes.Aborted}
	ErrAlreadyExists      = &Error{Code: codes.AlreadyExists}
	ErrNotFound           = &Error{Code: codes.NotFound}
	ErrResourceExhausted  = &Error{Code: codes.ResourceExhausted}
	ErrDeadlineExceeded   = &Error{Code: codes.DeadlineExceeded}
	ErrUnauthenticated    = &Error{Code: codes.Unauthenticated}
	ErrPermissionDenied   = &Error{Code: codes.PermissionDenied}

	// ErrLeaseNotHeld: the lease expired, was released, or is not a current holder.
	ErrLeaseNotHeld = reasonSentinel(codes.FailedPrecondition, batonv1.ErrorReason_LEASE_NOT_HELD)
	// ErrStorageUnavailable: Baton could not reach Redis; retry after RetryAfter.
	ErrStorageUnavailable = reasonSentinel(codes.Unavailable, batonv1.ErrorReason_STORAGE_UNAVAILABLE)
	// ErrVersionMismatch: a compare-and-set ([WithIfVersion], [SessionUpdate.IfVersion]) found
	// the entry at another version.
	ErrVersionMismatch = reasonSentinel(codes.Aborted, batonv1.ErrorReason_VERSION_MISMATCH)
	// ErrFillTokenStale: a Fill whose token is no longer the current one (a write came first).
	ErrFillTokenStale = reasonSentinel(codes.FailedPrecondition, batonv1.ErrorReason_FILL_TOKEN_STALE)
	// ErrSessionNotFound: the session id is unknown, expired, deleted, rotated away or revoked.
	ErrSessionNotFound = reasonSentinel(codes.NotFound, batonv1.ErrorReason_SESSION_NOT_FOUND)
	// ErrSessionExists: CreateSession with a client-chosen id that is already in use.
	ErrSessionExists = reasonSentinel(codes.AlreadyExists, batonv1.ErrorReason_SESSION_EXISTS)
	// ErrJobNotLeased: Ack, Nack or Extend with a lease that is no longer the job's current one.
	ErrJobNotLeased = reasonSentinel(codes.FailedPrecondition, batonv1.ErrorReason_JOB_NOT_LEASED)
)

// reasonSentinel spells the sentinel's reason the way the server does: ErrorInfo.reason is
// the enum value's name.
func reasonSentinel(code codes.Code, reason batonv1.ErrorReason) *Error {
	return &Error{Code: code, Reason: reason.String()}
}

// ReasonOf returns the ErrorInfo reason of err as the generated enum, so callers compare it
// with constants (batonv1.ErrorReason_LEASE_NOT_HELD) rather than strings. err may be an
// *Error, wrap one, or come straight from a generated stub. It is
// ERROR_REASON_UNSPECIFIED when err is nil, carries no reason, or carries one these stubs
// do not know (sent by a newer server: the string stays in [Error.Reason]).
func ReasonOf(err error) batonv1.ErrorReason {
	var mapped *Error
	if !errors.As(FromError(err), &mapped) {
		return batonv1.ErrorReason_ERROR_REASON_UNSPECIFIED
	}
	return mapped.reason()
}

func (e *Error) reason() batonv1.ErrorReason {
	// A missing name maps to 0, which is ERROR_REASON_UNSPECIFIED.
	return batonv1.ErrorReason(batonv1.ErrorReason_value[e.Reason])
}

func (e *Error) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("baton: %s: %s", e.Code, e.Message)
	}
	return fmt.Sprintf("baton: %s (%s): %s", e.Code, e.Reason, e.Message)
}

// Is makes errors.Is(err, baton.ErrLeaseNotHeld) and similar work.
func (e *Error) Is(target error) bool {
	sentinel, ok := target.(*Error)
	if !ok || sentinel.status != nil {
		return false
	}
	return sentinel.Code == e.Code && (sentinel.Reason == "" || sentinel.Reason == e.Reason)
}

// GRPCStatus lets status.FromError and status.Code see through an *Error.
func (e *Error) GRPCStatus() *status.Status {
	if e.status == nil {
		return status.New(e.Code, e.Message)
	}
	return e.status
}

// FromError turns an error returned by a generated stub into an *Error, reading
// ErrorInfo, RetryInfo and BadRequest from the status details. Errors that carry no gRPC
// status (nil included) are returned unchanged.
func FromError(err error) error {
	if err == nil {
		return nil
	}
	var already *Error
	if errors.As(err, &already) {
		return err
	}
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	mapped := &Error{Code: st.Code(), Message: st.Message(), status: st}
	for _, detail := range st.Details() {
		switch detail := detail.(type) {
		case *errdetails.ErrorInfo:
			mapped.Reason = detail.GetReason()
		case *errdetails.RetryInfo:
			mapped.RetryAfter = detail.GetRetryDelay().AsDuration()
		case *errdetails.BadRequest:
			if violations := detail.GetFieldViolations(); len(violations) > 0 {
				mapped.Field = violations[0].GetField()
			}
		}
	}
	return mapped
}

func codeOf(err error) codes.Code {
	return status.Code(err)
}
