//! The Markdown report: the table of rows and the notes under it.

use std::process::Command;

use crate::Args;
use crate::measure::Row;

/// The report `args` asked for, with the machine and Redis version it ran on.
pub fn render(args: &Args, rows: &[Row], notes: &[String]) -> String {
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
         \"Redis CPU\" is the benchmark Redis's, per operation, and \"raw Redis CPU\" the same for \
         the `redis-benchmark` run it is compared with. A \"paced N/s\" row starts calls at a steady half of the scenario's peak (every \
         millisecond, those due), however slow earlier ones are.\n\n\
         | scenario | callers | ops/s | × raw | p50 µs | p99 µs | p99.9 µs | server CPU µs/op | Redis CPU µs/op | raw Redis CPU µs/op |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
        args.duration
    );
    for r in rows {
        let ratio = r
            .baseline
            .filter(|b| b.ops_per_sec > 0.0)
            .map(|b| format!("{:.2}", r.ops_per_sec / b.ops_per_sec))
            .unwrap_or_else(|| "–".into());
        let micros = |cpu: Option<f64>| cpu.map(|cpu| format!("{cpu:.0}")).unwrap_or_else(|| "–".into());
        let raw_redis = micros(r.baseline.and_then(|b| b.redis_cpu_us_per_op));
        out.push_str(&format!(
            "| {} | {} | {:.0} | {} | {} | {} | {} | {} | {} | {} |\n",
            r.scenario,
            r.callers,
            r.ops_per_sec,
            ratio,
            r.p50_us,
            r.p99_us,
            r.p999_us,
            micros(r.cpu_us_per_op),
            micros(r.redis_cpu_us_per_op),
            raw_redis
        ));
    }
    out.push('\n');
    for note in notes {
        out.push_str(&format!("- {note}\n"));
    }
    out
}
