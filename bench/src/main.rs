//! `baton-bench`: the load generator behind `make bench`.
//!
//! Starts its own `redis-server` and `baton` (the binary given with `--baton`), then runs
//! every scenario at several concurrencies for a fixed time and reports throughput and
//! latency percentiles, each beside the raw Redis equivalent measured by `redis-benchmark`
//! in the same run, and beside a bare tonic server (the machine's gRPC ceiling).
//!
//! # Layout
//! - [`scenarios`]: one module per scenario group (`--only`), plus idle streams' memory.
//! - [`measure`]: closed- and open-loop load, histograms, the server's CPU per operation.
//! - [`redis_baseline`]: `redis-benchmark` and `redis-cli`, the "× raw" figures.
//! - [`peers`]: BullMQ and node-redlock (`bench/peers`) against the same Redis; etcd is
//!   [`scenarios::etcd`].
//! - [`report`]: the Markdown report.

// A failed call ends the measurement, and the panic says where: the load generator is
// run by hand and by make bench, never serves anyone.
#![allow(clippy::unwrap_used)]

mod measure;
mod peers;
mod redis_baseline;
mod report;
mod scenarios;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use testkit::{BatonProcess, RedisServer};

use crate::scenarios::{Bench, Pool};

#[derive(Debug, Parser)]
#[command(about = "Baton's benchmark: every pattern against raw Redis in the same run")]
pub struct Args {
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
    /// Run only these scenario groups (comma-separated: ceiling, check, envoy, lock, cache,
    /// session, singletons, tracing, queue, pinned); default all. For profiling one path at a time.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also measure the peers a user would pick instead (BullMQ, node-redlock) with the
    /// Node scripts in this directory (bench/peers, after `npm ci`), against the same Redis.
    #[arg(long)]
    peers: Option<PathBuf>,
    /// envoyproxy/ratelimit's server binary, measured beside baton's ShouldRateLimit
    /// (`make bench` builds it from the Go module proxy); without it baton runs alone.
    #[arg(long)]
    envoy_ratelimit: Option<PathBuf>,
    /// The `bench/locks` program (lock cycles through the Go client's helper and through
    /// etcd's `concurrency.Mutex`), measured with `--etcd` in the lock group.
    #[arg(long, requires = "etcd")]
    locks_bench: Option<PathBuf>,
    /// etcd's server binary (`make bench` builds 3.6 from the Go module proxy), the gRPC
    /// coordination peer for lock cycles and hand-overs.
    #[arg(long, requires = "locks_bench")]
    etcd: Option<PathBuf>,

    /// With `--locks-bench`: also run lock cycles through the Node and Python clients' own
    /// helpers (bench/locks/node.mjs and python.py; the clients' dependencies installed and
    /// the Node client built, as `make bench` does), against etcd's figures.
    #[arg(long, requires = "locks_bench")]
    client_lock_helpers: bool,

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

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(addr) = args.serve_bare {
        return scenarios::ceiling::serve_bare(addr).await;
    }
    let redis = RedisServer::start(&[]);
    let redis_url = redis.url();
    let baton = BatonProcess::start(
        &args.baton,
        &["--redis-url", &redis_url, "--queue-max-in-flight", "1000"],
        "warn,baton=info",
    );
    measure::measure_pid(baton.pid());
    measure::measure_redis(redis.pid());
    let mut bench = Bench {
        redis_port: redis.port,
        redis_pid: redis.pid(),
        baton_addr: baton.addr,
        baton_pid: baton.pid(),
        baton_binary: args.baton.clone(),
        pool: Pool::connect(baton.addr, 8).await,
        duration: args.duration,
        levels: args.concurrency.clone(),
        rows: Vec::new(),
        notes: Vec::new(),
    };

    // Memory and connections with many idle streams, first, on a process no load has grown.
    if args.streams > 0 {
        scenarios::streams::run(&mut bench, args.streams).await;
    }
    if args.runs("ceiling") {
        scenarios::ceiling::run(&mut bench).await;
    }
    if args.runs("check") {
        scenarios::check::run(&mut bench).await;
    }
    if args.runs("envoy") {
        scenarios::envoy::run(&mut bench, args.envoy_ratelimit.as_deref()).await;
    }
    if args.runs("lock") {
        scenarios::lock::run(&mut bench).await;
        if let (Some(locks), Some(etcd)) = (&args.locks_bench, &args.etcd) {
            scenarios::etcd::run(&mut bench, locks, etcd, args.client_lock_helpers, args.peers.as_deref()).await;
        }
    }
    if args.runs("cache") {
        scenarios::cache::run(&mut bench).await;
    }
    if args.runs("session") {
        scenarios::session::run(&mut bench).await;
    }
    if args.runs("singletons") {
        scenarios::singletons::run(&mut bench).await;
    }
    if args.runs("tracing") {
        scenarios::tracing::run(&mut bench).await;
    }
    let queue_rate = if args.runs("queue") { Some(scenarios::queue::run(&mut bench).await) } else { None };
    if args.runs("pinned") {
        scenarios::pinned::run(&mut bench).await;
    }

    let Bench { rows, mut notes, .. } = bench;
    if let Some(dir) = &args.peers {
        notes.extend(peers::peer_notes(
            dir,
            baton.addr,
            redis.port,
            args.duration,
            &args.concurrency,
            queue_rate,
            &rows,
        ));
    }
    // Memory must stay flat under load, scraped or not: what the whole run left behind.
    notes.push(format!("baton RSS after the whole benchmark: {:.0} MiB", measure::rss_mib(baton.pid())));
    let half_load: Vec<String> = rows
        .iter()
        .filter(|r| r.callers.starts_with("paced"))
        .map(|r| format!("{} {:.2} ms", r.scenario, r.p99_us as f64 / 1000.0))
        .collect();
    if !half_load.is_empty() {
        notes.insert(0, format!("p99 at half of peak load (target < 2 ms): {}", half_load.join("; ")));
    }
    let report = report::render(&args, &rows, &notes);
    println!("{report}");
    if let Some(path) = &args.report {
        std::fs::create_dir_all(path.parent().unwrap_or(std::path::Path::new("."))).unwrap();
        std::fs::write(path, &report).unwrap();
    }
}
