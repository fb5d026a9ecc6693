//! Baton served in this test process: `baton::server::run` on a listener bound to
//! `127.0.0.1:0`, as `src/main.rs` runs it but without the process-wide parts (tracing,
//! the metrics recorder and its listener, signals, the embedded dev Redis).

use std::net::SocketAddr;
use std::thread::JoinHandle;
use std::time::Duration;

use baton::config::{Config, Flags};
use baton::server::RedisUrls;
use clap::Parser;
use testkit::PATIENCE;
use tokio::sync::oneshot;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::Clients;

/// Baton in-process, on its own runtime and thread (as a child process would be, so a test
/// that blocks its own runtime does not stall the server). Dropping it shuts it down —
/// health NOT_SERVING, drain, within the grace period — and waits for that.
///
/// What a per-service suite checks needs nothing more; a test that signals or kills baton,
/// reads its log or scrapes its metrics uses a child [`super::Baton`] instead.
pub struct Server {
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    serving: Option<JoinHandle<Result<(), String>>>,
}

impl Server {
    /// Serves against `redis_url` with `extra` flags, as `baton --redis-url … extra` would;
    /// returns once it answers gRPC health.
    pub fn start(redis_url: &str, extra: &[&str]) -> Self {
        let mut args = vec!["baton", "--redis-url", redis_url];
        args.extend_from_slice(extra);
        // The child processes' test defaults, and no delay before draining: nothing
        // balances load across an in-process server, so the delay would only slow each
        // test's end. The grace bounds a drop while a test task still holds a stream.
        for (flag, value) in [("--redis-timeout", "500ms"), ("--shutdown-delay", "0s"), ("--shutdown-grace", "2s")] {
            if !extra.contains(&flag) {
                args.extend([flag, value]);
            }
        }
        let config = Config::load(Flags::parse_from(&args)).unwrap_or_else(|err| panic!("baton {args:?}: {err}"));
        let redis = RedisUrls { main: redis_url.to_owned(), cache: config.flags.cache_redis_url.clone() };
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (shutdown, stop) = oneshot::channel::<()>();
        let serving = std::thread::Builder::new()
            .name("baton-server".into())
            .spawn(move || serve(config, redis, ready_tx, stop))
            .expect("a thread for the server");
        let addr = match ready_rx.recv_timeout(PATIENCE) {
            Ok(Ok(addr)) => addr,
            Ok(Err(err)) => panic!("baton did not start: {err}"),
            Err(_) => panic!("baton did not answer health within {PATIENCE:?}"),
        };
        Self { addr, shutdown: Some(shutdown), serving: Some(serving) }
    }
}

/// The server thread: binds, serves until `stop`, and reports readiness on `ready` once
/// gRPC health answers (or why it never will).
fn serve(
    config: Config,
    redis: RedisUrls,
    ready: std::sync::mpsc::Sender<Result<SocketAddr, String>>,
    stop: oneshot::Receiver<()>,
) -> Result<(), String> {
    // Two workers, as baton on this 2-core machine has.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|err| err.to_string())?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|err| err.to_string())?;
        let addr = listener.local_addr().map_err(|err| err.to_string())?;
        let run = baton::server::run(config, redis, listener, async {
            let _ = stop.await;
        });
        tokio::pin!(run);
        tokio::select! {
            result = &mut run => {
                let err = format!("it stopped before it served: {result:?}");
                let _ = ready.send(Err(err.clone()));
                return Err(err);
            }
            () = answers_health(addr) => {
                let _ = ready.send(Ok(addr));
            }
        }
        run.await.map_err(|err| err.to_string())
    })
}

/// Returns once gRPC health on `addr` answers at all (the listener is bound before `run`
/// opens its stores, so a connection alone proves nothing).
async fn answers_health(addr: SocketAddr) {
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await {
            let request = HealthCheckRequest { service: String::new() };
            if HealthClient::new(channel).check(request).await.is_ok() {
                return;
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

impl Clients for Server {
    fn grpc_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(serving) = self.serving.take() {
            let result = serving.join();
            if !std::thread::panicking() {
                match result {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => panic!("baton failed: {err}"),
                    Err(_) => panic!("the baton server thread panicked"),
                }
            }
        }
    }
}
