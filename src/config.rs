//! Configuration: one clap struct (flags with `BATON_*` env twins) plus an optional TOML
//! file for named rate-limit policies and input limits.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::ratelimit::{Algorithm, LimitSpec, Policy};
use crate::store::topology::UrlList;
use crate::store::{SentinelSettings, Topology};
use crate::validate::Limits;

/// Command-line flags; each has an environment twin.
#[derive(Debug, Clone, Parser)]
#[command(name = "baton", version, about = "gRPC coordination service on Redis")]
pub struct Flags {
    /// Address the gRPC server listens on.
    #[arg(long, env = "BATON_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,

    /// Address of the Prometheus `/metrics` endpoint.
    #[arg(long, env = "BATON_METRICS_LISTEN", default_value = "0.0.0.0:9090")]
    pub metrics_listen: SocketAddr,

    /// Address of the operator's dashboard (docs/dashboard.md); off unless given. Anyone who
    /// reaches it can read the default namespace; actions need an `admin` API key.
    #[arg(long, env = "BATON_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,

    /// Redis URL (`redis://[user:password@]host:port/db`, `redis+unix://`). Without it Baton starts a
    /// private, non-persistent `redis-server` child: development only. With `--redis-mode
    /// cluster` it lists seed nodes, with `sentinel` the sentinels, comma-separated
    /// (`redis://user:password@h1:7000,h2:7001`); its credentials and database are the data
    /// nodes' in every mode.
    #[arg(long, env = "BATON_REDIS_URL")]
    pub redis_url: Option<String>,

    /// How the Redis URLs are reached: one server, a Redis Cluster, or a master found (and
    /// followed across failovers) through Sentinel. Applies to `--cache-redis-url` too.
    #[arg(long, env = "BATON_REDIS_MODE", value_enum, default_value_t = RedisMode::Standalone)]
    pub redis_mode: RedisMode,

    /// The master name the sentinels monitor (`sentinel monitor <name> …`); required with
    /// `--redis-mode sentinel`.
    #[arg(long, env = "BATON_REDIS_SENTINEL_MASTER")]
    pub redis_sentinel_master: Option<String>,

    /// Username for the sentinels themselves (their own ACL), if they require one.
    #[arg(long, env = "BATON_REDIS_SENTINEL_USERNAME")]
    pub redis_sentinel_username: Option<String>,

    /// Password for the sentinels themselves (their own `requirepass`), if they require one.
    #[arg(long, env = "BATON_REDIS_SENTINEL_PASSWORD", hide_env_values = true)]
    pub redis_sentinel_password: Option<String>,

    /// Redis URL for the cache alone (e.g. an `allkeys-lru` instance); default: `--redis-url`.
    #[arg(long, env = "BATON_CACHE_REDIS_URL")]
    pub cache_redis_url: Option<String>,

    /// Upper bound on every Redis call; past it the RPC answers UNAVAILABLE.
    /// Overrides `limits.redis_timeout` from the config file.
    #[arg(long, env = "BATON_REDIS_TIMEOUT", value_parser = humantime::parse_duration)]
    pub redis_timeout: Option<Duration>,

    /// How long shutdown may take, from SIGTERM to exit.
    #[arg(long, env = "BATON_SHUTDOWN_GRACE", default_value = "20s", value_parser = humantime::parse_duration)]
    pub shutdown_grace: Duration,

    /// After SIGTERM, how long to keep serving settlements and renewals (with health `""`
    /// NOT_SERVING and new work already refused) before refusing connections, so load
    /// balancers see the replica leave first.
    #[arg(long, env = "BATON_SHUTDOWN_DELAY", default_value = "1s", value_parser = humantime::parse_duration)]
    pub shutdown_delay: Duration,

    /// Log format.
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Export traces over OTLP to this collector (e.g. http://otel-collector:4317); without
    /// it, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT or OTEL_EXPORTER_OTLP_ENDPOINT. Unset: no traces.
    #[arg(long, env = "BATON_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,

    /// The OTLP transport.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_PROTOCOL", value_enum, default_value_t = OtlpProtocol::Grpc)]
    pub otlp_protocol: OtlpProtocol,

    /// Sample this share of traces that start here (parent-based: a caller's sampling
    /// decision is followed; an unsampled call makes no span). Unset: OTEL_TRACES_SAMPLER
    /// (always_on, always_off, traceidratio, parentbased_*) with OTEL_TRACES_SAMPLER_ARG,
    /// else every trace.
    #[arg(long, env = "BATON_TRACE_SAMPLE_RATIO", value_parser = sample_ratio)]
    pub trace_sample_ratio: Option<f64>,

    /// TOML file with policies and limits (docs/configuration.md).
    #[arg(long, env = "BATON_CONFIG")]
    pub config: Option<PathBuf>,

    /// Replicas that must acknowledge (Redis `WAIT`) a lock grant or renewal before it is
    /// answered; unacknowledged grants are undone and answer UNAVAILABLE. 0 = don't wait.
    #[arg(long, env = "BATON_LOCK_MIN_REPLICAS", default_value_t = 0)]
    pub lock_min_replicas: u32,

    /// A lock's fencing counter is forgotten after this long without grants; a fresh one
    /// starts from the Redis clock in microseconds (docs/locks.md).
    #[arg(long, env = "BATON_LOCK_FENCE_IDLE", default_value = "7d", value_parser = humantime::parse_duration)]
    pub lock_fence_idle: Duration,

    /// How long succeeded and cancelled jobs, with their results, are kept.
    #[arg(long, env = "BATON_QUEUE_RETENTION", default_value = "24h", value_parser = humantime::parse_duration)]
    pub queue_retention: Duration,

    /// How long dead jobs are kept for inspection and redrive.
    #[arg(long, env = "BATON_QUEUE_DEAD_RETENTION", default_value = "7d", value_parser = humantime::parse_duration)]
    pub queue_dead_retention: Duration,

    /// How many succeeded jobs each queue keeps for inspection (the newest), within
    /// --queue-retention.
    #[arg(long, env = "BATON_QUEUE_KEEP_SUCCEEDED", default_value_t = 10_000)]
    pub queue_keep_succeeded: u64,

    /// How many dead jobs each queue keeps (the newest), within --queue-dead-retention.
    #[arg(long, env = "BATON_QUEUE_KEEP_DEAD", default_value_t = 10_000)]
    pub queue_keep_dead: u64,

    /// Visibility timeout of a Consume that does not set one.
    #[arg(long, env = "BATON_QUEUE_VISIBILITY_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub queue_visibility_timeout: Duration,

    /// Largest `max_in_flight` a Consume may ask for.
    #[arg(long, env = "BATON_QUEUE_MAX_IN_FLIGHT", default_value_t = 1000)]
    pub queue_max_in_flight: u32,

    /// Idle timeout of a session that does not set one.
    #[arg(long, env = "BATON_SESSION_IDLE_TIMEOUT", default_value = "30m", value_parser = humantime::parse_duration)]
    pub session_idle_timeout: Duration,

    /// Absolute timeout of a session that does not set one.
    #[arg(long, env = "BATON_SESSION_ABSOLUTE_TIMEOUT", default_value = "24h", value_parser = humantime::parse_duration)]
    pub session_absolute_timeout: Duration,

    /// Most bytes of data (keys and values) in one session.
    #[arg(long, env = "BATON_SESSION_MAX_BYTES", default_value_t = 64 * 1024)]
    pub session_max_bytes: usize,

    /// Most live sessions per subject; creating one more evicts the oldest. 0 = unlimited.
    #[arg(long, env = "BATON_SESSION_MAX_PER_SUBJECT", default_value_t = 0)]
    pub session_max_per_subject: usize,

    /// A directory of envoyproxy/ratelimit's YAML config files (what its
    /// RUNTIME_ROOT/RUNTIME_SUBDIRECTORY/config holds), read unchanged beside the config
    /// file's `[envoy]` rules and reloaded within a second of any change.
    #[arg(long, env = "BATON_ENVOY_CONFIG_DIR")]
    pub envoy_config_dir: Option<PathBuf>,

    /// How ShouldRateLimit counts a request's descriptors: `atomic` (a request over any
    /// limit consumes nothing) or `upstream` (every hit counts, as envoyproxy/ratelimit).
    #[arg(long, env = "BATON_ENVOY_COUNTING", value_enum)]
    pub envoy_counting: Option<crate::envoy::Counting>,

    /// Add RateLimit-Limit, -Remaining and -Reset to ShouldRateLimit's response headers
    /// (envoyproxy/ratelimit's LIMIT_RESPONSE_HEADERS_ENABLED).
    #[arg(long, env = "BATON_ENVOY_RESPONSE_HEADERS")]
    pub envoy_response_headers: bool,

    /// Ask clients (HTTP/2 GOAWAY) to move to a new connection after this age, so long-lived
    /// connections spread onto new replicas. Calls and streams already open on the old
    /// connection are never cut: there is deliberately no grace deadline, since cutting a
    /// KeepAlive or Consume stream would release its lease or hand back its jobs. 0 = never.
    #[arg(long, env = "BATON_MAX_CONNECTION_AGE", default_value = "0s", value_parser = humantime::parse_duration)]
    pub max_connection_age: Duration,

    /// Threads that serve requests (1..=1024). Default: the CPUs this process may use (its
    /// affinity and cgroup quota). Fewer where baton shares its cores with Redis or other
    /// busy processes: threads that outnumber the free cores cost CPU in wake-ups and
    /// context switches (docs/operations.md).
    #[arg(long, env = "BATON_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub worker_threads: Option<u16>,

    /// Certificate chain (PEM) to serve gRPC over TLS; with `--tls-key`. The files are
    /// re-read when they change, so certificates rotate without a restart.
    #[arg(long, env = "BATON_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// Private key (PEM) of `--tls-cert`.
    #[arg(long, env = "BATON_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// CA bundle (PEM): with it, every client must present a certificate it signed (mTLS).
    #[arg(long, env = "BATON_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// CA bundle (PEM) that `rediss://` servers are verified against, instead of the
    /// system's roots.
    #[arg(long, env = "BATON_REDIS_TLS_CA")]
    pub redis_tls_ca: Option<PathBuf>,

    /// The `redis-server` binary used for the embedded development Redis.
    #[arg(long, env = "BATON_REDIS_SERVER_BIN", default_value = "redis-server")]
    pub redis_server_bin: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RedisMode {
    Standalone,
    Cluster,
    Sentinel,
}

/// How traces travel to the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OtlpProtocol {
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

fn sample_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err(format!("{text:?} is not a ratio between 0 and 1")),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Everything the server needs, flags and file merged and validated.
#[derive(Debug, Clone)]
pub struct Config {
    pub flags: Flags,
    pub limits: Limits,
    pub policies: BTreeMap<String, Policy>,
    /// Envoy's descriptors mapped to limits (`[envoy]` in the file, and upstream's YAML).
    pub envoy: crate::envoy::EnvoyConfig,
    /// API keys; empty = authentication off.
    pub api_keys: crate::auth::ApiKeys,
    pub server: ServerSettings,
}

/// The gRPC listener's transport settings (`[server]` in the file). The defaults close
/// what tonic and hyper leave open: unlimited streams per connection, no limit on
/// locally reset streams, no keepalive, and calls without a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// HTTP/2 `MAX_CONCURRENT_STREAMS`: enough for a worker's Consume and KeepAlive
    /// streams; clients holding more open several connections.
    pub max_concurrent_streams: u32,
    /// Streams the server may reset for protocol errors before it answers GOAWAY.
    pub max_local_error_reset_streams: usize,
    /// HTTP/2 PING interval; a peer that does not answer within `keepalive_timeout` is
    /// disconnected, which also closes idle connections of vanished clients.
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// A connection that has not finished its TLS handshake or HTTP/2 preface by then
    /// is closed.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// The deadline of a unary call whose client set none; answered DEADLINE_EXCEEDED.
    /// Streams (Consume, KeepAlive) and waits the client asked for (Acquire, Fetch) are
    /// bounded by their own validated limits instead.
    #[serde(with = "humantime_serde")]
    pub default_deadline: Duration,
    /// Serve gRPC server reflection (grpcurl, Postman).
    pub reflection: bool,
    /// How often the TLS files are checked for changes.
    #[serde(with = "humantime_serde")]
    pub tls_reload_interval: Duration,
}

impl Default for ServerSettings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 1024,
            max_local_error_reset_streams: 256,
            keepalive_interval: Duration::from_secs(20),
            keepalive_timeout: Duration::from_secs(10),
            tcp_keepalive: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            default_deadline: Duration::from_secs(30),
            reflection: true,
            tls_reload_interval: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    limits: Limits,
    #[serde(default)]
    policies: BTreeMap<String, FilePolicy>,
    #[serde(default)]
    envoy: crate::envoy::EnvoyFile,
    #[serde(default)]
    api_keys: Vec<crate::auth::ApiKeyFile>,
    #[serde(default)]
    server: ServerSettings,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
enum FileAlgorithm {
    FixedWindow,
    SlidingWindow,
    TokenBucket,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePolicy {
    algorithm: FileAlgorithm,
    limit: u64,
    #[serde(with = "humantime_serde")]
    period: Duration,
    #[serde(default)]
    burst: u64,
    #[serde(default)]
    fail_open: bool,
}

impl Config {
    /// Merges the flags with the optional file and checks every value.
    pub fn load(flags: Flags) -> Result<Self, ConfigError> {
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let path = flags.config.clone().unwrap_or_default();
        let invalid = |message: String| ConfigError::Invalid { path: path.clone(), message };

        // The flag wins over the file, the file over the default.
        let limits = Limits { redis_timeout: flags.redis_timeout.unwrap_or(file.limits.redis_timeout), ..file.limits };
        if limits.max_message_bytes < 64 * 1024 {
            return Err(invalid("limits.max_message_bytes must be at least 65536".into()));
        }
        if limits.max_value_bytes >= limits.max_message_bytes {
            return Err(invalid("limits.max_value_bytes must be below limits.max_message_bytes".into()));
        }
        if limits.max_batch_keys == 0 {
            return Err(invalid("limits.max_batch_keys must be at least 1".into()));
        }
        if limits.max_key_bytes == 0 || limits.max_key_bytes > 64 * 1024 {
            return Err(invalid("limits.max_key_bytes must be 1..=65536".into()));
        }
        if limits.redis_timeout.is_zero() {
            return Err(invalid("limits.redis_timeout must be positive".into()));
        }
        if flags.queue_max_in_flight == 0 {
            return Err(invalid("--queue-max-in-flight must be at least 1".into()));
        }
        if flags.queue_visibility_timeout < Duration::from_secs(1) {
            return Err(invalid("--queue-visibility-timeout must be at least 1s".into()));
        }
        if limits.max_ttl < Duration::from_secs(1) {
            return Err(invalid("limits.max_ttl must be at least 1s".into()));
        }
        check_redis_mode(&flags).map_err(invalid)?;

        let mut policies = BTreeMap::new();
        for (name, policy) in file.policies {
            let algorithm = match policy.algorithm {
                FileAlgorithm::FixedWindow => Algorithm::FixedWindow,
                FileAlgorithm::SlidingWindow => Algorithm::SlidingWindow,
                FileAlgorithm::TokenBucket => Algorithm::TokenBucket,
            };
            let spec = LimitSpec::new(algorithm, policy.limit, policy.period, policy.burst, &limits)
                .map_err(|why| invalid(format!("policies.{name}: {why}")))?;
            policies.insert(name, Policy { spec, fail_open: policy.fail_open });
        }
        let envoy_flags = crate::envoy::EnvoyFlags {
            config_dir: flags.envoy_config_dir.clone(),
            counting: flags.envoy_counting,
            response_headers: flags.envoy_response_headers,
        };
        let envoy = crate::envoy::EnvoyConfig::new(file.envoy, envoy_flags, &limits).map_err(invalid)?;
        let api_keys = crate::auth::ApiKeys::from_file(file.api_keys).map_err(invalid)?;
        let server = server_settings(file.server).map_err(invalid)?;
        Ok(Self { flags, limits, policies, envoy, api_keys, server })
    }

    /// How the Redis URLs are to be reached.
    pub fn redis_topology(&self) -> Topology {
        match self.flags.redis_mode {
            RedisMode::Standalone => Topology::Standalone,
            RedisMode::Cluster => Topology::Cluster,
            RedisMode::Sentinel => Topology::Sentinel(SentinelSettings {
                master_name: self.flags.redis_sentinel_master.clone().unwrap_or_default(),
                username: self.flags.redis_sentinel_username.clone(),
                password: self.flags.redis_sentinel_password.clone(),
            }),
        }
    }

    /// The effective configuration for the start-up log, with secrets redacted.
    pub fn redacted_summary(&self) -> String {
        format!(
            "listen={} metrics_listen={} admin_listen={:?} redis_mode={:?} redis_url={} cache_redis_url={} redis_timeout={:?} \
             shutdown_grace={:?} shutdown_delay={:?} lock_min_replicas={} lock_fence_idle={:?} \
             queue_retention={:?} queue_dead_retention={:?} queue_keep_succeeded={} queue_keep_dead={} \
             queue_visibility_timeout={:?} queue_max_in_flight={} \
             session_idle_timeout={:?} session_absolute_timeout={:?} session_max_bytes={} session_max_per_subject={} \
             max_connection_age={:?} worker_threads={} tls={} mtls={} \
             limits={:?} server={:?} policies=[{}]",
            self.flags.listen,
            self.flags.metrics_listen,
            self.flags.admin_listen,
            self.flags.redis_mode,
            self.flags.redis_url.as_deref().map(redact_url).unwrap_or_else(|| "embedded".into()),
            self.flags.cache_redis_url.as_deref().map(redact_url).unwrap_or_else(|| "same".into()),
            self.limits.redis_timeout,
            self.flags.shutdown_grace,
            self.flags.shutdown_delay,
            self.flags.lock_min_replicas,
            self.flags.lock_fence_idle,
            self.flags.queue_retention,
            self.flags.queue_dead_retention,
            self.flags.queue_keep_succeeded,
            self.flags.queue_keep_dead,
            self.flags.queue_visibility_timeout,
            self.flags.queue_max_in_flight,
            self.flags.session_idle_timeout,
            self.flags.session_absolute_timeout,
            self.flags.session_max_bytes,
            self.flags.session_max_per_subject,
            self.flags.max_connection_age,
            self.flags.worker_threads.map_or_else(|| "auto".to_owned(), |threads| threads.to_string()),
            self.flags.tls_cert.is_some(),
            self.flags.tls_client_ca.is_some(),
            self.limits,
            self.server,
            self.policies.keys().cloned().collect::<Vec<_>>().join(","),
        )
    }
}

fn server_settings(settings: ServerSettings) -> Result<ServerSettings, String> {
    if settings.max_concurrent_streams == 0 {
        return Err("server.max_concurrent_streams must be at least 1".into());
    }
    if settings.max_local_error_reset_streams == 0 {
        return Err("server.max_local_error_reset_streams must be at least 1".into());
    }
    let durations = [
        ("keepalive_interval", settings.keepalive_interval),
        ("keepalive_timeout", settings.keepalive_timeout),
        ("tcp_keepalive", settings.tcp_keepalive),
        ("handshake_timeout", settings.handshake_timeout),
        ("default_deadline", settings.default_deadline),
        ("tls_reload_interval", settings.tls_reload_interval),
    ];
    if let Some((name, _)) = durations.iter().find(|(_, value)| *value < Duration::from_millis(100)) {
        return Err(format!("server.{name} must be at least 100ms"));
    }
    Ok(settings)
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    toml::from_str(&text).map_err(|err| ConfigError::Parse { path: path.to_owned(), message: err.to_string() })
}

/// The flags that only make sense together with some `--redis-mode`.
fn check_redis_mode(flags: &Flags) -> Result<(), String> {
    let needs_url = |mode: &str| format!("--redis-mode {mode} needs --redis-url (there is no embedded {mode})");
    match flags.redis_mode {
        RedisMode::Standalone => {
            if flags.redis_sentinel_master.is_some() {
                return Err("--redis-sentinel-master needs --redis-mode sentinel".into());
            }
        }
        RedisMode::Cluster => {
            if flags.redis_url.is_none() {
                return Err(needs_url("cluster"));
            }
            // WAIT acknowledges only the writes of its own connection, which in a Cluster
            // would have to be a dedicated connection per master; see docs/operations.md.
            if flags.lock_min_replicas > 0 {
                return Err("--lock-min-replicas is not supported with --redis-mode cluster: set \
                            min-replicas-to-write on the cluster's masters instead (see docs/operations.md)"
                    .into());
            }
        }
        RedisMode::Sentinel => {
            if flags.redis_url.is_none() {
                return Err(needs_url("sentinel"));
            }
            if flags.redis_sentinel_master.as_deref().is_none_or(str::is_empty) {
                return Err("--redis-mode sentinel needs --redis-sentinel-master".into());
            }
        }
    }
    for url in [&flags.redis_url, &flags.cache_redis_url].into_iter().flatten() {
        if flags.redis_mode != RedisMode::Standalone {
            UrlList::parse(url).map_err(|why| format!("redis url {}: {why}", redact_url(url)))?;
        }
    }
    Ok(())
}

/// Hides the password in `redis://user:password@host` forms, and in each URL of a list.
pub fn redact_url(url: &str) -> String {
    if url.contains(',') && url.matches("://").count() > 1 {
        return url.split(',').map(redact_url).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_and_its_environment_twin_are_documented() {
        use clap::CommandFactory;
        let documented = include_str!("../docs/configuration.md");
        for arg in Flags::command().get_arguments() {
            let (Some(long), Some(env)) = (arg.get_long(), arg.get_env()) else { continue };
            assert!(documented.contains(&format!("`--{long}`")), "--{long} missing from docs/configuration.md");
            let env = env.to_string_lossy();
            // Grouped rows abbreviate a twin's shared prefix (`BATON_TLS_CERT`, `…_KEY`).
            let suffix = env.rsplit('_').next().unwrap_or(&env);
            assert!(
                documented.contains(&format!("`{env}`")) || documented.contains(&format!("`…_{suffix}`")),
                "{env} missing from docs/configuration.md"
            );
        }
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact_url("redis://:hunter2@h:6379/0"), "redis://:***@h:6379/0");
        assert_eq!(redact_url("rediss://u:p@h"), "rediss://u:***@h");
        assert_eq!(redact_url("redis://h:6379"), "redis://h:6379");
        assert_eq!(redact_url("redis://u:p@a:1,b:2/0"), "redis://u:***@a:1,b:2/0");
        assert_eq!(redact_url("redis://u:p@a:1,redis://u:p@b:2"), "redis://u:***@a:1,redis://u:***@b:2");
    }

    #[test]
    fn parses_policies_and_rejects_bad_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baton.toml");
        std::fs::write(
            &path,
            "[limits]\nmax_key_bytes = 100\n[policies.api]\nalgorithm = \"token_bucket\"\nlimit = 10\nperiod = \"1s\"\nburst = 5\nfail_open = true\n",
        )
        .unwrap();
        let flags = Flags::parse_from(["baton", "--config", path.to_str().unwrap()]);
        let config = Config::load(flags).unwrap();
        assert_eq!(config.limits.max_key_bytes, 100);
        let policy = &config.policies["api"];
        assert!(policy.fail_open);
        assert_eq!(policy.spec.burst, 5);

        std::fs::write(&path, "[policies.bad]\nalgorithm = \"fixed_window\"\nlimit = 0\nperiod = \"1s\"\n").unwrap();
        let flags = Flags::parse_from(["baton", "--config", path.to_str().unwrap()]);
        let err = Config::load(flags).unwrap_err().to_string();
        assert!(err.contains("policies.bad") && err.contains("limit"), "{err}");

        std::fs::write(&path, "[limits]\nunknown = 1\n").unwrap();
        let flags = Flags::parse_from(["baton", "--config", path.to_str().unwrap()]);
        assert!(matches!(Config::load(flags), Err(ConfigError::Parse { .. })));
    }
}

#[cfg(test)]
mod redis_mode_tests {
    use super::*;

    fn load(args: &[&str]) -> Result<Config, String> {
        let mut argv = vec!["baton"];
        argv.extend_from_slice(args);
        Config::load(Flags::parse_from(argv)).map_err(|err| err.to_string())
    }

    #[test]
    fn modes_ask_for_what_they_need() {
        assert!(load(&["--redis-mode", "cluster"]).unwrap_err().contains("--redis-url"));
        let err = load(&["--redis-mode", "cluster", "--redis-url", "redis://a:1", "--lock-min-replicas", "1"]);
        assert!(err.unwrap_err().contains("--lock-min-replicas"));
        let err = load(&["--redis-mode", "sentinel", "--redis-url", "redis://a:1"]).unwrap_err();
        assert!(err.contains("--redis-sentinel-master"), "{err}");
        assert!(load(&["--redis-sentinel-master", "m"]).unwrap_err().contains("sentinel"));
        let config =
            load(&["--redis-mode", "sentinel", "--redis-url", "redis://a:1,b:2", "--redis-sentinel-master", "m"])
                .unwrap();
        assert!(matches!(config.redis_topology(), Topology::Sentinel(settings) if settings.master_name == "m"));
        assert_eq!(
            load(&["--redis-mode", "cluster", "--redis-url", "redis://a:1,b:2"]).unwrap().redis_topology(),
            Topology::Cluster
        );
    }
}
