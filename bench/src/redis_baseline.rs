//! The raw Redis figures each Baton figure is compared with, measured by `redis-benchmark`
//! and `redis-cli` against the benchmark's own Redis in the same run.

use std::process::Command;
use std::time::Duration;

use crate::measure::{CpuMeter, Raw};

/// `redis-benchmark` for one command at one concurrency: requests per second, and the
/// Redis CPU time each cost.
pub fn redis_benchmark(port: u16, concurrency: usize, duration: Duration, command: &[&str]) -> Raw {
    // redis-benchmark counts requests, not time: size the run from a short probe.
    let probe = run_redis_benchmark(port, concurrency, 20_000, command);
    let requests = ((probe * duration.as_secs_f64()) as u64).max(20_000);
    let redis_cpu = CpuMeter::redis();
    let ops_per_sec = run_redis_benchmark(port, concurrency, requests, command);
    Raw { ops_per_sec, redis_cpu_us_per_op: redis_cpu.and_then(|meter| meter.per_op(requests)) }
}

/// One `redis-benchmark` run of `requests` requests.
fn run_redis_benchmark(port: u16, concurrency: usize, requests: u64, command: &[&str]) -> f64 {
    let output = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-c", &concurrency.to_string(), "-n", &requests.to_string()])
        .args(["-r", "100000", "--csv"])
        .args(command)
        .output()
        .expect("redis-benchmark (redis-tools) on PATH");
    let text = String::from_utf8_lossy(&output.stdout);
    text.lines()
        .nth(1)
        .and_then(|line| line.split(',').nth(1))
        .and_then(|rps| rps.trim_matches('"').parse().ok())
        .unwrap_or(0.0)
}

/// Loads `script` into the Redis on `port`; returns its SHA for `EVALSHA`.
pub fn script_sha(port: u16, script: &str) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SCRIPT", "LOAD", script])
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Clients connected to the Redis on `port`.
pub fn redis_clients(port: u16) -> usize {
    let output = Command::new("redis-cli").args(["-p", &port.to_string(), "CLIENT", "LIST"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count().saturating_sub(1)
}
