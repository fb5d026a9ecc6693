//! The Redis layer: the only module that speaks to Redis.
//!
//! Short commands and scripts share one multiplexed, auto-reconnecting
//! `ConnectionManager` (measured ≈ 6× a per-request pool checkout); a small bb8 pool
//! serves what needs a connection of its own (blocking reads, pub/sub, `WAIT`). Every
//! call is bounded by the configured Redis timeout and errors are classified as transient
//! (→ `UNAVAILABLE`) or not.
//!
//! The same calls run on one server, on a Redis Cluster (the redis crate's cluster
//! connection routes each command and script by its key's slot and follows `MOVED`) or on
//! a Sentinel-managed master ([`sentinel`] follows failovers); see [`Topology`].
//!
//! # Parts
//! - [`script`]: scripts, arguments, the one reply shape and its decoder, commands.
//! - [`error`]: what a retry can fix and what it cannot.
//! - `connections`: the multiplexed connection, the dedicated pool, pub/sub targets.
//! - [`keys`]: the key layout every pattern's keys follow.
//! - [`topology`], [`sentinel`]: where the masters are.
//! - [`health`], [`notify`]: the pinger and the process's one pub/sub listener.
//! - [`embedded`]: the development-mode `redis-server`.

mod connections;
pub mod embedded;
pub mod error;
pub mod health;
pub mod keys;
pub mod notify;
pub mod script;
pub mod sentinel;
pub mod topology;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, RedisError, ServerErrorKind};

use connections::{
    DEDICATED_POOL_SIZE, DedicatedConnections, DedicatedPool, DedicatedTarget, Multiplexed, PubSubTarget, node_client,
    nodelay, tls_certificates,
};
pub use error::StoreError;
pub use keys::KeyBuilder;
pub use script::{Arg, Command, Decode, Fields, Outcome, Pipeline, Reply, Script};
use sentinel::SentinelFollower;
use topology::UrlList;
pub use topology::{SentinelSettings, Topology};

/// One Redis deployment as used by some patterns: a multiplexed connection, a small
/// dedicated pool, the call timeout and the breaker state the health pinger keeps.
/// Cheap to clone: every pattern and every request shares one.
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    /// Label in logs and metrics (`main`, `cache`).
    name: &'static str,
    multiplexed: Multiplexed,
    pubsub: PubSubTarget,
    dedicated: DedicatedPool,
    timeout: Duration,
    /// False while Redis is known to be down: fail-open callers answer at once instead
    /// of each waiting out a timeout. Opened by any transient failure, closed by the
    /// pinger's next successful PING.
    reachable: AtomicBool,
}

impl Store {
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
        let inner = StoreInner { name, multiplexed, pubsub, dedicated, timeout, reachable: AtomicBool::new(true) };
        Ok(Self { inner: Arc::new(inner) })
    }

    pub fn name(&self) -> &'static str {
        self.inner.name
    }

    /// Whether keys live on a Redis Cluster, where one script or pipeline may only touch
    /// keys of one slot.
    pub fn is_cluster(&self) -> bool {
        matches!(self.inner.multiplexed, Multiplexed::Cluster(_))
    }

    /// The pool of dedicated connections, for blocking commands and subscriptions.
    pub fn dedicated(&self) -> &DedicatedPool {
        &self.inner.dedicated
    }

    /// Changes of master under Sentinel (`None` elsewhere): a subscription on the old
    /// master, now a replica, would still hear replicated messages but not for long.
    pub fn master_changes(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        match &self.inner.pubsub {
            PubSubTarget::Sentinel(follower) => Some(follower.changes()),
            _ => None,
        }
    }

    /// A pub/sub connection of its own (one per process: see [`notify`]).
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, StoreError> {
        let client = match &self.inner.pubsub {
            PubSubTarget::Standalone(client) => client.clone(),
            // Bounded node by node.
            PubSubTarget::Cluster { urls, next, tls_root } => {
                return self.cluster_pubsub(urls, next, tls_root.as_deref()).await;
            }
            PubSubTarget::Sentinel(follower) => match tokio::time::timeout(self.inner.timeout, follower.master()).await
            {
                Ok(master) => master?.client,
                Err(_) => return Err(StoreError::Unavailable("no redis master known".into())),
            },
        };
        match tokio::time::timeout(self.inner.timeout, client.get_async_pubsub()).await {
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
        let nodes: Result<String, _> = self.command("cluster_nodes", &Command::new("CLUSTER").arg("NODES")).await;
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
            match tokio::time::timeout(self.inner.timeout, attempt).await {
                Ok(Ok(pubsub)) => {
                    tracing::debug!(redis.instance = self.inner.name, node = %host, "subscribing on cluster node");
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
    pub async fn eval_replicated(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Arg<'_>],
        replicas: u32,
    ) -> Result<(Reply, u32), StoreError> {
        let pool = self.inner.dedicated.clone();
        // WAIT gets most of the budget; the script itself is sub-millisecond.
        let wait_ms = (self.inner.timeout.as_millis() as u64 * 3 / 4).max(1);
        self.timed(script.op(), self.slot_of(keys), async move {
            let mut conn = pool.get().await.map_err(|err| match err {
                bb8::RunError::User(err) => err,
                bb8::RunError::TimedOut => {
                    RedisError::from(std::io::Error::new(std::io::ErrorKind::TimedOut, "pool checkout timed out"))
                }
            })?;
            let reply: Reply = match script.command(false, keys, args).query_async(&mut conn.conn).await {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    crate::traces::redis_attempt(2);
                    script.command(true, keys, args).query_async(&mut conn.conn).await?
                }
                result => result?,
            };
            let acknowledged: u32 = redis::cmd("WAIT").arg(replicas).arg(wait_ms).query_async(&mut conn.conn).await?;
            Ok((reply, acknowledged))
        })
        .await
    }

    /// True unless a recent call or ping failed; see [`Store::reachable`].
    pub fn is_reachable(&self) -> bool {
        self.inner.reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_reachable(&self, reachable: bool) {
        self.inner.reachable.store(reachable, Ordering::Relaxed);
    }

    /// Runs a script (EVALSHA; on NOSCRIPT an EVAL, which also caches it on that node)
    /// within the Redis timeout.
    pub async fn eval(&self, script: &Script, keys: &[String], args: &[Arg<'_>]) -> Result<Reply, StoreError> {
        let evalsha = script.command(false, keys, args);
        let mut conn = self.inner.multiplexed.clone();
        self.timed(script.op(), self.slot_of(keys), async move {
            match evalsha.query_async(&mut conn).await {
                Err(err) if err.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                    crate::traces::redis_attempt(2);
                    script.command(true, keys, args).query_async(&mut conn).await
                }
                result => result,
            }
        })
        .await
    }

    /// Runs a pipeline (one round trip) within the Redis timeout.
    pub async fn pipeline<T: Decode>(&self, op: &'static str, pipe: &Pipeline) -> Result<T, StoreError> {
        let mut conn = self.inner.multiplexed.clone();
        self.timed(op, None, async move { pipe.as_redis().query_async(&mut conn).await }).await
    }

    /// `INFO [section]` of every master: one reply on a single server, one per master on
    /// a Redis Cluster (where the cluster connection asks them all).
    pub async fn info(&self, op: &'static str, section: Option<&str>) -> Result<Vec<String>, StoreError> {
        Ok(self.info_by_node(op, section).await?.into_iter().map(|(_, info)| info).collect())
    }

    /// [`Self::info`] with each master's address ("" on a single server), by address.
    pub async fn info_by_node(
        &self,
        op: &'static str,
        section: Option<&str>,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let mut cmd = Command::new("INFO");
        if let Some(section) = section {
            cmd = cmd.arg(section);
        }
        if self.is_cluster() {
            let per_node: HashMap<String, String> = self.command(op, &cmd).await?;
            let mut nodes: Vec<(String, String)> = per_node.into_iter().collect();
            nodes.sort();
            return Ok(nodes);
        }
        Ok(vec![(String::new(), self.command(op, &cmd).await?)])
    }

    /// Up to `limit` keys matching `glob`, and whether the whole keyspace was walked (SCAN,
    /// at most `rounds` steps of 1,000 keys, so a lookup never holds the dashboard long).
    /// None on a Redis Cluster, whose keys no single SCAN walks.
    pub async fn scan(
        &self,
        op: &'static str,
        glob: &str,
        limit: usize,
        rounds: usize,
    ) -> Result<Option<(Vec<String>, bool)>, StoreError> {
        if self.is_cluster() {
            return Ok(None);
        }
        let mut found = Vec::new();
        let mut cursor = 0u64;
        for _ in 0..rounds {
            let step = Command::new("SCAN").arg(cursor).arg("MATCH").arg(glob).arg("COUNT").arg(1000u64);
            let (next, keys): (u64, Vec<String>) = self.command(op, &step).await?;
            found.extend(keys);
            cursor = next;
            if cursor == 0 || found.len() >= limit {
                break;
            }
        }
        found.sort();
        found.dedup();
        found.truncate(limit);
        Ok(Some((found, cursor == 0)))
    }

    /// Runs one non-blocking command within the Redis timeout.
    pub async fn command<T: Decode>(&self, op: &'static str, cmd: &Command) -> Result<T, StoreError> {
        let mut conn = self.inner.multiplexed.clone();
        self.timed(op, None, async move { cmd.as_redis().query_async(&mut conn).await }).await
    }

    /// The hash slot a script's keys live in, on a Redis Cluster (for its trace span).
    fn slot_of(&self, keys: &[String]) -> Option<u16> {
        if !self.is_cluster() || !crate::traces::enabled() {
            return None;
        }
        keys.first().map(|key| topology::slot_number(key))
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        slot: Option<u16>,
        call: impl Future<Output = Result<T, RedisError>>,
    ) -> Result<T, StoreError> {
        let started = Instant::now();
        let result = crate::traces::redis_call(op, slot, async {
            match tokio::time::timeout(self.inner.timeout, call).await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(err)) => Err(StoreError::from(err)),
                Err(_) => Err(StoreError::Unavailable(format!("no reply within {:?}", self.inner.timeout))),
            }
        })
        .await;
        let outcome = match &result {
            Ok(_) => "ok",
            Err(err) if err.is_transient() => "unavailable",
            Err(_) => "error",
        };
        metrics::histogram!(
            "baton_redis_command_duration_seconds",
            "instance" => self.inner.name, "op" => op, "outcome" => outcome
        )
        .record(started.elapsed().as_secs_f64());
        if matches!(&result, Err(err) if err.is_transient()) {
            self.set_reachable(false);
        }
        result
    }
}
