//! Test harness: private `redis-server` processes on free ports (killable, freezable,
//! restartable) and `baton` child processes on `127.0.0.1:0`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, ExitStatus, Stdio};
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
        command
            .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
            .args(extra)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
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
