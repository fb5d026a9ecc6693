//! The one error type that crosses into gRPC, and its single mapping to `tonic::Status`
//! with `google.rpc.ErrorInfo`, `BadRequest` and `RetryInfo` details.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

pub use crate::proto::v1::ErrorReason as Reason;
use crate::store::StoreError;

/// The ErrorInfo domain of every Baton error.
pub const ERROR_DOMAIN: &str = "baton.v1";

/// How long clients are told to wait before retrying an UNAVAILABLE call: about one health
/// ping interval, the soonest Baton can notice that Redis is back.
const RETRY_DELAY: Duration = Duration::from_millis(500);

/// What went wrong, in the domain's words; [`Status::from`] alone gives each its code,
/// its [`Reason`] and its ErrorInfo, BadRequest and RetryInfo details.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Bad input, rejected before any Redis call.
    #[error("{field}: {description}")]
    InvalidArgument { field: String, description: String },
    /// Redis unreachable, or slower than the configured timeout.
    #[error("storage unavailable")]
    Unavailable,
    /// This replica is shutting down: streams end so that clients resume on another one.
    #[error("baton is shutting down; resume on another replica")]
    ShuttingDown,
    /// Redis refused a write because it is out of memory.
    #[error("storage is out of memory")]
    StorageFull,
    /// An answer that would not fit in one gRPC message.
    #[error("the response would exceed the {limit}-byte message limit")]
    ResponseTooLarge { limit: usize },
    /// A lock lease that is not held (any more).
    #[error("lease on {name:?} is not held: {why}")]
    LeaseNotHeld { name: String, why: String },
    /// A compare-and-set whose expected version is not the current one.
    #[error("the {what}'s version is not if_version")]
    VersionMismatch { what: &'static str },
    /// A cache write with `if_absent` found a fresh entry.
    #[error("the key holds a fresh entry (if_absent)")]
    EntryExists,
    /// A cache fill whose token is not the current one.
    #[error("the fill token is no longer current: the key was written or deleted, or its lease expired")]
    FillTokenStale,
    /// A cache fill whose value may predate a tag invalidation.
    #[error(
        "a tag of this value was invalidated after its fill began, so it may predate the invalidation: \
         use it for this caller only and Fetch again"
    )]
    FillTagInvalidated,
    #[error("no such session, or it expired")]
    SessionNotFound,
    #[error("that session id is taken")]
    SessionExists,
    #[error("no job {job_id:?} (it may have passed its retention)")]
    JobNotFound { job_id: String },
    #[error("this lease is not the job's current one: it expired, was re-delivered, or the job is gone")]
    JobNotLeased,
    #[error("the job was cancelled; this lease can no longer settle it")]
    JobCancelled,
    #[error("no such schedule in that queue")]
    ScheduleNotFound,
    #[error("that schedule exists (set replace to replace it)")]
    ScheduleExists,
    #[error("the queue has {limit} schedules, the most it may have")]
    TooManySchedules { limit: usize },
    /// A bug or an unexpected reply; the cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    /// The same error about a field of the message in field `parent`.
    pub fn within(self, parent: &str) -> Self {
        match self {
            Self::InvalidArgument { field, description } => {
                Self::InvalidArgument { field: format!("{parent}.{field}"), description }
            }
            other => other,
        }
    }

    /// The ErrorInfo reason clients branch on.
    pub fn reason(&self) -> Reason {
        match self {
            Self::InvalidArgument { .. } => Reason::InvalidField,
            Self::Unavailable => Reason::StorageUnavailable,
            Self::ShuttingDown => Reason::ShuttingDown,
            Self::StorageFull => Reason::StorageFull,
            Self::ResponseTooLarge { .. } => Reason::ResponseTooLarge,
            Self::LeaseNotHeld { .. } => Reason::LeaseNotHeld,
            Self::VersionMismatch { .. } => Reason::VersionMismatch,
            Self::EntryExists => Reason::AlreadyExists,
            Self::FillTokenStale | Self::FillTagInvalidated => Reason::FillTokenStale,
            Self::SessionNotFound => Reason::SessionNotFound,
            Self::SessionExists => Reason::SessionExists,
            Self::JobNotFound { .. } => Reason::JobNotFound,
            Self::JobNotLeased => Reason::JobNotLeased,
            Self::JobCancelled => Reason::JobCancelled,
            Self::ScheduleNotFound => Reason::ScheduleNotFound,
            Self::ScheduleExists => Reason::ScheduleExists,
            Self::TooManySchedules { .. } => Reason::TooManySchedules,
            Self::Internal(_) => Reason::Internal,
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::Unavailable | Self::ShuttingDown => Code::Unavailable,
            Self::StorageFull | Self::ResponseTooLarge { .. } | Self::TooManySchedules { .. } => {
                Code::ResourceExhausted
            }
            Self::LeaseNotHeld { .. }
            | Self::FillTokenStale
            | Self::FillTagInvalidated
            | Self::JobNotLeased
            | Self::JobCancelled => Code::FailedPrecondition,
            Self::VersionMismatch { .. } => Code::Aborted,
            Self::EntryExists | Self::SessionExists | Self::ScheduleExists => Code::AlreadyExists,
            Self::SessionNotFound | Self::JobNotFound { .. } | Self::ScheduleNotFound => Code::NotFound,
            Self::Internal(_) => Code::Internal,
        }
    }
}

/// A refusal made before any handler runs (authentication, the server's default deadline,
/// a panicking handler), with the same ErrorInfo as every other error.
pub fn refusal(code: Code, reason: Reason, message: impl Into<String>) -> Status {
    let mut details = ErrorDetails::new();
    details.set_error_info(reason.as_str_name(), ERROR_DOMAIN, []);
    Status::with_error_details(code, message, details)
}

impl From<StoreError> for Error {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(_) => Self::Unavailable,
            StoreError::OutOfMemory => Self::StorageFull,
            StoreError::Unexpected(cause) => Self::Internal(cause),
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        let mut details = ErrorDetails::new();
        details.set_error_info(err.reason().as_str_name(), ERROR_DOMAIN, []);
        match &err {
            Error::InvalidArgument { field, description } => {
                details.add_bad_request_violation(bounded(field), bounded(description));
            }
            Error::Unavailable => {
                details.set_retry_info(Some(RETRY_DELAY));
            }
            // Another replica can take the call right away.
            Error::ShuttingDown => {
                details.set_retry_info(Some(Duration::ZERO));
            }
            Error::Internal(cause) => {
                tracing::error!(error.cause = %cause, "internal error");
            }
            _ => {}
        }
        Status::with_error_details(err.code(), bounded(&err.to_string()), details)
    }
}

/// Longest text an error echoes back: messages quote request fields, and a trailer of
/// hundreds of kilobytes would break the client's HTTP/2 header limits.
const MAX_ECHO_BYTES: usize = 512;

fn bounded(text: &str) -> String {
    if text.len() <= MAX_ECHO_BYTES {
        return text.to_owned();
    }
    let mut end = MAX_ECHO_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes in all)", &text[..end], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason_of(status: &Status) -> String {
        status.get_details_error_info().expect("error info").reason
    }

    #[test]
    fn long_echoes_are_cut_on_a_character_boundary() {
        let status = Status::from(Error::invalid("policy", format!("unknown policy {:?}", "é".repeat(100_000))));
        assert!(status.message().len() < 1024, "{} bytes", status.message().len());
        let violation = &status.get_details_bad_request().unwrap().field_violations[0];
        assert!(violation.description.len() < 1024 && violation.description.ends_with("bytes in all)"));
    }

    #[test]
    fn invalid_argument_names_the_field() {
        let status = Status::from(Error::invalid("limits[0].key", "must not be empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(reason_of(&status), "INVALID_FIELD");
        let bad_request = status.get_details_bad_request().expect("bad request");
        assert_eq!(bad_request.field_violations[0].field, "limits[0].key");
    }

    #[test]
    fn unavailable_carries_retry_info() {
        let status = Status::from(Error::from(StoreError::Unavailable("timeout".into())));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(reason_of(&status), "STORAGE_UNAVAILABLE");
        assert!(status.get_details_retry_info().is_some());
    }

    #[test]
    fn internal_hides_the_cause() {
        let status = Status::from(Error::Internal("secret detail".into()));
        assert_eq!(status.code(), Code::Internal);
        assert!(!status.message().contains("secret"));
    }

    #[test]
    fn storage_full_is_resource_exhausted() {
        let status = Status::from(Error::from(StoreError::OutOfMemory));
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(reason_of(&status), "STORAGE_FULL");
    }
}
