//! Process lifecycle: SIGTERM drains and exits 0, the embedded dev Redis comes and goes
//! with baton, bad configuration exits non-zero with a clear message.

// A panic is a test's failure report (clippy.toml allows unwrap only inside #[test] fns).
#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{Baton, Clients, PATIENCE, Redis, eventually, health_status, json_field, process_alive};
use tonic_health::pb::health_check_response::ServingStatus;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_reports_not_serving_then_exits_zero_within_the_grace_period() {
    let redis = Redis::start();
    let mut baton = Baton::start(Some(&redis.url()), &["--shutdown-delay", "1s", "--shutdown-grace", "5s"]);
    let mut health = baton.health().await;
    assert_eq!(health_status(&mut health, "").await, Some(ServingStatus::Serving));

    let signalled = Instant::now();
    baton.sigterm();
    eventually(PATIENCE, "\"\" NOT_SERVING after SIGTERM", || {
        let mut health = health.clone();
        async move { health_status(&mut health, "").await == Some(ServingStatus::NotServing) }
    })
    .await;
    let status = tokio::task::spawn_blocking(move || baton.wait_exit(Duration::from_secs(15)))
        .await
        .unwrap()
        .expect("baton exited");
    assert_eq!(status.code(), Some(0));
    assert!(signalled.elapsed() < Duration::from_secs(5) + Duration::from_secs(3), "took {:?}", signalled.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_redis_serves_and_leaves_nothing_behind() {
    let mut baton = Baton::start(None, &[]);
    let mut health = baton.health().await;
    eventually(PATIENCE, "rate limiter SERVING on the embedded redis", || {
        let mut health = health.clone();
        async move { health_status(&mut health, "baton.v1.RateLimiterService").await == Some(ServingStatus::Serving) }
    })
    .await;
    let redis_pid: u32 = baton
        .logs()
        .iter()
        .find_map(|line| {
            line.find("\"redis.pid\":").map(|at| line[at + 12..].split([',', '}']).next().unwrap().to_owned())
        })
        .expect("the dev-mode warning names the redis pid")
        .parse()
        .unwrap();
    assert!(process_alive(redis_pid));
    assert!(baton.logs().iter().any(|line| line.contains("DEVELOPMENT MODE")));

    baton.sigterm();
    let status = tokio::task::spawn_blocking(move || baton.wait_exit(PATIENCE)).await.unwrap().expect("exited");
    assert_eq!(status.code(), Some(0));
    let _ = health_status(&mut health, "").await;
    eventually(PATIENCE, "embedded redis-server gone", || async move { !process_alive(redis_pid) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_redis_dies_with_a_sigkilled_baton() {
    let mut baton = Baton::start(None, &[]);
    let redis_pid: u32 = baton
        .logs()
        .iter()
        .find_map(|line| {
            line.find("\"redis.pid\":").map(|at| line[at + 12..].split([',', '}']).next().unwrap().to_owned())
        })
        .expect("redis pid logged")
        .parse()
        .unwrap();
    baton.sigkill();
    eventually(PATIENCE, "embedded redis-server gone after SIGKILL", || async move { !process_alive(redis_pid) }).await;
}

/// The names of `pid`'s threads that run tokio's workers.
fn worker_threads_of(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .filter(|name| name.trim() == "tokio-rt-worker")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_threads_serve_as_many_as_asked() {
    let redis = Redis::start();
    for threads in ["1", "3"] {
        let baton = Baton::start(Some(&redis.url()), &["--worker-threads", threads]);
        let mut health = baton.health().await;
        assert_eq!(health_status(&mut health, "").await, Some(ServingStatus::Serving));
        assert_eq!(worker_threads_of(baton.pid()).to_string(), threads);
        assert!(baton.logs().iter().any(|line| line.contains(&format!("worker_threads={threads} "))));
    }
}

#[test]
fn bad_configuration_exits_non_zero_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[policies.x]\nalgorithm = \"token_bucket\"\nlimit = 0\nperiod = \"1s\"\n").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args(["--config", config.to_str().unwrap(), "--redis-url", "redis://127.0.0.1:1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("policies.x") && stderr.contains("limit"), "{stderr}");

    let output = Command::new(env!("CARGO_BIN_EXE_baton")).args(["--redis-timeout", "soon"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--redis-timeout"));

    for threads in ["0", "1025", "many"] {
        let output = Command::new(env!("CARGO_BIN_EXE_baton")).args(["--worker-threads", threads]).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "--worker-threads {threads}");
        assert!(String::from_utf8_lossy(&output.stderr).contains("--worker-threads"));
    }

    let output = Command::new(env!("CARGO_BIN_EXE_baton"))
        .args([
            "--redis-server-bin",
            "/nonexistent/redis-server",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ])
        .output()
        .unwrap();
    assert_ne!(output.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&output.stderr).contains("apt-get install redis-server"));
    let _ = json_field;
}
