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
pub mod notify;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, FromRedisValue, RedisError, Script, ServerErrorKind};

pub use keys::KeyBuilder;

/// The clock and integer helpers every script starts with (`prelude.lua`).
const SCRIPT_PRELUDE: &str = include_str!("prelude.lua");

/// Builds a script from its parts (a pattern's shared prelude, then the script itself),
/// after the common prelude. Called once per script, from a `LazyLock`.
pub fn script(parts: &[&str]) -> Script {
    let mut source = String::from(SCRIPT_PRELUDE);
    for part in parts {
        source.push('\n');
        source.push_str(part);
    }
    Script::new(&source)
}

/// The pool that hands out dedicated connections.
pub type DedicatedPool = bb8::Pool<DedicatedConnections>;

/// Opens the pool's connections. bb8-redis's manager would do, but it cannot configure
/// the connection, and redis 1.x's default 500 ms response timeout breaks `WAIT` and
/// other deliberately long calls; every call here is bounded by [`Store`]'s own timeout.
#[derive(Debug, Clone)]
pub struct DedicatedConnections {
    client: redis::Client,
    connect_timeout: Duration,
}

impl bb8::ManageConnection for DedicatedConnections {
    type Connection = redis::aio::MultiplexedConnection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        self.client.get_multiplexed_async_connection_with_config(&config).await
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        // bb8 checks on checkout (test_on_check_out stays on): a connection broken by a
        // Redis restart is replaced instead of failing the caller.
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.connect_timeout, ping.query_async::<String>(conn)).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "ping timed out"))),
        }
    }

    fn has_broken(&self, _: &mut Self::Connection) -> bool {
        false
    }
}

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
    client: redis::Client,
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
    /// `tls_root` (PEM) replaces the system's roots for verifying a `rediss://` server.
    pub fn new(name: &'static str, url: &str, timeout: Duration, tls_root: Option<&[u8]>) -> Result<Self, StoreError> {
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|err| StoreError::Unexpected(err.to_string()))?
            // redis-rs leaves Nagle on: pipelined and ping-pong traffic then stalls ~40 ms
            // on delayed ACKs (measured: lock hand-offs took 44 ms each).
            .set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = match tls_root {
            Some(root) => redis::Client::build_with_tls(
                info,
                redis::TlsCertificates { client_tls: None, root_cert: Some(root.to_vec()) },
            ),
            None => redis::Client::open(info),
        }
        .map_err(|err| StoreError::Unexpected(err.to_string()))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect quickly and keep trying: the pinger and every request drive it.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let multiplexed = ConnectionManager::new_lazy_with_config(client.clone(), config)
            .map_err(|err| StoreError::Unexpected(err.to_string()))?;
        let manager = DedicatedConnections { client: client.clone(), connect_timeout: timeout };
        let dedicated = bb8::Pool::builder()
            .max_size(DEDICATED_POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .build_unchecked(manager);
        Ok(Self { name, client, multiplexed, dedicated, timeout, reachable: Arc::new(AtomicBool::new(true)) })
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

    /// A pub/sub connection of its own (one per process: see [`notify`]).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        match tokio::time::timeout(self.timeout, self.client.get_async_pubsub()).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable("pub/sub connect timed out".into())),
        }
    }

    /// Runs a script on a dedicated connection, then `WAIT`s on that same connection (WAIT
    /// covers only its own connection's writes, and blocks, so never the multiplexed one)
    /// for `replicas` acknowledgements. Returns the reply and how many replicas acknowledged.
    pub async fn run_script_replicated<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
        replicas: u32,
    ) -> Result<(T, u32), StoreError> {
        let mut invocation = script.prepare_invoke();
        for key in keys {
            invocation.key(key);
        }
        for arg in args {
            invocation.arg(arg.as_slice());
        }
        let pool = self.dedicated.clone();
        // WAIT gets most of the budget; the script itself is sub-millisecond.
        let wait_ms = (self.timeout.as_millis() as u64 * 3 / 4).max(1);
        self.timed(op, async move {
            let mut conn = pool.get().await.map_err(|err| match err {
                bb8::RunError::User(err) => err,
                bb8::RunError::TimedOut => {
                    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "pool checkout timed out"))
                }
            })?;
            let reply: T = invocation.invoke_async(&mut *conn).await?;
            let acknowledged: u32 = redis::cmd("WAIT").arg(replicas).arg(wait_ms).query_async(&mut *conn).await?;
            Ok((reply, acknowledged))
        })
        .await
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

    /// Runs a pipeline (one round trip) within the Redis timeout.
    pub async fn pipeline<T: FromRedisValue>(&self, op: &'static str, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.multiplexed.clone();
        self.timed(op, async move { pipe.query_async(&mut conn).await }).await
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
