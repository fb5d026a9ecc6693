//! Load and what it measures: closed-loop callers, open-loop pacing, latency histograms
//! and the measured server's CPU time per operation.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// One measured row of the report.
pub struct Row {
    pub scenario: String,
    /// Concurrent callers, or how the load was paced.
    pub callers: String,
    pub ops_per_sec: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    /// The raw Redis figure this row is compared with.
    pub baseline: Option<Raw>,
    /// Baton's CPU time per operation, µs.
    pub cpu_us_per_op: Option<f64>,
    /// The benchmark Redis's CPU time per operation, µs: what each call costs the one
    /// process every replica shares.
    pub redis_cpu_us_per_op: Option<f64>,
}

/// A raw Redis run: its throughput and what each of its operations cost Redis.
#[derive(Clone, Copy)]
pub struct Raw {
    pub ops_per_sec: f64,
    pub redis_cpu_us_per_op: Option<f64>,
}

impl Raw {
    /// The same run counted in units of `n` operations (a lock cycle is two commands).
    pub fn per(self, n: f64) -> Self {
        Self { ops_per_sec: self.ops_per_sec / n, redis_cpu_us_per_op: self.redis_cpu_us_per_op.map(|cpu| cpu * n) }
    }
}

/// A latency histogram from 1 µs to a minute, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

/// The server process whose CPU time each measurement charges to its operations (0: none).
static MEASURED_PID: AtomicU32 = AtomicU32::new(0);
/// The benchmark's redis-server, whose CPU time every measurement also charges (0: none).
static REDIS_PID: AtomicU32 = AtomicU32::new(0);

/// Charges the CPU time of the following measurements to process `pid`.
pub fn measure_pid(pid: u32) {
    MEASURED_PID.store(pid, Ordering::Relaxed);
}

/// Charges Redis's CPU time too, to every following measurement.
pub fn measure_redis(pid: u32) {
    REDIS_PID.store(pid, Ordering::Relaxed);
}

/// A process's CPU time over one measurement.
pub struct CpuMeter {
    pid: u32,
    before: u64,
}

impl CpuMeter {
    fn start() -> Option<Self> {
        Self::of(MEASURED_PID.load(Ordering::Relaxed))
    }

    /// The benchmark Redis's meter, when it is known.
    pub fn redis() -> Option<Self> {
        Self::of(REDIS_PID.load(Ordering::Relaxed))
    }

    fn of(pid: u32) -> Option<Self> {
        (pid != 0).then(|| Self { pid, before: cpu_micros(pid) })
    }

    pub fn per_op(&self, operations: u64) -> Option<f64> {
        (operations > 0).then(|| cpu_micros(self.pid).saturating_sub(self.before) as f64 / operations as f64)
    }
}

/// CPU time (user + system) a process has used so far, in microseconds.
pub fn cpu_micros(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks: u64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<u64>().ok()).sum();
    // SAFETY: sysconf(3) reads a constant of the system and touches no memory of ours.
    #[allow(unsafe_code)]
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    ticks * 1_000_000 / per_second
}

/// Resident memory of a process, MiB.
pub fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|kb| kb.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// One load run: throughput, latencies, and baton's CPU time per operation — the figure
/// that stays comparable when the machine is noisy.
pub struct Measured {
    rate: f64,
    histogram: Histogram<u64>,
    cpu_us_per_op: Option<f64>,
    redis_cpu_us_per_op: Option<f64>,
}

/// Runs `op` from `concurrency` callers for `duration`; callers spread over a few HTTP/2
/// connections as a real client pool would.
pub async fn load<F, Fut>(concurrency: usize, duration: Duration, op: Arc<F>) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (cpu, redis_cpu) = (CpuMeter::start(), CpuMeter::redis());
    let started = Instant::now();
    let deadline = started + duration;
    let mut workers = Vec::new();
    for worker in 0..concurrency {
        let op = op.clone();
        workers.push(tokio::spawn(async move {
            let mut histogram = histogram();
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
    let mut total = histogram();
    for worker in workers {
        total.add(worker.await.unwrap()).unwrap();
    }
    let rate = total.len() as f64 / started.elapsed().as_secs_f64();
    let [cpu_us_per_op, redis_cpu_us_per_op] = [cpu, redis_cpu].map(|meter| meter?.per_op(total.len()));
    Measured { rate, histogram: total, cpu_us_per_op, redis_cpu_us_per_op }
}

/// Starts `op` at a steady `rate` per second for `duration`, however long earlier calls take
/// (open loop): the latency a service shows at that load, without the coordinated omission
/// of a closed loop, where a slow call also delays the calls behind it.
pub async fn paced<F, Fut>(rate: f64, duration: Duration, op: Arc<F>) -> Measured
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (cpu, redis_cpu) = (CpuMeter::start(), CpuMeter::redis());
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
    let mut histogram = histogram();
    while let Some(latency) = calls.join_next().await {
        histogram.record(latency.unwrap().as_micros().max(1) as u64).unwrap();
    }
    let rate = histogram.len() as f64 / started.elapsed().as_secs_f64();
    let [cpu_us_per_op, redis_cpu_us_per_op] = [cpu, redis_cpu].map(|meter| meter?.per_op(histogram.len()));
    Measured { rate, histogram, cpu_us_per_op, redis_cpu_us_per_op }
}

/// Measures `op` closed-loop at every concurrency, then paced at half the peak it reached:
/// the load at which the p99 target applies.
pub async fn scenario<F, Fut>(
    rows: &mut Vec<Row>,
    name: &str,
    concurrency: &[usize],
    duration: Duration,
    baseline: impl Fn(usize) -> Option<Raw>,
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

pub fn row(scenario: &str, callers: &str, measured: Measured, baseline: Option<Raw>) -> Row {
    let Measured { rate, histogram, cpu_us_per_op, redis_cpu_us_per_op } = measured;
    Row {
        scenario: scenario.to_owned(),
        callers: callers.to_owned(),
        ops_per_sec: rate,
        cpu_us_per_op,
        redis_cpu_us_per_op,
        p50_us: histogram.value_at_quantile(0.5),
        p99_us: histogram.value_at_quantile(0.99),
        p999_us: histogram.value_at_quantile(0.999),
        baseline,
    }
}
