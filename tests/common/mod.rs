//! Test harness: private `redis-server` processes on free ports (killable, freezable,
//! restartable) and `baton` child processes on `127.0.0.1:0`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// How long tests wait for state that becomes true later: several times every product
/// bound, because the test machine is shared and noisy.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) on a pid this harness started.
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Whether a process with this pid still exists (and is not a zombie we reaped).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name; Z is a zombie.
    !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// A private redis-server.
pub struct Redis {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    extra: Vec<String>,
}

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    pub fn start_with(extra: &[&str]) -> Self {
        let mut redis = Self {
            port: 0,
            child: None,
            dir: tempfile::tempdir().unwrap(),
            extra: extra.iter().map(|s| s.to_string()).collect(),
        };
        // A free port can be taken between probe and bind; a fresh port is then the fix.
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start");
    }

    fn spawn(&mut self) -> bool {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("redis-server on {} exited: {status}", self.port);
                self.child = None;
                return false;
            }
            if self.answers_ping() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn answers_ping(&self) -> bool {
        let Ok(client) = redis::Client::open(self.url()) else {
            return false;
        };
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis running").id()
    }

    /// SIGKILL: connections are refused from now on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts again on the same port (empty: nothing is persisted).
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.spawn(), "redis-server did not restart on port {}", self.port);
    }

    /// SIGSTOP: connections hang instead of being refused.
    pub fn freeze(&self) {
        signal(self.pid(), libc::SIGSTOP);
    }

    pub fn thaw(&self) {
        signal(self.pid(), libc::SIGCONT);
    }

    /// A direct connection for inspecting what Baton wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    }

    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.connection()).unwrap()
    }

    pub fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS").arg("*").query(&mut self.connection()).unwrap()
    }

    /// Records every message published on Baton's channels from now on.
    pub fn record_published(&self) -> Published {
        let mut connection = self.connection();
        connection.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let (messages, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (ready, subscribed) = mpsc::channel();
        let (record, stopped) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut pubsub = connection.as_pubsub();
            pubsub.psubscribe("baton:*").unwrap();
            ready.send(()).unwrap();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(message) = pubsub.get_message() {
                    let payload: String = message.get_payload().unwrap_or_default();
                    record.lock().unwrap().push((message.get_channel_name().to_owned(), payload));
                }
            }
        });
        subscribed.recv_timeout(Duration::from_secs(5)).expect("psubscribe");
        Published { messages, stop }
    }
}

/// Messages published on Baton's channels: (channel, payload).
pub struct Published {
    messages: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Published {
    /// The payloads of messages on channels for which `channel` holds, so far.
    pub fn on(&self, channel: impl Fn(&str) -> bool) -> Vec<String> {
        let messages = self.messages.lock().unwrap();
        messages.iter().filter(|(name, _)| channel(name)).map(|(_, payload)| payload.clone()).collect()
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &self.child {
            signal(child.id(), libc::SIGCONT);
        }
        self.kill();
    }
}

/// A `baton` child process.
pub struct Baton {
    child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl Baton {
    /// Starts baton against `redis_url` (or its embedded Redis when `None`).
    pub fn start(redis_url: Option<&str>, extra: &[&str]) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_baton"));
        command.args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]).args(extra);
        // Any free port, unless the test needs a fixed one (to restart a replica in place).
        if !extra.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command.env("RUST_LOG", "info").stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        // Test defaults, unless the test sets its own.
        for (flag, value) in [("--redis-timeout", "500ms"), ("--shutdown-delay", "200ms")] {
            if !extra.contains(&flag) {
                command.args([flag, value]);
            }
        }
        if let Some(url) = redis_url {
            command.args(["--redis-url", url]);
        }
        let mut child = command.spawn().expect("baton binary");
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addrs_tx, addrs_rx) = mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let (Some(grpc), Some(metrics)) = (json_field(&line, "grpc_addr"), json_field(&line, "metrics_addr"))
                {
                    let _ = addrs_tx.send((grpc.parse().unwrap(), metrics.parse().unwrap()));
                }
                if std::env::var_os("BATON_TEST_LOGS").is_some() {
                    eprintln!("baton: {line}");
                }
                sink.lock().unwrap().push(line);
            }
        });
        let (addr, metrics_addr) = match addrs_rx.recv_timeout(PATIENCE) {
            Ok(addrs) => addrs,
            Err(_) => {
                let _ = child.kill();
                panic!("baton did not start: {:#?}", logs.lock().unwrap());
            }
        };
        Self { child, addr, metrics_addr, logs }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    pub async fn rate_limiter(&self) -> RateLimiterServiceClient<Channel> {
        RateLimiterServiceClient::new(self.channel().await)
    }

    pub async fn locks(&self) -> LockServiceClient<Channel> {
        LockServiceClient::new(self.channel().await)
    }

    pub async fn queues(&self) -> JobQueueServiceClient<Channel> {
        JobQueueServiceClient::new(self.channel().await)
    }

    pub async fn cache(&self) -> CacheServiceClient<Channel> {
        CacheServiceClient::new(self.channel().await)
    }

    pub async fn sessions(&self) -> SessionStoreServiceClient<Channel> {
        SessionStoreServiceClient::new(self.channel().await)
    }

    pub async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    pub fn sigterm(&self) {
        signal(self.child.id(), libc::SIGTERM);
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, up to `patience`.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        let started = Instant::now();
        while started.elapsed() < patience {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Baton {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Pulls `"name":"value"` out of a JSON log line.
pub fn json_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let marker = format!("\"{name}\":\"");
    let start = line.find(&marker)? + marker.len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

/// The serving status of health name `service`, or `None` if the call failed.
pub async fn health_status(health: &mut HealthClient<Channel>, service: &str) -> Option<ServingStatus> {
    let request = HealthCheckRequest { service: service.to_owned() };
    let response = tokio::time::timeout(Duration::from_secs(2), health.check(request)).await.ok()?.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Polls `condition` until it holds or `patience` runs out; returns how long it took.
pub async fn eventually<F, Fut>(patience: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < patience, "not within {patience:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A key unique to one test, so tests sharing a Redis never collide.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

// ─── Redis Cluster and Sentinel (issue #12) ──────────────────────────────────────────────
// Everything below serves tests/cluster.rs and tests/sentinel.rs. Their processes are
// `Node`s rather than `Redis`es because they may require credentials to be pinged, and a
// sentinel needs a config file of its own.

/// Credentials a test Redis requires: none, `requirepass`, or an ACL user (with the
/// `default` user switched off).
#[derive(Clone, Debug, Default)]
pub struct Auth {
    pub user: Option<String>,
    pub password: Option<String>,
    /// ACL rules of `user` instead of everything; an `admin` user (same password, every
    /// right) then serves replication, the sentinels, redis-cli and the harness.
    pub rules: Option<String>,
}

impl Auth {
    pub fn none() -> Self {
        Self::default()
    }

    pub fn requirepass(password: &str) -> Self {
        Self { user: None, password: Some(password.to_owned()), rules: None }
    }

    pub fn acl_user(user: &str, password: &str) -> Self {
        Self { user: Some(user.to_owned()), password: Some(password.to_owned()), rules: None }
    }

    /// An ACL user with only `rules` (e.g. the README's minimal set).
    pub fn acl_user_with(user: &str, password: &str, rules: &str) -> Self {
        Self { rules: Some(rules.to_owned()), ..Self::acl_user(user, password) }
    }

    /// Who the harness, replicas and sentinels authenticate as.
    fn admin(&self) -> Auth {
        match &self.rules {
            Some(_) => Self::acl_user("admin", self.password.as_deref().unwrap_or_default()),
            None => self.clone(),
        }
    }

    /// `user:password@`, `:password@` or nothing, for URLs.
    pub fn userinfo(&self) -> String {
        match (&self.user, &self.password) {
            (Some(user), Some(password)) => format!("{user}:{password}@"),
            (None, Some(password)) => format!(":{password}@"),
            _ => String::new(),
        }
    }

    /// redis-server arguments that require these credentials, from clients and replicas.
    fn server_args(&self) -> Vec<String> {
        if let (Some(rules), Some(user), Some(password)) = (&self.rules, &self.user, &self.password) {
            let mut args = vec!["--user".to_owned(), user.clone(), "on".to_owned(), format!(">{password}")];
            args.extend(rules.split_whitespace().map(str::to_owned));
            args.extend(self.admin().server_args());
            return args;
        }
        match (&self.user, &self.password) {
            // redis-server joins the words after an option into one config line.
            (Some(user), Some(password)) => vec![
                "--user".into(),
                user.clone(),
                "on".into(),
                format!(">{password}"),
                "~*".into(),
                "&*".into(),
                "+@all".into(),
                "--user".into(),
                "default".into(),
                "off".into(),
                "--masteruser".into(),
                user.clone(),
                "--masterauth".into(),
                password.clone(),
            ],
            (None, Some(password)) => {
                vec!["--requirepass".into(), password.clone(), "--masterauth".into(), password.clone()]
            }
            _ => Vec::new(),
        }
    }

    /// redis-cli arguments that authenticate.
    fn cli_args(&self) -> Vec<String> {
        if self.rules.is_some() {
            return self.admin().cli_args();
        }
        let mut args = Vec::new();
        if let Some(user) = &self.user {
            args.extend(["--user".to_owned(), user.clone()]);
        }
        if let Some(password) = &self.password {
            args.extend(["--pass".to_owned(), password.clone(), "--no-auth-warning".to_owned()]);
        }
        args
    }

    /// `sentinel auth-*` lines for a monitored master that requires these credentials.
    fn sentinel_lines(&self, master: &str) -> String {
        if self.rules.is_some() {
            return self.admin().sentinel_lines(master);
        }
        let mut lines = String::new();
        if let Some(user) = &self.user {
            lines.push_str(&format!("sentinel auth-user {master} {user}\n"));
        }
        if let Some(password) = &self.password {
            lines.push_str(&format!("sentinel auth-pass {master} {password}\n"));
        }
        lines
    }
}

/// A port whose Redis Cluster bus port (port + 10000) exists and is free too.
fn free_cluster_port() -> u16 {
    loop {
        let port = free_port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return port;
        }
    }
}

/// A redis-server data node or sentinel on loopback; killed on drop.
pub struct Node {
    pub port: u16,
    /// The TLS port, when the node has one (the port it is known by to TLS clients).
    pub tls_port: Option<u16>,
    child: Option<Child>,
    dir: tempfile::TempDir,
    args: Vec<String>,
    auth: Auth,
    /// A sentinel's configuration (without its `port` line); `None` for a data node.
    sentinel_conf: Option<String>,
}

impl Node {
    /// A data node: `args` after the harness's own, requiring `auth`.
    pub fn start(args: &[String], auth: &Auth, cluster_port: bool) -> Self {
        let mut all = auth.server_args();
        all.extend_from_slice(args);
        Self::launch(all, auth.clone(), None, cluster_port)
    }

    /// A sentinel with `conf` (monitor lines and the like); sentinels here need no auth.
    pub fn sentinel(conf: &str) -> Self {
        Self::launch(Vec::new(), Auth::none(), Some(conf.to_owned()), false)
    }

    fn launch(args: Vec<String>, auth: Auth, sentinel_conf: Option<String>, cluster_port: bool) -> Self {
        let mut node =
            Self { port: 0, tls_port: None, child: None, dir: tempfile::tempdir().unwrap(), args, auth, sentinel_conf };
        for _ in 0..5 {
            node.port = if cluster_port { free_cluster_port() } else { free_port() };
            if node.spawn() {
                return node;
            }
        }
        panic!("redis-server node did not start");
    }

    fn spawn(&mut self) -> bool {
        let mut command = Command::new("redis-server");
        match &self.sentinel_conf {
            Some(conf) => {
                let path = self.dir.path().join("sentinel.conf");
                let body = format!("port {}\nbind 127.0.0.1\ndir {}\n{conf}", self.port, self.dir.path().display());
                std::fs::write(&path, body).unwrap();
                command.arg(&path).arg("--sentinel");
            }
            None => {
                command
                    .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(self.dir.path())
                    .args(&self.args);
            }
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server is installed (make test installs it)");
        self.child = Some(child);
        let started = Instant::now();
        while started.elapsed() < PATIENCE {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                eprintln!("redis-server node on {} exited: {status}", self.port);
                self.child = None;
                return false;
            }
            if self.try_connection().is_some_and(|mut conn| redis::cmd("PING").query::<String>(&mut conn).is_ok()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("node running").id()
    }

    fn try_connection(&self) -> Option<redis::Connection> {
        let url = format!("redis://{}{}", self.auth.admin().userinfo(), self.addr());
        redis::Client::open(url).ok()?.get_connection_with_timeout(Duration::from_millis(500)).ok()
    }

    /// A direct, authenticated connection.
    pub fn connection(&self) -> redis::Connection {
        self.try_connection().unwrap_or_else(|| panic!("no connection to node {}", self.port))
    }

    /// Runs `cmd` on this node; `None` when it cannot be reached or refuses.
    pub fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Option<T> {
        cmd.query(&mut self.try_connection()?).ok()
    }

    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.connection()).unwrap()
    }

    /// SIGKILL: connections are refused from now on.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `redis-cli` with `args`; panics with its output unless it succeeds.
fn redis_cli(args: &[String]) -> String {
    let output = Command::new("redis-cli").args(args).stdin(Stdio::null()).output().expect("redis-cli is installed");
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "redis-cli {args:?} failed: {text}");
    text
}

/// A Redis Cluster of masters only, its slots spread evenly by `redis-cli --cluster create`.
pub struct RedisCluster {
    pub nodes: Vec<Node>,
    pub auth: Auth,
}

impl RedisCluster {
    pub fn start(masters: usize) -> Self {
        Self::start_with_auth(masters, Auth::none())
    }

    pub fn start_with_auth(masters: usize, auth: Auth) -> Self {
        Self::start_with(masters, auth, |_| Vec::new())
    }

    /// A cluster whose node `i` also gets `extra(i)` (TLS ports and files, say).
    pub fn start_with(masters: usize, auth: Auth, extra: impl Fn(usize) -> Vec<String>) -> Self {
        let args: Vec<String> = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            .into_iter()
            .chain(["--cluster-node-timeout", "5000"])
            .map(str::to_owned)
            .collect();
        let nodes: Vec<Node> = (0..masters)
            .map(|i| Node::start(&args.iter().cloned().chain(extra(i)).collect::<Vec<_>>(), &auth, true))
            .collect();
        let mut create = vec!["--cluster".to_owned(), "create".to_owned()];
        create.extend(nodes.iter().map(Node::addr));
        create.extend(["--cluster-replicas".to_owned(), "0".to_owned(), "--cluster-yes".to_owned()]);
        create.extend(auth.cli_args());
        redis_cli(&create);
        let cluster = Self { nodes, auth };
        let started = Instant::now();
        while !cluster.is_ready() {
            assert!(started.elapsed() < PATIENCE * 3, "the cluster did not converge");
            std::thread::sleep(Duration::from_millis(50));
        }
        cluster
    }

    /// Every node sees every slot served and every other node.
    fn is_ready(&self) -> bool {
        self.nodes.iter().all(|node| {
            node.query::<String>(redis::cmd("CLUSTER").arg("INFO")).is_some_and(|info| {
                info.contains("cluster_state:ok")
                    && info.contains("cluster_slots_ok:16384")
                    && info.contains(&format!("cluster_known_nodes:{}\r", self.nodes.len()))
            })
        })
    }

    /// Seed list URL with every node: `redis://[auth@]h1:p1,h2:p2,…`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(Node::addr).collect();
        format!("redis://{}{}", self.auth.userinfo(), hosts.join(","))
    }

    /// Keys held by each master.
    pub fn dbsizes(&self) -> Vec<i64> {
        self.nodes.iter().map(Node::dbsize).collect()
    }

    /// Asserts that Baton's keys landed on every master, not on one.
    pub fn assert_keys_on_every_master(&self) {
        let sizes = self.dbsizes();
        assert!(sizes.iter().all(|size| *size > 0), "keys per master: {sizes:?}");
    }
}

/// One master, one replica and three sentinels (quorum 2, `down-after-milliseconds` 1000).
pub struct SentinelSet {
    /// Index 0 starts as the master, 1 as its replica.
    pub data: Vec<Node>,
    pub sentinels: Vec<Node>,
    pub auth: Auth,
}

pub const SENTINEL_MASTER: &str = "baton";

/// Certificate files for a TLS deployment: every node and sentinel then also listens on a
/// TLS port, and replication and the sentinels' links use TLS.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    pub ca: std::path::PathBuf,
}

impl TlsFiles {
    /// The `redis.conf` directives, one `(name, value)` each.
    fn directives(&self, tls_port: u16) -> Vec<(&'static str, String)> {
        vec![
            ("tls-port", tls_port.to_string()),
            ("tls-cert-file", self.cert.display().to_string()),
            ("tls-key-file", self.key.display().to_string()),
            ("tls-ca-cert-file", self.ca.display().to_string()),
            ("tls-auth-clients", "no".into()),
            ("tls-replication", "yes".into()),
        ]
    }

    fn server_args(&self, tls_port: u16) -> Vec<String> {
        self.directives(tls_port).into_iter().flat_map(|(name, value)| [format!("--{name}"), value]).collect()
    }

    fn conf_lines(&self, tls_port: u16) -> String {
        self.directives(tls_port).into_iter().map(|(name, value)| format!("{name} {value}\n")).collect()
    }
}

impl SentinelSet {
    pub fn start(auth: Auth) -> Self {
        Self::start_with_tls(auth, None)
    }

    /// With `tls`, clients (Baton) reach the sentinels and the data nodes on TLS ports;
    /// the harness keeps plaintext ports.
    pub fn start_with_tls(auth: Auth, tls: Option<&TlsFiles>) -> Self {
        let data_node = |args: Vec<String>| {
            let tls_port = free_port();
            let mut all = args;
            if let Some(tls) = tls {
                all.extend(tls.server_args(tls_port));
            }
            let mut node = Node::start(&all, &auth, false);
            node.tls_port = tls.map(|_| tls_port);
            node
        };
        let master = data_node(Vec::new());
        let master_port = master.tls_port.unwrap_or(master.port);
        let replica = data_node(vec!["--replicaof".to_owned(), "127.0.0.1".to_owned(), master_port.to_string()]);
        let conf = format!(
            "sentinel monitor {SENTINEL_MASTER} 127.0.0.1 {master_port} 2\n\
             sentinel down-after-milliseconds {SENTINEL_MASTER} 1000\n\
             sentinel failover-timeout {SENTINEL_MASTER} 10000\n\
             sentinel parallel-syncs {SENTINEL_MASTER} 1\n{}",
            auth.sentinel_lines(SENTINEL_MASTER)
        );
        let sentinels = (0..3)
            .map(|_| {
                let tls_port = free_port();
                let lines = tls.map(|tls| tls.conf_lines(tls_port)).unwrap_or_default();
                let mut sentinel = Node::sentinel(&format!("{conf}{lines}"));
                sentinel.tls_port = tls.map(|_| tls_port);
                sentinel
            })
            .collect();
        let set = Self { data: vec![master, replica], sentinels, auth };
        let started = Instant::now();
        while !set.is_ready() {
            assert!(started.elapsed() < PATIENCE * 3, "the sentinels did not find each other and the replica");
            std::thread::sleep(Duration::from_millis(100));
        }
        set
    }

    /// The replica is in sync and every sentinel knows the replica and the other two
    /// sentinels: a failover can happen.
    fn is_ready(&self) -> bool {
        let synced = self.data[1]
            .query::<String>(redis::cmd("INFO").arg("replication"))
            .is_some_and(|info| info.contains("master_link_status:up"));
        synced
            && self.sentinels.iter().all(|sentinel| {
                let master: Option<std::collections::HashMap<String, String>> =
                    sentinel.query(redis::cmd("SENTINEL").arg("MASTER").arg(SENTINEL_MASTER));
                master.is_some_and(|fields| {
                    fields.get("num-other-sentinels").map(String::as_str) == Some("2")
                        && fields.get("num-slaves").map(String::as_str) == Some("1")
                })
            })
    }

    /// The sentinels as Baton's `--redis-url` (the credentials are the data nodes').
    pub fn url(&self) -> String {
        let hosts: Vec<String> =
            self.sentinels.iter().map(|node| format!("127.0.0.1:{}", node.tls_port.unwrap_or(node.port))).collect();
        let scheme = if self.sentinels[0].tls_port.is_some() { "rediss" } else { "redis" };
        format!("{scheme}://{}{}", self.auth.userinfo(), hosts.join(","))
    }

    /// Baton's flags for this set, `--redis-url` included.
    pub fn baton_args(&self) -> Vec<String> {
        vec![
            "--redis-mode".into(),
            "sentinel".into(),
            "--redis-sentinel-master".into(),
            SENTINEL_MASTER.into(),
            "--redis-url".into(),
            self.url(),
        ]
    }

    /// The port of the master the sentinels currently name (by majority of those answering).
    pub fn master_port(&self) -> Option<u16> {
        let mut votes: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
        for sentinel in &self.sentinels {
            let named: Option<(String, u16)> =
                sentinel.query(redis::cmd("SENTINEL").arg("get-master-addr-by-name").arg(SENTINEL_MASTER));
            if let Some((_, port)) = named {
                *votes.entry(port).or_default() += 1;
            }
        }
        votes.into_iter().max_by_key(|(_, count)| *count).map(|(port, _)| port)
    }

    /// The data node on `port`.
    pub fn node_on(&mut self, port: u16) -> &mut Node {
        self.data
            .iter_mut()
            .find(|node| node.port == port || node.tls_port == Some(port))
            .expect("a data node on that port")
    }
}

/// A KeepAlive request stream as the clients send it: `first`, then an empty heartbeat
/// every `every`, until the returned task is aborted (the request stream then ends).
pub fn heartbeats(
    first: baton::proto::v1::KeepAliveRequest,
    every: Duration,
) -> (tokio_stream::wrappers::ReceiverStream<baton::proto::v1::KeepAliveRequest>, tokio::task::JoinHandle<()>) {
    let (sender, receiver) = tokio::sync::mpsc::channel(1);
    let task = tokio::spawn(async move {
        let mut next = first;
        while sender.send(next).await.is_ok() {
            tokio::time::sleep(every).await;
            next = baton::proto::v1::KeepAliveRequest::default();
        }
    });
    (tokio_stream::wrappers::ReceiverStream::new(receiver), task)
}

/// `GET /metrics` from a baton's metrics listener: the whole HTTP response.
pub async fn scrape_metrics(addr: SocketAddr) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        stream.read_to_string(&mut body).unwrap();
        body
    })
    .await
    .unwrap()
}

/// Runs `test` of this very test binary as a child process with `env`, and waits until
/// it prints a line containing "HOLDING" (it holds what the parent test is about to kill
/// or freeze). Panics with `what` if it never does.
pub async fn spawn_holding_child(test: &str, env: &[(&str, &str)], what: &str) -> Child {
    use std::io::BufRead;
    let mut command = Command::new(std::env::current_exe().unwrap());
    command.args([test, "--exact", "--nocapture", "--test-threads=1"]).stdout(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let holding =
        tokio::task::spawn_blocking(move || stdout.lines().map_while(Result::ok).any(|l| l.contains("HOLDING")));
    assert!(holding.await.unwrap(), "{what}");
    child
}

/// The next event on a stream, within `patience`.
pub async fn next_event(
    stream: &mut tonic::Streaming<baton::proto::v1::ConsumeResponse>,
    patience: Duration,
) -> Option<baton::proto::v1::consume_response::Event> {
    match tokio::time::timeout(patience, tokio_stream::StreamExt::next(stream)).await {
        Ok(Some(Ok(response))) => response.event,
        Ok(Some(Err(status))) => panic!("stream failed: {status:?}"),
        Ok(None) => panic!("stream ended"),
        Err(_) => None,
    }
}
