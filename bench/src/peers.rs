//! The peers a user would pick instead of Baton (BullMQ, node-redlock), run by their Node
//! scripts in `bench/peers` against the benchmark's own Redis; and Baton's queue through each
//! client's own worker (`bench/workers`), the figure users get, beside BullMQ's.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::measure::Row;
use crate::scenarios::lock::LOCK_DISTINCT;

/// BullMQ and node-redlock, each beside the Baton figure it compares with.
pub fn peer_notes(
    dir: &Path,
    baton: SocketAddr,
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
            notes.extend(worker_notes(baton, rate));
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
                // Without the lock group in this run (--only) there is nothing to compare.
                let beside = rows
                    .iter()
                    .find(|r| r.scenario == LOCK_DISTINCT && r.callers == c.to_string())
                    .map(|baton| {
                        format!(
                            " (Baton distinct-name cycles at {c}: {:.0}/s = {:.2}× node-redlock)",
                            baton.ops_per_sec,
                            baton.ops_per_sec / rate
                        )
                    })
                    .unwrap_or_default();
                notes.push(format!(
                    "node-redlock {version} acquire+release cycles at {c} tasks (distinct names, one ioredis \
                     connection): {rate:.0}/s, p50 {} µs, p99 {} µs{beside}",
                    json_number(&line, &format!("p50_us_c{c}")).unwrap_or(0.0),
                    json_number(&line, &format!("p99_us_c{c}")).unwrap_or(0.0),
                ));
            }
        }
        None => notes.push("node-redlock cycles: not measured (node redlock.mjs failed, see its stderr)".into()),
    }
    notes
}

/// Baton's queue through each client's own worker (concurrency 256 and producers' batches
/// of 100, as BullMQ's Worker and addBulk are run), with and without ack coalescing, and
/// with a prefetch of 256 (each handler's next job already in hand).
fn worker_notes(baton: SocketAddr, bullmq: f64) -> Vec<String> {
    let addr = baton.to_string();
    let workers: [(&str, &str, &[&str], Option<&str>); 3] = [
        ("Node", "node", &["bench/workers/node.mjs"], None),
        ("Go", "go", &["run", "."], Some("bench/workers/go")),
        ("Python (asyncio)", "clients/python/.venv/bin/python", &["bench/workers/python.py"], None),
    ];
    let mut notes = Vec::new();
    for (client, program, args, dir) in workers {
        let rate = |ack_batch_size: &str, prefetch: &str| {
            let mut command = Command::new(program);
            if let Some(dir) = dir {
                command.current_dir(dir);
            }
            let output = command
                .args(args)
                .args([addr.as_str(), "", "50000", "256", "100"])
                .env("ACK_BATCH_SIZE", ack_batch_size)
                .env("PREFETCH", prefetch)
                .stderr(Stdio::inherit())
                .output()
                .ok()
                .filter(|output| output.status.success())?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            stdout.lines().rev().find(|line| line.starts_with('{')).and_then(|line| json_number(line, "jobs_per_s"))
        };
        match (rate("256", "0"), rate("0", "0"), rate("256", "256")) {
            (Some(coalesced), Some(single), Some(prefetched)) => notes.push(format!(
                "Queue through the {client} client's own worker (50,000 jobs, concurrency 256, EnqueueBatch of \
                 100, timed after a warm-up of 4 × concurrency acks as BullMQ is): {coalesced:.0} jobs/s = {:.2}× BullMQ; with one Ack per job \
                 (ACK_BATCH_SIZE=0) {single:.0} jobs/s = {:.2}× BullMQ; with a prefetch of 256 (PREFETCH=256) \
                 {prefetched:.0} jobs/s = {:.2}× BullMQ",
                coalesced / bullmq,
                single / bullmq,
                prefetched / bullmq
            )),
            _ => notes.push(format!("Queue through the {client} client's own worker: not measured (see stderr)")),
        }
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
pub fn json_number(line: &str, key: &str) -> Option<f64> {
    let rest = &line[line.find(&format!("\"{key}\":"))? + key.len() + 3..];
    rest[..rest.find([',', '}']).unwrap_or(rest.len())].trim().parse().ok()
}

/// A string field of the flat JSON object a peer script prints.
fn json_string<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let rest = &line[line.find(&format!("\"{key}\":\""))? + key.len() + 4..];
    Some(&rest[..rest.find('"')?])
}
