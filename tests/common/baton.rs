//! `baton` as a child process, for what only a process can show: signals, kills, restarts
//! in place, its JSON log, its metrics listener. And [`Clients`], the service clients of a
//! baton wherever it runs.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::election_service_client::ElectionServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use testkit::BatonProcess;
use tonic::transport::Channel;
use tonic_health::pb::health_client::HealthClient;

/// The service clients of a running baton, each on a connection of its own.
// Only this test crate implements and calls it, so the Send-ness of the futures that
// `async fn` leaves unstated binds nobody.
#[allow(async_fn_in_trait)]
pub trait Clients {
    /// Where it serves gRPC.
    fn grpc_addr(&self) -> SocketAddr;

    async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.grpc_addr())).unwrap().connect().await.unwrap()
    }

    async fn rate_limiter(&self) -> RateLimiterServiceClient<Channel> {
        RateLimiterServiceClient::new(self.channel().await)
    }

    async fn locks(&self) -> LockServiceClient<Channel> {
        LockServiceClient::new(self.channel().await)
    }

    async fn elections(&self) -> ElectionServiceClient<Channel> {
        ElectionServiceClient::new(self.channel().await)
    }

    async fn queues(&self) -> JobQueueServiceClient<Channel> {
        JobQueueServiceClient::new(self.channel().await)
    }

    async fn cache(&self) -> CacheServiceClient<Channel> {
        CacheServiceClient::new(self.channel().await)
    }

    async fn sessions(&self) -> SessionStoreServiceClient<Channel> {
        SessionStoreServiceClient::new(self.channel().await)
    }

    async fn health(&self) -> HealthClient<Channel> {
        HealthClient::new(self.channel().await)
    }
}

/// A `baton` child process (`testkit::BatonProcess`) with the tests' defaults.
pub struct Baton(BatonProcess);

impl Baton {
    /// Starts baton against `redis_url` (or its embedded Redis when `None`).
    pub fn start(redis_url: Option<&str>, extra: &[&str]) -> Self {
        let mut args: Vec<&str> = extra.to_vec();
        // Test defaults, unless the test sets its own.
        for (flag, value) in [("--redis-timeout", "500ms"), ("--shutdown-delay", "200ms")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        if let Some(url) = redis_url {
            args.extend(["--redis-url", url]);
        }
        Self(BatonProcess::start(Path::new(env!("CARGO_BIN_EXE_baton")), &args, "info"))
    }
}

impl Clients for Baton {
    fn grpc_addr(&self) -> SocketAddr {
        self.0.addr
    }
}

impl Deref for Baton {
    type Target = BatonProcess;

    fn deref(&self) -> &BatonProcess {
        &self.0
    }
}

impl DerefMut for Baton {
    fn deref_mut(&mut self) -> &mut BatonProcess {
        &mut self.0
    }
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
