//! `baton-bench`: the load generator behind `make bench`.
//!
//! Starts its own `redis-server` and `baton` (the binary given with `--baton`), then runs
//! every scenario at several concurrencies for a fixed time and reports throughput and
//! latency percentiles, each beside the raw Redis equivalent measured by `redis-benchmark`
//! in the same run, and beside a bare tonic server (the machine's gRPC ceiling).

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use baton::proto::duration_to_proto;
use baton::proto::v1::cache_service_client::CacheServiceClient;
use baton::proto::v1::job_queue_service_client::JobQueueServiceClient;
use baton::proto::v1::lock_service_client::LockServiceClient;
use baton::proto::v1::rate_limiter_service_client::RateLimiterServiceClient;
use baton::proto::v1::session_store_service_client::SessionStoreServiceClient;
use baton::proto::v1::{
    AckBatchRequest, AckRequest, AcquireRequest, Algorithm, CheckRequest, ConsumeRequest, CreateSessionRequest,
    EnqueueBatchRequest, EnqueueRequest, GetRequest, GetSessionRequest, KeepAliveRequest, Limit, LimitRequest,
    ReleaseRequest, SetRequest, consume_response, enqueue_request, limit_request,
};
use clap::Parser;
use futures::FutureExt;
use hdrhistogram::Histogram;
use tokio_stream::StreamExt;
use tonic::transport::Channel;

#[derive(Debug, Parser)]
#[command(about = "Baton's benchmark: every pattern against raw Redis in the same run")]
struct Args {
    /// The baton binary to measure (build it with --release).
    #[arg(long, default_value = "target/release/baton")]
    baton: PathBuf,
    /// How long each measurement runs.
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Concurrent callers, comma-separated.
    #[arg(long, default_value = "1,16,64", value_delimiter = ',')]
    concurrency: Vec<usize>,
    /// Idle streams for the memory measurement (0 skips it).
    #[arg(long, default_value_t = 10_000)]
    streams: usize,
    /// Write the Markdown report here as well as to stdout.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Run only these scenario groups (comma-separated: ceiling, check, lock, cache,
    /// session, queue); default all. For profiling one path at a time.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also measure the peers a user would pick instead (BullMQ, node-redlock) with the
    /// Node scripts in this directory (bench/peers, after `npm ci`), against the same Redis.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// Internal: serve a bare tonic server (gRPC health only, no layers) on this address and
    /// print it; the benchmark starts itself this way for the machine's gRPC ceiling.
    #[arg(long, hide = true)]
    serve_bare: Option<SocketAddr>,
}

impl Args {
    fn runs(&self, group: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|g| g == group)
    }
}

const LOCK_DISTINCT: &str = "Lock acquire+release cycle, distinct names";

/// One measured row of the report.
struct Row {
    scenario: String,
    /// Concurrent callers, or how the load was paced.
    callers: String,
    ops_per_sec: f64,
    p50_us: u64,
    p99_us: u64,
    p999_us: u64,
    /// The raw Redis figure this row is compared with, ops/s.
    baseline: Option<f64>,
    /// Baton's CPU time per operation, µs.
    cpu_us_per_op: Option<f64>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis(port: u16) -> Process {
    let redis = Process(
        Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server on PATH"),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return redis;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("redis-server did not start");
}

/// This binary again, as a bare tonic server: what gRPC itself costs on this machine.
fn start_bare_server() -> (Process, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let server = Process(
        Command::new(std::env::current_exe().expect("own path"))
            .args(["--serve-bare", &addr.to_string()])
            .spawn()
            .expect("bare server"),
    );
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return (server, addr);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("the bare tonic server did not start");
}

async fn serve_bare(addr: SocketAddr) {
    let (_, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder().add_service(health).serve(addr).await.expect("bare server");
}

fn start_baton(binary: &PathBuf, redis_port: u16) -> (Process, SocketAddr) {
    let mut child = Command::new(binary)
        .args(["--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0", "--log-format", "json"])
        .args(["--redis-url", &format!("redis://127.0.0.1:{redis_port}"), "--queue-max-in-flight", "1000"])
        .env("RUST_LOG", "warn,baton=info")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("baton exited").unwrap();
        if let Some(at) = line.find("\"grpc_addr\":\"") {
            let rest = &line[at + 13..];
            break rest[..rest.find('"').unwrap()].parse().unwrap();
        }
    };
    // Keep draining its logs so it never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Process(child), addr)
}

async fn channels(addr: SocketAddr, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count {
        channels.push(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap());
    }
    channels
}

/// The server process whose CPU time each measurement charges to its operations (0: none).
static MEASURED_PID: AtomicU32 = AtomicU32::new(0);

/// The measured process's CPU time over one measurement.
struct CpuMeter {
    pid: u32,
    before: u64,
}

impl CpuMeter {
    fn start() -> Option<Self> {
        let pid = MEASURED_PID.load(Ordering::Relaxed);
        (pid != 0).then(|| Self { pid, before: cpu_micros(pid) })
    }

    fn per_op(&self, operations: u64) -> Option<f64> {
        (operations > 0).then(|| cpu_micros(self.pid).saturating_sub(self.before) as f64 / operations as f64)
    }
}

/// CPU time (user + system) a process has used so far, in microseconds.
fn cpu_micros(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf has no preconditions.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / per_second
}

/// One load run: throughput, latencies, and baton's CPU time per operation — the figure
/// that stays comparable when the machine is noisy.
struct Measured {
    rate: f64,
    histogram: Histogram<u64>,
    cpu_us_per_op: Option<f64>,
}

/// Runs `op` from `concurrency` callers for `duration`; callers spread over a few HTTP/2
/// connections as a real client pool would.
async fn load<F, Fut>(concurrency: usize, duration: Duration, op: Arc<F>) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut iteration = 0u64;
            while Instant::now() < deadline {
                let t0 = Instant::now();
                op(worker, iteration).await;
                histogram.record(t0.elapsed().as_micros().max(1) as u64).unwrap();
                iteration += 1;
            }
            histogram
        }));
    }
    let mut total = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for worker in workers {
        total.add(worker.await.unwrap()).unwrap();
    }
    let cpu_us_per_op = cpu.and_then(|cpu| cpu.per_op(total.len()));
    Measured { rate: total.len() as f64 / started.elapsed().as_secs_f64(), histogram: total, cpu_us_per_op }
}

/// Starts `op` at a steady `rate` per second for `duration`, however long earlier calls take
/// (open loop): the latency a service shows at that load, without the coordinated omission
/// of a closed loop, where a slow call also delays the calls behind it.
async fn paced<F, Fut>(rate: f64, duration: Duration, op: Arc<F>) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let cpu = CpuMeter::start();
    let started = Instant::now();
    // tokio's timer ticks in whole milliseconds: each tick starts the calls due by then.
    let mut ticks = tokio::time::interval(Duration::from_millis(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut calls = tokio::task::JoinSet::new();
    let mut iteration = 0u64;
    while started.elapsed() < duration {
        ticks.tick().await;
        let due = (started.elapsed().as_secs_f64() * rate) as u64;
        while iteration < due {
            let call = op(iteration as usize % 64, iteration);
            let sent = Instant::now();
            calls.spawn(async move {
                call.await;
                sent.elapsed()
            });
            iteration += 1;
        }
    }
    let mut histogram = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    while let Some(latency) = calls.join_next().await {
        histogram.record(latency.unwrap().as_micros().max(1) as u64).unwrap();
    }
    let cpu_us_per_op = cpu.and_then(|cpu| cpu.per_op(histogram.len()));
    Measured { rate: histogram.len() as f64 / started.elapsed().as_secs_f64(), histogram, cpu_us_per_op }
}

/// Measures `op` closed-loop at every concurrency, then paced at half the peak it reached:
/// the load at which the p99 target applies.
async fn scenario<F, Fut>(
    rows: &mut Vec<Row>,
    name: &str,
    concurrency: &[usize],
    duration: Duration,
    baseline: impl Fn(usize) -> Option<f64>,
    op: F,
) where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let op = Arc::new(op);
    let mut peak: f64 = 0.0;
    for &c in concurrency {
        let measured = load(c, duration, op.clone()).await;
        peak = peak.max(measured.rate);
        rows.push(row(name, &c.to_string(), measured, baseline(c)));
    }
    let half = peak / 2.0;
    rows.push(row(name, &format!("paced {half:.0}/s"), paced(half, duration, op).await, None));
}

fn row(scenario: &str, callers: &str, measured: Measured, baseline: Option<f64>) -> Row {
    let Measured { rate, histogram, cpu_us_per_op } = measured;
    Row {
        scenario: scenario.to_owned(),
        callers: callers.to_owned(),
        ops_per_sec: rate,
        cpu_us_per_op,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        baseline,
    }
}

/// `redis-benchmark` for one command at one concurrency; returns requests per second.
fn redis_benchmark(port: u16, concurrency: usize, duration: Duration, command: &[&str]) -> f64 {
    // redis-benchmark counts requests, not time: size the run from a short probe.
    let probe = run_redis_benchmark(port, concurrency, 20_000, command);
    let requests = ((probe * duration.as_secs_f64()) as u64).max(20_000);
    run_redis_benchmark(port, concurrency, requests, command)
}

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

fn script_sha(port: u16, script: &str) -> String {
    let output = Command::new("redis-cli")
        .args(["-p", &port.to_string(), "SCRIPT", "LOAD", script])
        .output()
        .expect("redis-cli on PATH");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// Generous enough never to deny in a run; the sliding log is capped at 10,000 per key.
fn limit_for(algorithm: Algorithm) -> u64 {
    if algorithm == Algorithm::SlidingWindow { 10_000 } else { 1_000_000 }
}

fn limit(algorithm: Algorithm) -> Limit {
    Limit {
        algorithm: algorithm as i32,
        limit: limit_for(algorithm),
        period: Some(duration_to_proto(Duration::from_secs(60))),
        burst: 0,
    }
}

fn check_request(keys: &[String], algorithm: Algorithm) -> CheckRequest {
    CheckRequest {
        limits: keys
            .iter()
            .map(|key| LimitRequest {
                key: key.clone(),
                source: Some(limit_request::Source::Limit(limit(algorithm))),
                cost: 1,
            })
            .collect(),
        dry_run: false,
        fail_open: false,
    }
}

fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

fn redis_clients(port: u16) -> usize {
    let output = Command::new("redis-cli").args(["-p", &port.to_string(), "CLIENT", "LIST"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout).lines().count().saturating_sub(1)
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(addr) = args.serve_bare {
        return serve_bare(addr).await;
    }
    let redis_port = free_port();
    let _redis = start_redis(redis_port);
    let (baton_process, addr) = start_baton(&args.baton, redis_port);
    let baton_pid = baton_process.0.id();
    MEASURED_PID.store(baton_pid, Ordering::Relaxed);
    let pool = channels(addr, 8).await;
    let channel = move |worker: usize| pool[worker % pool.len()].clone();
    let d = args.duration;
    let mut rows: Vec<Row> = Vec::new();
    let mut notes: Vec<String> = Vec::new();

    // Memory and connections with many idle streams, first, on a process no load has grown.
    if args.streams > 0 {
        let before = rss_mib(baton_pid);
        let stream_channels = channels(addr, args.streams.div_ceil(1000).max(1)).await;
        let mut held = Vec::new();
        for i in 0..args.streams {
            let mut queues = JobQueueServiceClient::new(stream_channels[i % stream_channels.len()].clone());
            let request = ConsumeRequest { queue: format!("idle-{}", i % 100), max_in_flight: 1, ..Default::default() };
            held.push(queues.consume(tokio_stream::once(request)).await.unwrap().into_inner());
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        notes.push(format!(
            "{} idle Consume streams: baton RSS {:.0} MiB (from {:.0} MiB), Redis connections {}",
            args.streams,
            rss_mib(baton_pid),
            before,
            redis_clients(redis_port)
        ));
        drop(held);
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = rss_mib(baton_pid);
        let mut held = Vec::new();
        for i in 0..args.streams {
            let mut locks = LockServiceClient::new(stream_channels[i % stream_channels.len()].clone());
            let name = format!("keepalive:{i}");
            let request = AcquireRequest {
                name: name.clone(),
                ttl: Some(duration_to_proto(Duration::from_secs(60))),
                ..Default::default()
            };
            let lease = locks.acquire(request).await.unwrap().into_inner().lease.unwrap();
            let request = KeepAliveRequest { name, lease_id: lease.lease_id, ttl: None };
            held.push(
                locks
                    .keep_alive(tokio_stream::StreamExt::chain(tokio_stream::once(request), tokio_stream::pending()))
                    .await
                    .unwrap()
                    .into_inner(),
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        notes.push(format!(
            "{} KeepAlive streams: baton RSS {:.0} MiB (from {:.0} MiB), Redis connections {}",
            args.streams,
            rss_mib(baton_pid),
            before,
            redis_clients(redis_port)
        ));
        // Their locks are released as the streams end; let that finish before measuring speed.
        drop(held);
        tokio::time::sleep(Duration::from_secs(3)).await;
    }

    let levels = args.concurrency.clone();
    let no_baseline = |_: usize| None;

    if args.runs("ceiling") {
        // The machine's gRPC ceiling: a bare tonic server in its own process, then baton's
        // own health Check, which passes every layer but touches no Redis.
        let (bare_process, bare_addr) = start_bare_server();
        let bare = channels(bare_addr, 8).await;
        MEASURED_PID.store(bare_process.0.id(), Ordering::Relaxed);
        scenario(&mut rows, "gRPC ceiling: bare tonic server, Health/Check", &levels, d, no_baseline, move |w, _| {
            let mut health = tonic_health::pb::health_client::HealthClient::new(bare[w % bare.len()].clone());
            async move {
                health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health");
            }
        })
        .await;
        MEASURED_PID.store(baton_pid, Ordering::Relaxed);
        drop(bare_process);
        let channel = channel.clone();
        scenario(&mut rows, "baton Health/Check (every layer, no Redis)", &levels, d, no_baseline, move |w, _| {
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel(w));
            async move {
                health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.expect("health");
            }
        })
        .await;
    }

    if args.runs("check") {
        // Rate limits, against EVALSHA of the same script.
        // The same source baton loads: the common prelude, then the script.
        let check_source = [include_str!("../store/prelude.lua"), include_str!("../ratelimit/check.lua")].join("\n");
        let check_sha = script_sha(redis_port, &check_source);
        for (name, algorithm, code) in [
            ("Check fixed window", Algorithm::FixedWindow, "1"),
            ("Check sliding window", Algorithm::SlidingWindow, "2"),
            ("Check token bucket (GCRA)", Algorithm::TokenBucket, "3"),
        ] {
            let cap = limit_for(algorithm).to_string();
            let burst = if algorithm == Algorithm::TokenBucket { cap.clone() } else { "0".into() };
            // Each algorithm keeps its own state type, so each gets its own keys.
            let raw_key = format!("bench:raw:{code}:__rand_int__");
            let check_sha = check_sha.clone();
            let raw = move |c| {
                let command = ["EVALSHA", &check_sha, "1", &raw_key, "0", code, &cap, "60000000", &burst, "1"];
                Some(redis_benchmark(redis_port, c, d, &command))
            };
            let channel = channel.clone();
            scenario(&mut rows, name, &levels, d, raw, move |w, i| {
                let mut client = RateLimiterServiceClient::new(channel(w));
                let key = format!("k{}", (w as u64 * 1_000_003 + i) % 100_000);
                async move {
                    client.check(check_request(&[key], algorithm)).await.expect("check");
                }
            })
            .await;
        }
        let channel = channel.clone();
        scenario(&mut rows, "Check 3 limits (GCRA)", &levels, d, no_baseline, move |w, i| {
            let mut client = RateLimiterServiceClient::new(channel(w));
            let user = (w as u64 * 1_000_003 + i) % 100_000;
            let keys = [format!("{{u{user}}}:a"), format!("{{u{user}}}:b"), format!("{{u{user}}}:c")];
            async move {
                client.check(check_request(&keys, Algorithm::TokenBucket)).await.expect("check");
            }
        })
        .await;
    }

    if args.runs("lock") {
        // Locks: acquire + release cycles on distinct names, and on one contended name.
        let raw = |c| {
            Some(redis_benchmark(redis_port, c, d, &["SET", "lock:__rand_int__", "owner", "NX", "PX", "10000"]) / 2.0)
        };
        let lock_channel = channel.clone();
        scenario(&mut rows, LOCK_DISTINCT, &levels, d, raw, move |w, i| {
            let mut locks = LockServiceClient::new(lock_channel(w));
            let name = format!("order:{w}:{i}");
            async move {
                let request = AcquireRequest {
                    name: name.clone(),
                    ttl: Some(duration_to_proto(Duration::from_secs(10))),
                    ..Default::default()
                };
                let lease = locks.acquire(request).await.expect("acquire").into_inner().lease.expect("free lock");
                locks.release(ReleaseRequest { name, lease_id: lease.lease_id }).await.expect("release");
            }
        })
        .await;
        for &c in &args.concurrency {
            let channel = channel.clone();
            let result = load(
                c,
                d,
                Arc::new(move |w, _| {
                    let mut locks = LockServiceClient::new(channel(w));
                    async move {
                        let request = AcquireRequest {
                            name: "contended".into(),
                            ttl: Some(duration_to_proto(Duration::from_secs(10))),
                            wait_timeout: Some(duration_to_proto(Duration::from_secs(30))),
                            ..Default::default()
                        };
                        let lease =
                            locks.acquire(request).await.expect("acquire").into_inner().lease.expect("acquired");
                        let release = ReleaseRequest { name: "contended".into(), lease_id: lease.lease_id };
                        locks.release(release).await.unwrap();
                    }
                }),
            )
            .await;
            rows.push(row("Lock acquire+release cycle, one contended name", &c.to_string(), result, None));
        }
        // Hand-off: how long after a release a waiter holds the lock.
        {
            let mut handoff = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut holder = LockServiceClient::new(channel(0));
            let waiter = LockServiceClient::new(channel(1));
            for round in 0..200 {
                let name = format!("handoff:{round}");
                let request = |wait: u64| AcquireRequest {
                    name: name.clone(),
                    ttl: Some(duration_to_proto(Duration::from_secs(10))),
                    wait_timeout: Some(duration_to_proto(Duration::from_secs(wait))),
                    ..Default::default()
                };
                let lease = holder.acquire(request(0)).await.unwrap().into_inner().lease.unwrap();
                let mut waiting = waiter.clone();
                let wait_request = request(5);
                let waiting = tokio::spawn(async move {
                    waiting.acquire(wait_request).await.unwrap();
                    Instant::now()
                });
                tokio::time::sleep(Duration::from_millis(5)).await;
                let released = Instant::now();
                holder.release(ReleaseRequest { name: name.clone(), lease_id: lease.lease_id }).await.unwrap();
                let acquired = waiting.await.unwrap();
                handoff.record(acquired.saturating_duration_since(released).as_micros().max(1) as u64).unwrap();
            }
            notes.push(format!(
                "Lock hand-off (release → waiter holds it), 200 rounds: p50 {} µs, p99 {} µs, max {} µs",
                handoff.value_at_quantile(0.5),
                handoff.value_at_quantile(0.99),
                handoff.max()
            ));
        }
    }

    if args.runs("cache") {
        // Cache Get and Set against GET and SET.
        {
            let mut cache = CacheServiceClient::new(channel(0));
            for key in 0..10_000 {
                cache
                    .set(SetRequest {
                        key: format!("user:{key}"),
                        value: vec![b'x'; 100],
                        ttl: Some(duration_to_proto(Duration::from_secs(600))),
                        ..Default::default()
                    })
                    .await
                    .unwrap();
            }
        }
        let raw = |c| Some(redis_benchmark(redis_port, c, d, &["GET", "user:__rand_int__"]));
        let get_channel = channel.clone();
        scenario(&mut rows, "Cache Get (hit, 100 B)", &levels, d, raw, move |w, i| {
            let mut cache = CacheServiceClient::new(get_channel(w));
            let key = format!("user:{}", (w as u64 * 7919 + i) % 10_000);
            async move {
                cache.get(GetRequest { key }).await.expect("get");
            }
        })
        .await;
        let value = "y".repeat(100);
        let raw = |c| Some(redis_benchmark(redis_port, c, d, &["SET", "user:__rand_int__", &value]));
        let set_channel = channel.clone();
        scenario(&mut rows, "Cache Set (100 B)", &levels, d, raw, move |w, i| {
            let mut cache = CacheServiceClient::new(set_channel(w));
            let key = format!("user:{}", (w as u64 * 7919 + i) % 10_000);
            async move {
                let request = SetRequest {
                    key,
                    value: vec![b'y'; 100],
                    ttl: Some(duration_to_proto(Duration::from_secs(600))),
                    ..Default::default()
                };
                cache.set(request).await.expect("set");
            }
        })
        .await;
    }

    if args.runs("session") {
        // Sessions: GetSession (with touch) against HGETALL.
        let session_ids: Arc<Vec<String>> = {
            let mut sessions = SessionStoreServiceClient::new(channel(0));
            let mut ids = Vec::new();
            for user in 0..1000 {
                let request = CreateSessionRequest { subject: format!("user:{user}"), ..Default::default() };
                ids.push(sessions.create_session(request).await.unwrap().into_inner().session_id);
            }
            Arc::new(ids)
        };
        let raw = |c| Some(redis_benchmark(redis_port, c, d, &["HGETALL", "session:__rand_int__"]));
        let (session_channel, ids) = (channel.clone(), session_ids.clone());
        scenario(&mut rows, "Session GetSession", &levels, d, raw, move |w, i| {
            let mut sessions = SessionStoreServiceClient::new(session_channel(w));
            let session_id = ids[((w as u64 * 31 + i) % ids.len() as u64) as usize].clone();
            async move {
                sessions.get_session(GetSessionRequest { session_id, no_touch: false }).await.expect("session");
            }
        })
        .await;
    }

    // Queue end to end: producers enqueue in batches, consumers ack every job, one Ack per
    // job (as BullMQ's Worker completes each job) and then with AckBatch.
    let queue_rate = if args.runs("queue") {
        let pool: Vec<Channel> = (0..6).map(&channel).collect();
        let per_job = queue_end_to_end(&pool, "bench-e2e", d, false).await;
        notes.push(format!(
            "Queue end to end (2 producers with EnqueueBatch of 100, 4 consumer streams with max_in_flight 256, \
             one Ack per job): {per_job:.0} jobs/s acked"
        ));
        let batched = queue_end_to_end(&pool, "bench-e2e-batched", d, true).await;
        notes.push(format!(
            "Queue end to end as above, consumers acking with AckBatch (whatever the stream has delivered, up to \
             {ACK_BATCH}): {batched:.0} jobs/s acked"
        ));
        Some((per_job, batched))
    } else {
        None
    };
    // Delayed jobs: how late after their due time are they delivered?
    if args.runs("queue") {
        let mut queues = JobQueueServiceClient::new(channel(0));
        let request = ConsumeRequest { queue: "bench-delay".into(), max_in_flight: 64, ..Default::default() };
        let mut stream = queues.consume(tokio_stream::once(request)).await.unwrap().into_inner();
        let mut lateness = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        for _ in 0..50 {
            let enqueued = Instant::now();
            let request = EnqueueRequest {
                queue: "bench-delay".into(),
                schedule: Some(enqueue_request::Schedule::Delay(duration_to_proto(Duration::from_millis(200)))),
                ..Default::default()
            };
            queues.enqueue(request).await.unwrap();
            let Some(Ok(event)) = stream.next().await else { break };
            let late = enqueued.elapsed().saturating_sub(Duration::from_millis(200));
            lateness.record(late.as_micros().max(1) as u64).unwrap();
            if let Some(consume_response::Event::Delivery(delivery)) = event.event {
                queues.ack(AckRequest { lease_id: delivery.lease_id, result: vec![] }).await.unwrap();
            }
        }
        notes.push(format!(
            "Delayed job lateness (200 ms delay, 50 jobs, idle machine): p50 {} ms, p99 {} ms",
            lateness.value_at_quantile(0.5) / 1000,
            lateness.value_at_quantile(0.99) / 1000
        ));
    }

    if let Some(dir) = &args.peers {
        notes.extend(peer_notes(dir, redis_port, d, &args.concurrency, queue_rate, &rows));
    }

    let half_load: Vec<String> = rows
        .iter()
        .filter(|r| r.callers.starts_with("paced"))
        .map(|r| format!("{} {:.2} ms", r.scenario, r.p99_us as f64 / 1000.0))
        .collect();
    if !half_load.is_empty() {
        notes.insert(0, format!("p99 at half of peak load (target < 2 ms): {}", half_load.join("; ")));
    }
    let report = render(&args, &rows, &notes);
    println!("{report}");
    if let Some(path) = &args.report {
        std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new("."))).unwrap();
        std::fs::write(path, &report).unwrap();
    }
}

/// Most leases one AckBatch of the benchmark's consumers settles.
const ACK_BATCH: usize = 256;

/// Jobs per second from enqueue to ack: 2 producers with EnqueueBatch of 100 (the backlog
/// kept bounded, so the figure is throughput, not queue growth) and 4 consumer streams.
async fn queue_end_to_end(pool: &[Channel], queue: &'static str, d: Duration, batched_acks: bool) -> f64 {
    let acked = Arc::new(AtomicU64::new(0));
    let stop = Instant::now() + d;
    let mut consumers = Vec::new();
    for consumer_channel in &pool[..4] {
        let mut queues = JobQueueServiceClient::new(consumer_channel.clone());
        let acked = acked.clone();
        consumers.push(tokio::spawn(async move {
            let request = ConsumeRequest { queue: queue.into(), max_in_flight: 256, ..Default::default() };
            let mut stream = queues.consume(tokio_stream::once(request)).await.unwrap().into_inner();
            let mut pending = tokio::task::JoinSet::new();
            while Instant::now() < stop {
                let Ok(Some(Ok(event))) = tokio::time::timeout(Duration::from_millis(200), stream.next()).await else {
                    continue;
                };
                let mut events = vec![event];
                // Batching: everything the stream has already delivered, without waiting.
                while batched_acks && events.len() < ACK_BATCH {
                    match stream.next().now_or_never() {
                        Some(Some(Ok(event))) => events.push(event),
                        _ => break,
                    }
                }
                let settled: Vec<String> = events
                    .into_iter()
                    .filter_map(|event| match event.event {
                        Some(consume_response::Event::Delivery(delivery)) => Some(delivery.lease_id),
                        _ => None,
                    })
                    .collect();
                if settled.is_empty() {
                    continue;
                }
                let (mut queues, acked) = (queues.clone(), acked.clone());
                pending.spawn(async move {
                    let acks: Vec<AckRequest> =
                        settled.into_iter().map(|lease_id| AckRequest { lease_id, result: vec![] }).collect();
                    let count = acks.len() as u64;
                    if batched_acks {
                        let results = queues.ack_batch(AckBatchRequest { acks }).await.unwrap().into_inner().results;
                        assert!(results.iter().all(|r| r.acked), "every lease in hand acks");
                    } else {
                        for ack in acks {
                            queues.ack(ack).await.unwrap();
                        }
                    }
                    acked.fetch_add(count, Ordering::Relaxed);
                });
            }
            while pending.join_next().await.is_some() {}
        }));
    }
    let started = Instant::now();
    let mut producers = Vec::new();
    for producer_channel in &pool[4..6] {
        let mut queues = JobQueueServiceClient::new(producer_channel.clone());
        let acked = acked.clone();
        producers.push(tokio::spawn(async move {
            let mut enqueued = 0u64;
            while Instant::now() < stop {
                if enqueued > acked.load(Ordering::Relaxed) + 20_000 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    continue;
                }
                let requests = (0..100)
                    .map(|_| EnqueueRequest { queue: queue.into(), payload: vec![b'j'; 64], ..Default::default() })
                    .collect();
                queues.enqueue_batch(EnqueueBatchRequest { requests }).await.unwrap();
                enqueued += 100;
            }
        }));
    }
    for task in producers.into_iter().chain(consumers) {
        task.await.unwrap();
    }
    acked.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
}

/// BullMQ and node-redlock, each beside the Baton figure it compares with.
fn peer_notes(
    dir: &Path,
    port: u16,
    d: Duration,
    concurrency: &[usize],
    queue: Option<(f64, f64)>,
    rows: &[Row],
) -> Vec<String> {
    let mut notes = Vec::new();
    match run_peer(dir, "bullmq.mjs", port, d, &[]) {
        Some(line) => {
            let rate = json_number(&line, "jobs_per_sec").unwrap_or(0.0);
            let versus = match queue {
                Some((per_job, batched)) => format!(
                    " (Baton: {per_job:.0} jobs/s with one Ack per job = {:.2}× BullMQ; {batched:.0} jobs/s with \
                     AckBatch = {:.2}× BullMQ)",
                    per_job / rate,
                    batched / rate
                ),
                None => String::new(),
            };
            notes.push(format!(
                "BullMQ {} end to end (ioredis {}, {} producers with addBulk of {}, one Worker with concurrency \
                 {}, completed jobs removed, same backlog bound): {rate:.0} jobs/s{versus}",
                json_string(&line, "version").unwrap_or("?"),
                json_string(&line, "ioredis").unwrap_or("?"),
                json_number(&line, "producers").unwrap_or(0.0),
                json_number(&line, "batch").unwrap_or(0.0),
                json_number(&line, "concurrency").unwrap_or(0.0),
            ));
        }
        None => notes.push("BullMQ end to end: not measured (node bullmq.mjs failed, see its stderr)".into()),
    }
    let levels = concurrency.iter().map(usize::to_string).collect::<Vec<_>>().join(",");
    match run_peer(dir, "redlock.mjs", port, d, &["--concurrency", &levels]) {
        Some(line) => {
            let version = json_string(&line, "version").unwrap_or("?");
            for &c in concurrency {
                let rate = json_number(&line, &format!("cycles_per_sec_c{c}")).unwrap_or(0.0);
                let baton = rows.iter().find(|r| r.scenario == LOCK_DISTINCT && r.callers == c.to_string());
                notes.push(format!(
                    "node-redlock {version} acquire+release cycles at {c} tasks (distinct names, one ioredis \
                     connection): {rate:.0}/s, p50 {} µs, p99 {} µs \
                     (Baton distinct-name cycles at {c}: {:.0}/s = {:.2}× node-redlock)",
                    json_number(&line, &format!("p50_us_c{c}")).unwrap_or(0.0),
                    json_number(&line, &format!("p99_us_c{c}")).unwrap_or(0.0),
                    baton.map_or(0.0, |r| r.ops_per_sec),
                    baton.map_or(0.0, |r| r.ops_per_sec) / rate,
                ));
            }
        }
        None => notes.push("node-redlock cycles: not measured (node redlock.mjs failed, see its stderr)".into()),
    }
    notes
}

/// Runs one peer script with the bench's Redis and duration; returns the JSON line it prints.
fn run_peer(dir: &Path, script: &str, port: u16, d: Duration, extra: &[&str]) -> Option<String> {
    let output = Command::new("node")
        .arg(dir.join(script))
        .args(["--port", &port.to_string(), "--duration", &d.as_secs_f64().to_string()])
        .args(extra)
        .stderr(Stdio::inherit())
        .output();
    match output {
        Ok(output) if output.status.success() => {
            String::from_utf8_lossy(&output.stdout).lines().rev().find(|line| line.starts_with('{')).map(str::to_owned)
        }
        Ok(output) => {
            eprintln!("node {script}: {}", output.status);
            None
        }
        Err(err) => {
            eprintln!("cannot run node {script}: {err}");
            None
        }
    }
}

/// A number field of the flat JSON object a peer script prints.
fn json_number(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(&format!("\"{key}\":"))? + key.len() + 3..];
    rest[..rest.find([',', '}']).unwrap_or(rest.len())].trim().parse().ok()
}

/// A string field of the flat JSON object a peer script prints.
fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(&format!("\"{key}\":\""))? + key.len() + 4..];
    Some(&rest[..rest.find('"')?])
}

fn render(args: &Args, rows: &[Row], notes: &[String]) -> String {
    let redis_version = Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mut out = format!(
        "# Baton benchmark\n\nMachine: {cores} cores; Redis, baton and this load generator share it. {redis_version}. \
         Each figure is {:?} of load; \"× raw\" is Baton's throughput over `redis-benchmark` running the \
         equivalent Redis command at the same concurrency in the same run (for lock cycles: half of \
         `SET NX PX` ops/s, since a cycle is two operations). \"server CPU\" is the server process's \
         user + system time per operation: unlike ops/s, it hardly moves when the machine is busy. \
         A \"paced N/s\" row starts calls at a steady half of the scenario's peak (every \
         millisecond, those due), however slow earlier ones are.\n\n\
         | scenario | callers | ops/s | × raw | p50 µs | p99 µs | p99.9 µs | server CPU µs/op |\n|---|---:|---:|---:|---:|---:|---:|---:|\n",
        args.duration
    );
    for r in rows {
        let ratio =
            r.baseline.filter(|b| *b > 0.0).map(|b| format!("{:.2}", r.ops_per_sec / b)).unwrap_or_else(|| "–".into());
        let cpu = r.cpu_us_per_op.map(|cpu| format!("{cpu:.0}")).unwrap_or_else(|| "–".into());
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} |\n",
            r.scenario, r.callers, r.ops_per_sec, ratio, r.p50_us, r.p99_us, r.p999_us, cpu
        ));
    }
    out.push('\n');
    for note in notes {
        out.push_str(&format!("- {note}\n"));
    }
    out
}
