//! Redis Cluster and Sentinel (issue #12), with credentials and TLS: what
//! `tests/cluster.rs`, `tests/sentinel.rs` and `tests/transport.rs` run against. Their
//! processes are `Node`s rather than `Redis`es because they may require credentials to be
//! pinged, and a sentinel needs a config file of its own.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use testkit::process::spawn_ready;
use testkit::{PATIENCE, free_port, wait};

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
        command.stdout(Stdio::null()).stderr(Stdio::null());
        // `try_connection` authenticates, which a bare PING could not.
        let node = &*self;
        let child = spawn_ready(&mut command, PATIENCE, || {
            node.try_connection().is_some_and(|mut conn| redis::cmd("PING").query::<String>(&mut conn).is_ok())
        });
        self.child = child;
        self.child.is_some()
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
        assert!(wait::until(PATIENCE * 3, || cluster.is_ready()), "the cluster did not converge");
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
        assert!(wait::until(PATIENCE * 3, || set.is_ready()), "the sentinels did not find each other and the replica");
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
                let master: Option<HashMap<String, String>> =
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
        let mut votes: HashMap<u16, usize> = HashMap::new();
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
