//! The Redis layer: the only module that speaks to Redis.
//!
//! Short commands and scripts share one multiplexed, auto-reconnecting
//! [`ConnectionManager`] (measured ≈ 6× a per-request pool checkout); a small bb8 pool
//! serves what needs a connection of its own (blocking reads, pub/sub, `WAIT`). Every
//! call is bounded by the configured Redis timeout and errors are classified as transient
//! (→ `UNAVAILABLE`) or not.
//!
//! The same calls run on one server, on a Redis Cluster (the redis crate's cluster
//! connection routes each command and script by its key's slot and follows `MOVED`) or on
//! a Sentinel-managed master ([`sentinel`] follows failovers); see [`Topology`].

pub mod embedded;
pub mod health;
pub mod keys;
pub mod notify;
pub mod sentinel;
pub mod topology;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, FromRedisValue, RedisError, RedisFuture, Script, ServerErrorKind, Value};

pub use keys::KeyBuilder;
use sentinel::SentinelFollower;
use topology::UrlList;
pub use topology::{SentinelSettings, Topology};

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
    let script = Script::new(&source);
    SCRIPT_SOURCES.lock().expect("script sources").insert(script.get_hash().to_owned(), Arc::from(source));
    script
}

/// Every script's source by its SHA-1, so a `NOSCRIPT` is answered with an `EVAL` on the
/// very node that lacks the script (a Cluster node, a master promoted by Sentinel)
/// instead of a `SCRIPT LOAD` that the cluster connection would send to every node.
static SCRIPT_SOURCES: LazyLock<Mutex<HashMap<String, Arc<str>>>> = LazyLock::new(Default::default);

fn script_source(script: &Script) -> Option<Arc<str>> {
    SCRIPT_SOURCES.lock().expect("script sources").get(script.get_hash()).cloned()
}

fn nodelay(url: &str) -> Result<redis::ConnectionInfo, StoreError> {
    let info =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(|err| StoreError::Unexpected(err.to_string()))?;
    // redis-rs leaves Nagle on: pipelined and ping-pong traffic then stalls ~40 ms on
    // delayed ACKs (measured: lock hand-offs took 44 ms each).
    Ok(info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

pub(crate) fn tls_certificates(root: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates { client_tls: None, root_cert: Some(root.to_vec()) }
}

/// A client for one node: Nagle off, and `tls_root` (PEM), when given, as the only root
/// trusted for a `rediss://` server.
pub(crate) fn node_client(url: &str, tls_root: Option<&[u8]>) -> Result<redis::Client, StoreError> {
    let info = nodelay(url)?;
    match tls_root {
        Some(root) => redis::Client::build_with_tls(info, tls_certificates(root)),
        None => redis::Client::open(info),
    }
    .map_err(|err| StoreError::Unexpected(err.to_string()))
}

/// The pool that hands out dedicated connections.
pub type DedicatedPool = bb8::Pool<DedicatedConnections>;

/// Opens the pool's connections. bb8-redis's manager would do, but it cannot configure
/// the connection, and redis 1.x's default 500 ms response timeout breaks `WAIT` and
/// other deliberately long calls; every call here is bounded by [`Store`]'s own timeout.
#[derive(Clone)]
pub struct DedicatedConnections {
    target: DedicatedTarget,
    connect_timeout: Duration,
}

/// Where dedicated connections go. A Cluster has no single node to send them to: the one
/// user, `WAIT` after a lock grant, is refused at start-up in cluster mode.
#[derive(Clone)]
enum DedicatedTarget {
    // Boxed: a client with its TLS settings is far larger than the other variants.
    Standalone(Box<redis::Client>),
    Sentinel(SentinelFollower),
    Cluster,
}

/// A dedicated connection and the master it was opened to (Sentinel's epoch; 0 elsewhere).
pub struct DedicatedConnection {
    conn: redis::aio::MultiplexedConnection,
    epoch: u64,
}

impl std::ops::Deref for DedicatedConnection {
    type Target = redis::aio::MultiplexedConnection;

    fn deref(&self) -> &Self::Target {
        &self.conn
    }
}

impl std::ops::DerefMut for DedicatedConnection {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.conn
    }
}

impl bb8::ManageConnection for DedicatedConnections {
    type Connection = DedicatedConnection;
    type Error = RedisError;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(None);
        let (client, epoch) = match &self.target {
            DedicatedTarget::Standalone(client) => ((**client).clone(), 0),
            DedicatedTarget::Sentinel(follower) => {
                // The epoch before the lookup: a switch during the connect marks it stale.
                let epoch = follower.epoch();
                (follower.master().await?.client, epoch)
            }
            DedicatedTarget::Cluster => {
                return Err(RedisError::from((
                    ErrorKind::InvalidClientConfig,
                    "dedicated connections are not available in cluster mode",
                )));
            }
        };
        let conn = client.get_multiplexed_async_connection_with_config(&config).await?;
        Ok(DedicatedConnection { conn, epoch })
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        if <Self as bb8::ManageConnection>::has_broken(self, conn) {
            return Err(RedisError::from((ErrorKind::Io, "connection to a replaced master")));
        }
        // bb8 checks on checkout (test_on_check_out stays on): a connection broken by a
        // Redis restart is replaced instead of failing the caller.
        let ping = redis::cmd("PING");
        match tokio::time::timeout(self.connect_timeout, ping.query_async::<String>(&mut conn.conn)).await {
            Ok(result) => result.map(drop),
            Err(_) => Err(RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "ping timed out"))),
        }
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        // A connection to a master that Sentinel has since replaced still answers PING
        // (the old master comes back as a replica), so it is dropped by epoch instead.
        match &self.target {
            DedicatedTarget::Sentinel(follower) => conn.epoch != follower.epoch(),
            _ => false,
        }
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

/// The shared multiplexed connection, whatever the topology: each variant routes every
/// command (a script by its first key) and reconnects on its own.
#[derive(Clone)]
enum Multiplexed {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelFollower),
}

impl ConnectionLike for Multiplexed {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Standalone(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Sentinel(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
            Self::Sentinel(conn) => conn.get_db(),
        }
    }
}

/// Where pub/sub connections are opened.
#[derive(Clone)]
enum PubSubTarget {
    Standalone(redis::Client),
    /// Classic PUBLISH reaches every node of a Cluster, so any live node will do; the seeds
    /// come first, then the nodes the cluster reports, taken in turn so a dead node is
    /// skipped on the next reconnect.
    Cluster {
        urls: UrlList,
        next: Arc<AtomicUsize>,
        tls_root: Option<Arc<[u8]>>,
    },
    Sentinel(SentinelFollower),
}

/// One Redis deployment as used by some patterns: a multiplexed connection, a small
/// dedicated pool, the call timeout and the breaker state the health pinger keeps.
#[derive(Clone)]
pub struct Store {
    /// Label in logs and metrics (`main`, `cache`).
    name: &'static str,
    multiplexed: Multiplexed,
    pubsub: PubSubTarget,
    dedicated: DedicatedPool,
    timeout: Duration,
    /// False while Redis is known to be down: fail-open callers answer at once instead
    /// of each waiting out a timeout. Opened by any transient failure, closed by the
    /// pinger's next successful PING.
    reachable: Arc<AtomicBool>,
}

impl Store {
    /// A store on one Redis server; see [`Store::open`].
    pub fn new(name: &'static str, url: &str, timeout: Duration, tls_root: Option<&[u8]>) -> Result<Self, StoreError> {
        Self::open(name, url, &Topology::Standalone, timeout, tls_root)
    }

    /// Prepares connections without connecting: Baton starts (and reports NOT_SERVING for
    /// the affected services) even while Redis is down. `url` lists the seed nodes of a
    /// Cluster or the sentinels (`redis://user:pass@h1:p1,h2:p2/db`, see [`UrlList`]).
    /// `tls_root` (PEM) replaces the system's roots for verifying `rediss://` servers, in
    /// every topology and for every node.
    pub fn open(
        name: &'static str,
        url: &str,
        topology: &Topology,
        timeout: Duration,
        tls_root: Option<&[u8]>,
    ) -> Result<Self, StoreError> {
        let unexpected = |err: RedisError| StoreError::Unexpected(err.to_string());
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            // Reconnect quickly and keep trying: the pinger and every request drive it.
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(50))
            .set_max_delay(Duration::from_millis(500));
        let (multiplexed, pubsub, target) = match topology {
            Topology::Standalone => {
                let client = node_client(url, tls_root)?;
                let multiplexed =
                    ConnectionManager::new_lazy_with_config(client.clone(), config).map_err(unexpected)?;
                (
                    Multiplexed::Standalone(multiplexed),
                    PubSubTarget::Standalone(client.clone()),
                    DedicatedTarget::Standalone(Box::new(client)),
                )
            }
            Topology::Cluster => {
                let urls = UrlList::parse(url).map_err(StoreError::Unexpected)?;
                let seeds = urls.urls().iter().map(|url| nodelay(url)).collect::<Result<Vec<_>, _>>()?;
                let mut builder = redis::cluster::ClusterClientBuilder::new(seeds)
                    .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
                    // A moved slot or a failed-over master is retried on the new owner
                    // within the call's own timeout; more retries only wait longer.
                    .retries(2)
                    .min_retry_wait(50)
                    .max_retry_wait(250);
                if let Some(root) = tls_root {
                    builder = builder.certs(tls_certificates(root));
                }
                let client = builder.build().map_err(unexpected)?;
                let cluster_config =
                    redis::cluster::ClusterConfig::new().set_connection_timeout(timeout).set_response_timeout(timeout);
                let multiplexed = client.get_pending_async_connection_with_config(cluster_config);
                (
                    Multiplexed::Cluster(multiplexed),
                    PubSubTarget::Cluster {
                        urls,
                        next: Arc::new(AtomicUsize::new(0)),
                        tls_root: tls_root.map(Arc::from),
                    },
                    DedicatedTarget::Cluster,
                )
            }
            Topology::Sentinel(settings) => {
                let urls = UrlList::parse(url).map_err(StoreError::Unexpected)?;
                let follower =
                    SentinelFollower::start(&urls, settings, timeout, config, tls_root).map_err(unexpected)?;
                (
                    Multiplexed::Sentinel(follower.clone()),
                    PubSubTarget::Sentinel(follower.clone()),
                    DedicatedTarget::Sentinel(follower),
                )
            }
        };
        let manager = DedicatedConnections { target, connect_timeout: timeout };
        let dedicated = bb8::Pool::builder()
            .max_size(DEDICATED_POOL_SIZE)
            .min_idle(Some(0))
            .connection_timeout(timeout)
            .build_unchecked(manager);
        Ok(Self { name, multiplexed, pubsub, dedicated, timeout, reachable: Arc::new(AtomicBool::new(true)) })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Whether keys live on a Redis Cluster, where one script or pipeline may only touch
    /// keys of one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.multiplexed, Multiplexed::Cluster(_))
    }

    /// The pool of dedicated connections, for blocking commands and subscriptions.
    pub fn dedicated(&self) -> &DedicatedPool {
        &self.dedicated
    }

    /// Changes of master under Sentinel (`None` elsewhere): a subscription on the old
    /// master, now a replica, would still hear replicated messages but not for long.
    pub fn master_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.pubsub {
            PubSubTarget::Sentinel(follower) => Some(follower.changes()),
            _ => None,
        }
    }

    /// A pub/sub connection of its own (one per process: see [`notify`]).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let client = match &self.pubsub {
            PubSubTarget::Standalone(client) => client.clone(),
            // Bounded node by node.
            PubSubTarget::Cluster { urls, next, tls_root } => {
                return self.cluster_pubsub(urls, next, tls_root.as_deref()).await;
            }
            PubSubTarget::Sentinel(follower) => match tokio::time::timeout(self.timeout, follower.master()).await {
                Ok(master) => master?.client,
                Err(_) => return Err(StoreError::Unavailable("no redis master known".into())),
            },
        };
        match tokio::time::timeout(self.timeout, client.get_async_pubsub()).await {
            Ok(result) => result.map_err(StoreError::from),
            Err(_) => Err(StoreError::Unavailable("pub/sub connect timed out".into())),
        }
    }

    /// Subscribes on the next live node: the seeds, then every node `CLUSTER NODES` names.
    async fn cluster_pubsub(
        &self,
        urls: &UrlList,
        next: &AtomicUsize,
        tls_root: Option<&[u8]>,
    ) -> Result<redis::aio::PubSub, StoreError> {
        let mut hosts = urls.hosts.clone();
        let nodes: Result<String, _> = self.command("cluster_nodes", redis::cmd("CLUSTER").arg("NODES")).await;
        if let Ok(nodes) = nodes {
            for host in topology::cluster_node_hosts(&nodes) {
                if !hosts.contains(&host) {
                    hosts.push(host);
                }
            }
        }
        let start = next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = StoreError::Unavailable("no cluster node to subscribe on".into());
        for offset in 0..hosts.len() {
            let host = &hosts[(start + offset) % hosts.len()];
            let attempt = async {
                let client = node_client(&urls.url_for(host), tls_root)?;
                Ok::<_, StoreError>(client.get_async_pubsub().await?)
            };
            match tokio::time::timeout(self.timeout, attempt).await {
                Ok(Ok(pubsub)) => {
                    tracing::debug!(redis.instance = self.name, node = %host, "subscribing on cluster node");
                    return Ok(pubsub);
                }
                Ok(Err(err)) => last_error = err,
                Err(_) => last_error = StoreError::Unavailable(format!("{host}: pub/sub connect timed out")),
            }
        }
        Err(last_error)
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
            let reply: T = invocation.invoke_async(&mut conn.conn).await?;
            let acknowledged: u32 = redis::cmd("WAIT").arg(replicas).arg(wait_ms).query_async(&mut conn.conn).await?;
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

    /// Runs a script (EVALSHA; on NOSCRIPT an EVAL, which also caches it on that node)
    /// within the Redis timeout. `op` names the script in metrics.
    pub async fn run_script<T: FromRedisValue>(
        &self,
        op: &'static str,
        script: &Script,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> Result<T, StoreError> {
        let Some(source) = script_source(script) else {
            let mut invocation = script.prepare_invoke();
            for key in keys {
                invocation.key(key);
            }
            for arg in args {
                invocation.arg(arg.as_slice());
            }
            let mut conn = self.multiplexed.clone();
            return self.timed(op, async move { invocation.invoke_async(&mut conn).await }).await;
        };
        let call = |command: &str, body: &[u8]| {
            let mut cmd = redis::cmd(command);
            cmd.arg(body).arg(keys.len()).arg(keys);
            for arg in args {
                cmd.arg(arg.as_slice());
            }
            cmd
        };
        let evalsha = call("EVALSHA", script.get_hash().as_bytes());
        let mut conn = self.multiplexed.clone();
        self.timed(op, async move {
            match evalsha.query_async(&mut conn).await {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    call("EVAL", source.as_bytes()).query_async(&mut conn).await
                }
                result => result,
            }
        })
        .await
    }

    /// Runs a pipeline (one round trip) within the Redis timeout.
    pub async fn pipeline<T: FromRedisValue>(&self, op: &'static str, pipe: &redis::Pipeline) -> Result<T, StoreError> {
        let mut conn = self.multiplexed.clone();
        self.timed(op, async move { pipe.query_async(&mut conn).await }).await
    }

    /// `INFO [section]` of every master: one reply on a single server, one per master on
    /// a Redis Cluster (where the cluster connection asks them all).
    pub async fn info(&self, op: &'static str, section: Option<&str>) -> Result<Vec<String>, StoreError> {
        let mut cmd = redis::cmd("INFO");
        if let Some(section) = section {
            cmd.arg(section);
        }
        if self.is_cluster() {
            let per_node: HashMap<String, String> = self.command(op, &cmd).await?;
            return Ok(per_node.into_values().collect());
        }
        Ok(vec![self.command(op, &cmd).await?])
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
