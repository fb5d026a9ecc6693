//! The Redis layer: the only module that speaks to Redis.
//!
//! Short commands and scripts share one multiplexed, auto-reconnecting
//! [`ConnectionManager`] (measured ≈ 6× a per-request pool checkout); a small bb8 pool
//! serves what needs a connection of its own (blocking reads, pub/sub, `WAIT`). Every
//! call is bounded by the configured Redis timeout and errors are classified as transient
//! (→ `UNAVAILABLE`) or not.

pub mod embedded;
pub mod health;
pub mod keys;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind};

pub use keys::KeyBuilder;

/// The pool that hands out dedicated connections.
pub type DedicatedPool = bb8::Pool<bb8_redis::RedisConnectionManager>;

/// Dedicated connections are few: shared listeners and `WAIT`, never one per request.
const DEDICATED_POOL_SIZE: u32 = 8;

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

/// One Redis instance as used by some patterns: a multiplexed connection, a small
/// dedicated pool, the call timeout and the breaker state the health pinger keeps.
#[derive(Clone)]
pub struct Store {
    /// Label in logs and metrics (`main`, `cache`).
    name: &'static str,
    multiplexed: ConnectionManager,
    dedicated: DedicatedPool,
    timeout: Duration,
    /// False while Redis is known to be down: fail-open callers answer at once instead
    /// of each waiting out a timeout. Opened by any transient failure, closed by the
    /// pinger's next successful PING.
    reachable: Arc<AtomicBool>,
}

impl Store {
    /// Prepares connections without connecting: Baton starts (and reports NOT_SERVING for
    /// the affected services) even while Redis is down.
    pub fn new(name: &'static str, url: &str, timeout: Duration) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|err| StoreError::Unexpected(err.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect quickly and keep trying: the pinger and every request drive it.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let multiplexed = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|err| StoreError::Unexpected(err.to_string()))?;
        let manager =
            bb8_redis::RedisConnectionManager::new(url).map_err(|err| StoreError::Unexpected(err.to_string()))?;
        let dedicated = bb8::Pool::builder()
            .max_size(DEDICATED_POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .build_unchecked(manager);
        Ok(Self { name, multiplexed, dedicated, timeout, reachable: Arc::new(AtomicBool::new(true)) })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The pool of dedicated connections, for blocking commands and subscriptions.
    pub fn dedicated(&self) -> &DedicatedPool {
        &self.dedicated
    }

    /// True unless a recent call or ping failed; see [`Store::reachable`].
    pub fn is_reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_reachable(&self, reachable: bool) {
        self.reachable.store(reachable, Ordering::Relaxed);
    }

    /// Runs a script (EVALSHA, loading it on NOSCRIPT) within the Redis timeout.
    /// `op` names the script in metrics.
    pub async fn run_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg.as_slice());
        }
        let mut conn = self.multiplexed.clone();
        self.timed(op, async move { invocation.invoke_async(&mut conn).await }).await
    }

    /// Runs one non-blocking command within the Redis timeout.
    pub async fn command<T: FromRedisValue>(&self, op: &'static str, cmd: &redis::Cmd) -> Result<T, StoreError> {
        let mut conn = self.multiplexed.clone();
        self.timed(op, async move { cmd.query_async(&mut conn).await }).await
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(StoreError::from(err)),
            Err(_) => Err(StoreError::Unavailable(format!("no reply within {:?}", self.timeout))),
        };
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) if err.is_transient() => "unavailable",
            Err(_) => "error",
        };
        metrics::histogram!(
            "baton_redis_command_duration_seconds",
            "instance" => self.name, "op" => op, "outcome" => outcome
        )
        .record(started.elapsed().as_secs_f64());
        if matches!(&result, Err(err) if err.is_transient()) {
            self.set_reachable(false);
        }
        result
    }
}
