//! Following a Sentinel-managed master: the sentinels name the master, a background task
//! keeps asking them (and asks at once when a call fails the way a failover makes calls
//! fail: connection lost or refused, a timeout, `READONLY`, `MASTERDOWN`), and every
//! connection — the multiplexed one, the dedicated pool's, pub/sub — is opened to the
//! master of the moment. Nothing is cached across a change of master but the address.
//!
//! The master the sentinels name is used only once it answers `ROLE` as a master, so a
//! sentinel that has not heard of the failover yet cannot send Baton back to a demoted node.

use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind, Value};
use tokio::sync::{Notify, watch};

use crate::store::topology::{SentinelSettings, UrlList};
use crate::task::TaskGuard;

/// How often the sentinels are asked even when nothing failed: a switch that no failed
/// call revealed (a manual `SENTINEL FAILOVER` while the old master stays up as a replica
/// answering reads) is still followed within this.
const POLL_INTERVAL: Duration = Duration::from_millis(500);
/// Least time between two lookups, so a burst of failing calls asks the sentinels once.
const MIN_LOOKUP_GAP: Duration = Duration::from_millis(100);

/// The current master: its address, a client for dedicated connections and the shared
/// multiplexed connection.
#[derive(Clone)]
pub struct Master {
    pub host: String,
    pub client: redis::Client,
    pub conn: ConnectionManager,
}

struct Shared {
    sentinels: Vec<redis::Client>,
    /// An open connection per sentinel, dropped after any failure.
    sentinel_connections: Mutex<Vec<Option<redis::aio::MultiplexedConnection>>>,
    master_name: String,
    /// Scheme, credentials and database of the data nodes; its hosts are the sentinels'.
    data: UrlList,
    timeout: Duration,
    manager_config: ConnectionManagerConfig,
    /// The PEM root for `rediss://` data nodes and sentinels, when not the system's.
    tls_root: Option<Vec<u8>>,
    current: RwLock<Option<Master>>,
    /// Bumped on every change of master; 0 until the first one is known.
    epoch: watch::Sender<u64>,
    lookup_now: Notify,
}

/// A handle on the followed master; clones share one follower task.
#[derive(Clone)]
pub struct SentinelFollower {
    shared: Arc<Shared>,
    _task: Arc<TaskGuard>,
}

impl SentinelFollower {
    /// Starts following; connects nothing until the sentinels answer.
    pub fn start(
        urls: &UrlList,
        settings: &SentinelSettings,
        timeout: Duration,
        manager_config: ConnectionManagerConfig,
        tls_root: Option<&[u8]>,
    ) -> Result<Self, RedisError> {
        let mut sentinels = Vec::with_capacity(urls.hosts.len());
        for url in urls.urls() {
            // Sentinels have their own credentials (or none) and no databases.
            let mut redis_settings = redis::RedisConnectionInfo::default();
            if let Some(username) = &settings.username {
                redis_settings = redis_settings.set_username(username);
            }
            if let Some(password) = &settings.password {
                redis_settings = redis_settings.set_password(password);
            }
            let info = url.as_str().into_connection_info()?.set_redis_settings(redis_settings);
            sentinels.push(match tls_root {
                Some(root) => redis::Client::build_with_tls(info, crate::store::connections::tls_certificates(root))?,
                None => redis::Client::open(info)?,
            });
        }
        let (epoch, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            sentinel_connections: Mutex::new(vec![None; sentinels.len()]),
            sentinels,
            master_name: settings.master_name.clone(),
            data: urls.clone(),
            timeout,
            manager_config,
            tls_root: tls_root.map(<[u8]>::to_vec),
            current: RwLock::new(None),
            epoch,
            lookup_now: Notify::new(),
        });
        let task = TaskGuard::spawn(follow(shared.clone()));
        Ok(Self { shared, _task: Arc::new(task) })
    }

    /// The master of the moment, waiting (within the caller's own timeout) for the first
    /// lookup when none is known yet.
    pub async fn master(&self) -> Result<Master, RedisError> {
        let mut epochs = self.shared.epoch.subscribe();
        loop {
            if let Some(master) = self.shared.current.read().expect("master lock").clone() {
                return Ok(master);
            }
            self.shared.lookup_now.notify_one();
            if epochs.changed().await.is_err() {
                return Err(RedisError::from((ErrorKind::Io, "sentinel follower stopped")));
            }
        }
    }

    /// Changes of master, for listeners that must re-subscribe on the new one.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.shared.epoch.subscribe()
    }

    /// The current epoch, to tell a connection opened before a switch.
    pub fn epoch(&self) -> u64 {
        *self.shared.epoch.borrow()
    }

    /// Runs `call` on the current master's connection; an error that looks like a failover
    /// makes the follower ask the sentinels again at once.
    pub async fn on_master<T, F, Fut>(&self, call: F) -> Result<T, RedisError>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = Result<T, RedisError>>,
    {
        let result = call(self.master().await?.conn).await;
        if let Err(err) = &result {
            self.observe(err);
        }
        result
    }

    /// Asks the sentinels again at once when `err` is what a failover looks like.
    pub fn observe(&self, err: &RedisError) {
        let failover_like = err.is_connection_dropped()
            || err.is_connection_refusal()
            || err.is_io_error()
            || err.is_timeout()
            || matches!(err.kind(), ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown));
        if failover_like {
            self.shared.lookup_now.notify_one();
        }
    }
}

async fn follow(shared: Arc<Shared>) {
    loop {
        match lookup(&shared).await {
            Ok(host) => switch_to(&shared, host),
            Err(err) => tracing::debug!(error = %err, "no redis master from the sentinels"),
        }
        tokio::time::sleep(MIN_LOOKUP_GAP).await;
        let _ = tokio::time::timeout(POLL_INTERVAL, shared.lookup_now.notified()).await;
    }
}

fn switch_to(shared: &Shared, host: String) {
    let mut current = shared.current.write().expect("master lock");
    if current.as_ref().is_some_and(|master| master.host == host) {
        return;
    }
    let opened = data_node(shared, &host).and_then(|client| {
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), shared.manager_config.clone())?;
        Ok((client, conn))
    });
    match opened {
        Ok((client, conn)) => {
            let previous = current.replace(Master { host: host.clone(), client, conn });
            drop(current);
            match previous {
                Some(previous) => tracing::warn!(from = %previous.host, to = %host, "redis master changed"),
                None => tracing::info!(master = %host, "redis master found through sentinel"),
            }
            shared.epoch.send_modify(|epoch| *epoch += 1);
        }
        Err(err) => tracing::warn!(master = %host, error = %err, "cannot open the master the sentinels name"),
    }
}

fn data_node(shared: &Shared, host: &str) -> Result<redis::Client, RedisError> {
    crate::store::connections::node_client(&shared.data.url_for(host), shared.tls_root.as_deref())
        .map_err(|err| RedisError::from((ErrorKind::InvalidClientConfig, "bad data node address", err.to_string())))
}

/// Asks the sentinels in turn; the first named master that confirms its role wins.
async fn lookup(shared: &Shared) -> Result<String, String> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(shared.timeout))
        .set_response_timeout(Some(shared.timeout));
    let known = shared.current.read().expect("master lock").as_ref().map(|master| master.host.clone());
    let mut last_error = String::from("no sentinel configured");
    for (index, sentinel) in shared.sentinels.iter().enumerate() {
        let named = async {
            // Kept between lookups: asking twice a second must not mean connecting too.
            let cached = shared.sentinel_connections.lock().expect("sentinel connections")[index].clone();
            let mut conn = match cached {
                Some(conn) => conn,
                None => sentinel.get_multiplexed_async_connection_with_config(&config).await?,
            };
            let reply = redis::cmd("SENTINEL")
                .arg("get-master-addr-by-name")
                .arg(&shared.master_name)
                .query_async::<Option<(String, u16)>>(&mut conn)
                .await;
            shared.sentinel_connections.lock().expect("sentinel connections")[index] = reply.is_ok().then_some(conn);
            reply
        };
        let host = match tokio::time::timeout(shared.timeout, named).await {
            Ok(Ok(Some((ip, port)))) if ip.contains(':') => format!("[{ip}]:{port}"),
            Ok(Ok(Some((ip, port)))) => format!("{ip}:{port}"),
            Ok(Ok(None)) => {
                last_error = format!("a sentinel does not know master {:?}", shared.master_name);
                continue;
            }
            Ok(Err(err)) => {
                last_error = err.to_string();
                continue;
            }
            Err(_) => {
                shared.sentinel_connections.lock().expect("sentinel connections")[index] = None;
                last_error = "sentinel did not answer in time".into();
                continue;
            }
        };
        if known.as_deref() == Some(host.as_str()) {
            return Ok(host);
        }
        match is_master(shared, &host, &config).await {
            Ok(true) => return Ok(host),
            Ok(false) => last_error = format!("{host} is named master but is not one (yet)"),
            Err(err) => last_error = format!("{host}: {err}"),
        }
    }
    Err(last_error)
}

async fn is_master(shared: &Shared, host: &str, config: &redis::AsyncConnectionConfig) -> Result<bool, RedisError> {
    let client = data_node(shared, host)?;
    let role = async {
        let mut conn = client.get_multiplexed_async_connection_with_config(config).await?;
        redis::cmd("ROLE").query_async::<Value>(&mut conn).await
    };
    match tokio::time::timeout(shared.timeout, role).await {
        Ok(Ok(Value::Array(parts))) => Ok(matches!(parts.first(), Some(Value::BulkString(role)) if role == b"master")),
        Ok(Ok(_)) => Ok(false),
        // An ACL without +role: the sentinels' word is all there is.
        Ok(Err(err)) if err.code() == Some("NOPERM") => Ok(true),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(RedisError::from((ErrorKind::Io, "ROLE timed out"))),
    }
}
