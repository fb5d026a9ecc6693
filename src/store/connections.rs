//! The connections a [`Store`](super::Store) holds: one multiplexed connection for every
//! short command and script, a small pool of dedicated ones for what blocks (`WAIT`), and
//! where pub/sub connections are opened, for each topology.

use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, RedisError, RedisFuture, Value};

use super::StoreError;
use super::sentinel::SentinelFollower;
use super::topology::UrlList;

pub(super) fn nodelay(url: &str) -> Result<redis::ConnectionInfo, StoreError> {
    let info =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(|err| StoreError::Unexpected(err.to_string()))?;
    // redis-rs leaves Nagle on: pipelined and ping-pong traffic then stalls ~40 ms on
    // delayed ACKs (measured: lock hand-offs took 44 ms each).
    Ok(info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true)))
}

pub(super) fn tls_certificates(root: &[u8]) -> redis::TlsCertificates {
    redis::TlsCertificates { client_tls: None, root_cert: Some(root.to_vec()) }
}

/// A client for one node: Nagle off, and `tls_root` (PEM), when given, as the only root
/// trusted for a `rediss://` server.
pub(super) fn node_client(url: &str, tls_root: Option<&[u8]>) -> Result<redis::Client, StoreError> {
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
    pub(super) target: DedicatedTarget,
    pub(super) connect_timeout: Duration,
}

/// Where dedicated connections go. A Cluster has no single node to send them to: the one
/// user, `WAIT` after a lock grant, is refused at start-up in cluster mode.
#[derive(Clone)]
pub(super) enum DedicatedTarget {
    // Boxed: a client with its TLS settings is far larger than the other variants.
    Standalone(Box<redis::Client>),
    Sentinel(SentinelFollower),
    Cluster,
}

/// A dedicated connection and the master it was opened to (Sentinel's epoch; 0 elsewhere).
pub struct DedicatedConnection {
    pub(super) conn: redis::aio::MultiplexedConnection,
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
pub(super) const DEDICATED_POOL_SIZE: u32 = 8;

/// The shared multiplexed connection, whatever the topology: each variant routes every
/// command (a script by its first key) and reconnects on its own.
#[derive(Clone)]
pub(super) enum Multiplexed {
    Standalone(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelFollower),
}

impl ConnectionLike for Multiplexed {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Standalone(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
            Self::Sentinel(follower) => {
                Box::pin(follower.on_master(move |mut conn| async move { conn.req_packed_command(cmd).await }))
            }
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
            Self::Sentinel(follower) => Box::pin(
                follower
                    .on_master(move |mut conn| async move { conn.req_packed_commands(pipeline, offset, count).await }),
            ),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Standalone(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
            Self::Sentinel(_) => 0,
        }
    }
}

/// Where pub/sub connections are opened.
#[derive(Clone)]
pub(super) enum PubSubTarget {
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
