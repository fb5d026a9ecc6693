//! The one error type that crosses into gRPC, and its single mapping to `tonic::Status`
//! with `google.rpc.ErrorInfo`, `BadRequest` and `RetryInfo` details.

use std::time::Duration;

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::store::StoreError;

/// The ErrorInfo domain of every Baton error.
pub const ERROR_DOMAIN: &str = "baton.v1";

/// How long clients are told to wait before retrying an UNAVAILABLE call: about one health
/// ping interval, the soonest Baton can notice that Redis is back.
const RETRY_DELAY: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
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
    /// A lease or token that is not the current one.
    #[error("{message}")]
    FailedPrecondition { reason: &'static str, message: String },
    /// A compare-and-set version mismatch.
    #[error("{message}")]
    Aborted { reason: &'static str, message: String },
    #[error("{message}")]
    AlreadyExists { reason: &'static str, message: String },
    #[error("{message}")]
    NotFound { reason: &'static str, message: String },
    /// A bug or an unexpected reply; the cause is logged, never sent.
    #[error("internal error")]
    Internal(String),
}

impl Error {
    pub fn invalid(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self::InvalidArgument { field: field.into(), description: description.into() }
    }

    /// The ErrorInfo reason clients branch on.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::InvalidArgument { .. } => "INVALID_FIELD",
            Self::Unavailable => "STORAGE_UNAVAILABLE",
            Self::ShuttingDown => "SHUTTING_DOWN",
            Self::StorageFull => "STORAGE_FULL",
            Self::ResponseTooLarge { .. } => "RESPONSE_TOO_LARGE",
            Self::FailedPrecondition { reason, .. }
            | Self::Aborted { reason, .. }
            | Self::AlreadyExists { reason, .. }
            | Self::NotFound { reason, .. } => reason,
            Self::Internal(_) => "INTERNAL",
        }
    }

    fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::Unavailable | Self::ShuttingDown => Code::Unavailable,
            Self::StorageFull | Self::ResponseTooLarge { .. } => Code::ResourceExhausted,
            Self::FailedPrecondition { .. } => Code::FailedPrecondition,
            Self::Aborted { .. } => Code::Aborted,
            Self::AlreadyExists { .. } => Code::AlreadyExists,
            Self::NotFound { .. } => Code::NotFound,
            Self::Internal(_) => Code::Internal,
        }
    }
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
        details.set_error_info(err.reason(), ERROR_DOMAIN, []);
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
