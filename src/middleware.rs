//! The one shape of Baton's own HTTP middlewares (the default deadline, the RPC metrics):
//! each reads the request before the handler takes it, then may wrap the handler's
//! response future. One tower layer and service serve them all.

use std::pin::Pin;
use std::task::{Context, Poll};

/// A handler's response future, boxed.
pub type BoxResponse<Res, E> = Pin<Box<dyn Future<Output = Result<Res, E>> + Send>>;

/// What a middleware does around one call.
pub trait Around<Res, E>: Clone {
    /// What `after` needs to know about the request.
    type Seen: Send + 'static;

    fn before<B>(&self, request: &http::Request<B>) -> Self::Seen;

    fn after(seen: Self::Seen, response: BoxResponse<Res, E>) -> BoxResponse<Res, E>;
}

/// Puts an [`Around`] into a tower stack.
#[derive(Debug, Clone, Copy)]
pub struct AroundLayer<A>(pub A);

impl<S, A: Clone> tower::Layer<S> for AroundLayer<A> {
    type Service = AroundService<S, A>;

    fn layer(&self, inner: S) -> Self::Service {
        AroundService { inner, around: self.0.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct AroundService<S, A> {
    inner: S,
    around: A,
}

impl<S, A, ReqBody> tower::Service<http::Request<ReqBody>> for AroundService<S, A>
where
    S: tower::Service<http::Request<ReqBody>>,
    S::Future: Send + 'static,
    A: Around<S::Response, S::Error>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxResponse<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let seen = self.around.before(&request);
        A::after(seen, Box::pin(self.inner.call(request)))
    }
}
