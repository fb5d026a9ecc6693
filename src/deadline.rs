//! The caller's deadline, as sent in the `grpc-timeout` header, and the default one for
//! callers that send none.

use std::time::Duration;

use crate::error::{Reason, refusal};
use crate::middleware::{Around, AroundLayer, BoxResponse};

/// RPCs that wait as long as the request asks (bounded by validation), so the default
/// deadline must not cut them.
const CLIENT_BOUNDED_WAITS: [&str; 3] =
    ["/baton.v1.LockService/Acquire", "/baton.v1.ElectionService/Campaign", "/baton.v1.CacheService/Fetch"];

/// Bounds calls that carry no `grpc-timeout` by a default deadline, answering
/// DEADLINE_EXCEEDED (tonic's own `Server::timeout` answers CANCELLED, which clients
/// treat as their own doing). Only the handler's future is bounded — the time until a
/// response begins — so server streams, which begin at once, are never cut.
pub fn default_deadline_layer(deadline: Duration) -> AroundLayer<DefaultDeadline> {
    AroundLayer(DefaultDeadline { deadline })
}

#[derive(Debug, Clone, Copy)]
pub struct DefaultDeadline {
    deadline: Duration,
}

impl<E: Send + 'static> Around<http::Response<tonic::body::Body>, E> for DefaultDeadline {
    /// The deadline that applies, if the client set none of its own.
    type Seen = Option<Duration>;

    fn before<B>(&self, request: &http::Request<B>) -> Option<Duration> {
        let bounded_by_client =
            request.headers().contains_key("grpc-timeout") || CLIENT_BOUNDED_WAITS.contains(&request.uri().path());
        (!bounded_by_client).then_some(self.deadline)
    }

    fn after(
        deadline: Option<Duration>,
        response: BoxResponse<http::Response<tonic::body::Body>, E>,
    ) -> BoxResponse<http::Response<tonic::body::Body>, E> {
        let Some(deadline) = deadline else {
            return response;
        };
        Box::pin(async move {
            match tokio::time::timeout(deadline, response).await {
                Ok(response) => response,
                Err(_) => Ok(refusal(
                    tonic::Code::DeadlineExceeded,
                    Reason::ServerDeadlineExceeded,
                    format!(
                        "no answer within the server's default deadline of {deadline:?}; set a deadline on the call"
                    ),
                )
                .into_http()),
            }
        })
    }
}

/// Time left before the caller gives up, if it set a deadline.
pub fn remaining(metadata: &tonic::metadata::MetadataMap) -> Option<Duration> {
    parse_grpc_timeout(metadata.get("grpc-timeout")?.to_str().ok()?)
}

/// `grpc-timeout` is 1..=8 ASCII digits followed by a unit: H, M, S, m, u or n.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(amount * 3600),
        "M" => Duration::from_secs(amount * 60),
        "S" => Duration::from_secs(amount),
        "m" => Duration::from_millis(amount),
        "u" => Duration::from_micros(amount),
        "n" => Duration::from_nanos(amount),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_unit_and_rejects_garbage() {
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
