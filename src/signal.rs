//! Resolves on SIGTERM (Kubernetes) or SIGINT (a terminal).

use tokio::signal::unix::{SignalKind, signal};

/// Registers the handlers at once — a SIGTERM that arrives while baton is still starting is
/// then kept, not fatal — and returns a future that completes when one arrives.
pub fn terminated() -> impl Future<Output = ()> {
    let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
    async move {
        let (Ok(mut term), Ok(mut int)) = handlers else {
            tracing::error!("cannot install signal handlers; stop with SIGKILL");
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "stop requested"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "stop requested"),
        }
    }
}
