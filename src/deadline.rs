//! The caller's deadline, as sent in the `grpc-timeout` header, and the default one for
//! callers that send none.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::error::{Reason, refusal};

/// RPCs that wait as long as the request asks (bounded by validation), so the default
/// deadline must not cut them.
const CLIENT_BOUNDED_WAITS: [&str; 2] = ["/baton.v1.LockService/Acquire", "/baton.v1.CacheService/Fetch"];

/// Bounds calls that carry no `grpc-timeout` by a default deadline, answering
/// DEADLINE_EXCEEDED (tonic's own `Server::timeout` answers CANCELLED, which clients
/// treat as their own doing). Only the handler's future is bounded — the time until a
/// response begins — so server streams, which begin at once, are never cut.
#[derive(Debug, Clone, Copy)]
pub struct DefaultDeadlineLayer {
    deadline: Duration,
}

impl DefaultDeadlineLayer {
    pub fn new(deadline: Duration) -> Self {
        Self { deadline }
    }
}

impl<S> tower::Layer<S> for DefaultDeadlineLayer {
    type Service = DefaultDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        DefaultDeadline { inner, deadline: self.deadline }
    }
}

#[derive(Debug, Clone)]
pub struct DefaultDeadline<S> {
    inner: S,
    deadline: Duration,
}

impl<S, ReqBody> tower::Service<http::Request<ReqBody>> for DefaultDeadline<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let bounded_by_client =
            request.headers().contains_key("grpc-timeout") || CLIENT_BOUNDED_WAITS.contains(&request.uri().path());
        let response = self.inner.call(request);
        if bounded_by_client {
            return Box::pin(response);
        }
        let deadline = self.deadline;
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
