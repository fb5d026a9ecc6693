//! Why Redis calls fail, sorted into what a retry can fix and what it cannot.

use redis::{ErrorKind, RedisError, ServerErrorKind};

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// Redis is unreachable, loading, read-only after a failover, or too slow: worth a retry.
    #[error("redis unavailable: {0}")]
    Unavailable(String),
    /// Redis is at `maxmemory` under `noeviction`.
    #[error("redis is out of memory")]
    OutOfMemory,
    /// A reply we did not expect: a bug or a misconfigured server.
    #[error("unexpected redis reply: {0}")]
    Unexpected(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<RedisError> for StoreError {
    fn from(err: RedisError) -> Self {
        if err.code() == Some("OOM") {
            return Self::OutOfMemory;
        }
        let transient = err.is_timeout()
            || err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_io_error()
            || err.code() == Some("BUSY")
            // A master with min-replicas-to-write that sees too few replicas, as after a
            // failover until the old master rejoins.
            || err.code() == Some("NOREPLICAS")
            || matches!(
                err.kind(),
                ErrorKind::Server(
                    ServerErrorKind::BusyLoading
                        | ServerErrorKind::TryAgain
                        | ServerErrorKind::ClusterDown
                        | ServerErrorKind::MasterDown
                        | ServerErrorKind::ReadOnly
                ) | ErrorKind::ClusterConnectionNotFound
            );
        if transient { Self::Unavailable(err.to_string()) } else { Self::Unexpected(err.to_string()) }
    }
}
