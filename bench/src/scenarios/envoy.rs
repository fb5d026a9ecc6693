//! Envoy's `ShouldRateLimit`: baton against envoyproxy/ratelimit itself (when the
//! benchmark is given its binary, `make bench` builds it from the Go module proxy), both
//! reading the same YAML rule file, on the benchmark's Redis, under the same load: one
//! descriptor per request over 10,000 values. The figures to read are requests per second
//! and each server's CPU per request.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use baton::proto::envoy::extensions::common::ratelimit::v3::{RateLimitDescriptor, rate_limit_descriptor};
use baton::proto::envoy::service::ratelimit::v3::RateLimitRequest;
use baton::proto::envoy::service::ratelimit::v3::rate_limit_service_client::RateLimitServiceClient;
use testkit::process::spawn_ready;
use testkit::{BatonProcess, PATIENCE, free_port};

use super::{Bench, Pool};
use crate::measure;

/// envoyproxy/ratelimit's rule file format, read unchanged by both servers; a limit no run
/// reaches, so every request does the full count.
const RULES: &str = "domain: bench\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: minute\n      requests_per_unit: 1000000000\n";

fn request(value: u64) -> RateLimitRequest {
    RateLimitRequest {
        domain: "bench".into(),
        descriptors: vec![RateLimitDescriptor {
            entries: vec![rate_limit_descriptor::Entry { key: "k".into(), value: format!("v{value}") }],
            ..Default::default()
        }],
        hits_addend: 1,
    }
}

async fn should_rate_limit(bench: &mut Bench, name: &str, pool: Pool) {
    bench
        .scenario(
            name,
            |_| None,
            move |w, i| {
                let mut client = RateLimitServiceClient::new(pool.get(w));
                let value = (w as u64 * 1_000_003 + i) % 10_000;
                async move {
                    client.should_rate_limit(request(value)).await.expect("ShouldRateLimit");
                }
            },
        )
        .await;
}

/// envoyproxy/ratelimit's runtime layout: `root/ratelimit/config/bench.yaml`.
fn write_rules() -> PathBuf {
    let root = std::env::temp_dir().join(format!("baton-bench-rls-{}", std::process::id()));
    let config = root.join("ratelimit").join("config");
    std::fs::create_dir_all(&config).unwrap();
    std::fs::write(config.join("bench.yaml"), RULES).unwrap();
    root
}

pub async fn run(bench: &mut Bench, upstream: Option<&Path>) {
    let root = write_rules();
    let config_dir = root.join("ratelimit").join("config");
    let redis_url = format!("redis://127.0.0.1:{}", bench.redis_port);
    let baton = BatonProcess::start(
        &bench.baton_binary,
        &["--redis-url", &redis_url, "--envoy-config-dir", config_dir.to_str().unwrap()],
        "warn,baton=info",
    );
    measure::measure_pid(baton.pid());
    should_rate_limit(bench, "ShouldRateLimit, Baton", Pool::connect(baton.addr, 8).await).await;
    bench.notes.push(format!("Baton RSS after ShouldRateLimit: {:.0} MiB", measure::rss_mib(baton.pid())));
    drop(baton);
    if let Some(binary) = upstream {
        let (mut child, addr) = start_upstream(binary, &root, bench.redis_port);
        measure::measure_pid(child.id());
        should_rate_limit(bench, "ShouldRateLimit, envoyproxy/ratelimit", Pool::connect(addr, 8).await).await;
        bench
            .notes
            .push(format!("envoyproxy/ratelimit RSS after the same load: {:.0} MiB", measure::rss_mib(child.id())));
        let _ = child.kill();
        let _ = child.wait();
    }
    measure::measure_pid(bench.baton_pid);
    let _ = std::fs::remove_dir_all(root);
}

/// Starts envoyproxy/ratelimit on free ports with the benchmark's Redis and rules, as its
/// README configures it (environment variables), and waits for its gRPC port.
fn start_upstream(binary: &Path, root: &Path, redis_port: u16) -> (Child, SocketAddr) {
    let (grpc, http, debug) = (free_port(), free_port(), free_port());
    let mut command = Command::new(binary);
    command
        .envs([
            ("HOST", "127.0.0.1".to_owned()),
            ("PORT", http.to_string()),
            ("GRPC_HOST", "127.0.0.1".to_owned()),
            ("GRPC_PORT", grpc.to_string()),
            ("DEBUG_HOST", "127.0.0.1".to_owned()),
            ("DEBUG_PORT", debug.to_string()),
            ("USE_STATSD", "false".to_owned()),
            ("LOG_LEVEL", "warn".to_owned()),
            ("BACKEND_TYPE", "redis".to_owned()),
            ("REDIS_SOCKET_TYPE", "tcp".to_owned()),
            ("REDIS_URL", format!("127.0.0.1:{redis_port}")),
            ("RUNTIME_ROOT", root.to_str().unwrap().to_owned()),
            ("RUNTIME_SUBDIRECTORY", "ratelimit".to_owned()),
            ("RUNTIME_WATCH_ROOT", "false".to_owned()),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let addr = SocketAddr::from(([127, 0, 0, 1], grpc));
    let child = spawn_ready(&mut command, PATIENCE, || TcpStream::connect(addr).is_ok());
    (child.unwrap_or_else(|| panic!("envoyproxy/ratelimit did not listen on {addr}")), addr)
}
