//! Lock cycles through the lock helper a Go user calls, Baton's against etcd's: the
//! `bench/locks` program (built by `make bench`) runs Baton's `Client.Lock` + `Unlock` and
//! etcd's `concurrency.Mutex` (one session per caller) the same way, one process and one
//! client connection each, at every concurrency level, then hand-overs on one name. etcd 3.6
//! runs as one member with `--unsafe-no-fsync`: the benchmark's Redis keeps nothing on disk
//! either. Each server's CPU time is charged to its own cycles. With `--client-lock-helpers`,
//! the Node and Python clients' helpers run the same cycles (`bench/locks/node.mjs`,
//! `python.py`, from the repository root after `make clients-deps`), and with the peers'
//! directory too, etcd's own lock helpers beside them, the same language's pairs: etcd3's
//! `client.lock(name).acquire()` from Node (`bench/peers/etcd3-lock.mjs`) and aetcd's from
//! Python asyncio (`bench/locks/python.py … aetcd`, from the venv `make bench` makes in
//! `bench/peers`).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use testkit::process::spawn_ready;
use testkit::{PATIENCE, free_port};

use super::Bench;
use crate::measure::{cpu_micros, rss_mib};
use crate::peers::json_number;

/// One system's figures at one level.
struct Cycles {
    per_sec: f64,
    p50_us: f64,
    p99_us: f64,
    cpu_us: f64,
    /// The benchmark's Redis's CPU time per cycle (Baton's store; etcd uses none).
    redis_cpu_us: f64,
    /// The load program's own CPU time per cycle: the client helper's cost.
    client_cpu_us: f64,
}

pub async fn run(bench: &mut Bench, locks: &Path, etcd: &Path, client_helpers: bool, peers: Option<&Path>) {
    let (mut server, etcd_addr, data_dir) = start_etcd(etcd);
    let baton = (bench.baton_addr, bench.baton_pid);
    let etcd_server = (etcd_addr, server.id());
    let seconds = format!("{}ms", bench.duration.as_millis());
    let version = etcd_version(etcd);
    for c in bench.levels.clone() {
        let level = ["-concurrency", &c.to_string(), "-duration", &seconds].map(str::to_owned);
        let ours = cycles(go_locks(locks, "baton", baton.0, &level), baton.1, bench.redis_pid);
        let theirs = cycles(go_locks(locks, "etcd", etcd_server.0, &level), etcd_server.1, bench.redis_pid);
        bench.notes.push(format!(
            "Lock cycles through the Go client's own helper at {c} callers (distinct names, one connection): \
                 Baton Client.Lock + Unlock {}; \
                 etcd {} concurrency.Mutex (--unsafe-no-fsync) {:.0}/s (p50 {:.0} µs, p99 {:.0} µs; CPU per cycle: \
                 etcd {:.0} µs, the client {:.0} µs): Baton {:.2}× etcd, {:.2}× its server CPU per cycle",
            ours.describe(),
            version,
            theirs.per_sec,
            theirs.p50_us,
            theirs.p99_us,
            theirs.cpu_us,
            theirs.client_cpu_us,
            ours.per_sec / theirs.per_sec,
            ours.cpu_us / theirs.cpu_us,
        ));
        if client_helpers {
            let level = [baton.0.to_string(), c.to_string(), format!("{}", bench.duration.as_secs_f64())];
            let helpers = [
                ("Node client's lock + release", "node", "bench/locks/node.mjs"),
                ("Python asyncio client's lock", "clients/python/.venv/bin/python", "bench/locks/python.py"),
            ];
            let mut helped_per_sec = [None, None];
            for ((helper, program, script), per_sec) in helpers.into_iter().zip(&mut helped_per_sec) {
                let mut command = Command::new(program);
                command.arg(script).args(&level);
                let helped = cycles(command, baton.1, bench.redis_pid);
                bench.notes.push(format!(
                    "Lock cycles through the {helper} at {c} callers: {}: {:.2}× etcd's Go mutex",
                    helped.describe(),
                    helped.per_sec / theirs.per_sec
                ));
                *per_sec = Some(helped.per_sec);
            }
            // etcd's own helper in the same language: the like-for-like pair for each client.
            let Some(dir) = peers else { continue };
            let (target, callers) = (etcd_addr.to_string(), c.to_string());
            let mut node = Command::new("node");
            node.arg(dir.join("etcd3-lock.mjs")).args([
                "--target",
                &target,
                "--concurrency",
                &callers,
                "--duration",
                &level[2],
            ]);
            let mut python = Command::new(dir.join(".venv/bin/python"));
            python.args(["bench/locks/python.py", &target, &callers, &level[2], "aetcd"]);
            let etcd_helpers = [
                (
                    "etcd3's own Node helper (npm etcd3, lock(name).acquire() + release())",
                    "Node client's lock + release",
                    node,
                ),
                (
                    "aetcd's lock helper (PyPI aetcd, etcd's asyncio client: lock(name).acquire() + release())",
                    "Python asyncio client's lock",
                    python,
                ),
            ];
            for ((peer, ours, command), helped) in etcd_helpers.into_iter().zip(helped_per_sec) {
                let Some(helped) = helped else { continue };
                let theirs = cycles(command, etcd_server.1, bench.redis_pid);
                bench.notes.push(format!(
                    "Lock cycles through {peer} at {c} callers: {:.0}/s (p50 {:.0} µs, p99 {:.0} µs; CPU per cycle: \
                     etcd {:.0} µs, the client {:.0} µs): the {ours} {:.2}× it",
                    theirs.per_sec,
                    theirs.p50_us,
                    theirs.p99_us,
                    theirs.cpu_us,
                    theirs.client_cpu_us,
                    helped / theirs.per_sec,
                ));
            }
        }
    }
    // A few rounds in a smoke run, 200 in a real one: each round waits 20 ms for the waiter.
    let rounds = (bench.duration.as_millis() / 25).clamp(5, 200).to_string();
    let handover = ["-handover", rounds.as_str()].map(str::to_owned);
    let ours = json_line(go_locks(locks, "baton", baton.0, &handover));
    let theirs = json_line(go_locks(locks, "etcd", etcd_addr, &handover));
    let at = |line: &str, key| json_number(line, key).unwrap_or(0.0);
    bench.notes.push(format!(
        "Lock hand-over through the Go helpers ({rounds} rounds, Unlock called → the waiting Lock returns): Baton p50 \
         {:.0} µs, p99 {:.0} µs; etcd p50 {:.0} µs, p99 {:.0} µs",
        at(&ours, "p50_us"),
        at(&ours, "p99_us"),
        at(&theirs, "p50_us"),
        at(&theirs, "p99_us"),
    ));
    bench.notes.push(format!("etcd RSS after the lock runs: {:.0} MiB", rss_mib(server.id())));
    let _ = server.kill();
    let _ = server.wait();
    let _ = std::fs::remove_dir_all(data_dir);
}

impl Cycles {
    fn describe(&self) -> String {
        format!(
            "{:.0}/s (p50 {:.0} µs, p99 {:.0} µs; CPU per cycle: baton {:.0} µs, Redis {:.0} µs, the client {:.0} µs)",
            self.per_sec, self.p50_us, self.p99_us, self.cpu_us, self.redis_cpu_us, self.client_cpu_us
        )
    }
}

/// Runs one level of a load program against the server `pid`, charging the server's CPU
/// time (and Redis's) to its cycles.
fn cycles(program: Command, pid: u32, redis_pid: u32) -> Cycles {
    let (before, redis_before) = (cpu_micros(pid), cpu_micros(redis_pid));
    let line = json_line(program);
    let spent = cpu_micros(pid).saturating_sub(before) as f64;
    let redis_spent = cpu_micros(redis_pid).saturating_sub(redis_before) as f64;
    let field = |key| json_number(&line, key).unwrap_or_else(|| panic!("no {key} in {line}"));
    Cycles {
        per_sec: field("cycles_per_sec"),
        p50_us: field("p50_us"),
        p99_us: field("p99_us"),
        cpu_us: spent / field("cycles").max(1.0),
        redis_cpu_us: redis_spent / field("cycles").max(1.0),
        client_cpu_us: field("client_cpu_us"),
    }
}

/// `bench/locks` against one system.
fn go_locks(locks: &Path, system: &str, addr: SocketAddr, args: &[String]) -> Command {
    let mut command = Command::new(locks);
    command.args(["-system", system, "-target", &addr.to_string()]).args(args);
    command
}

/// The JSON line a load program prints (`bench/locks`'s shape); its failure (reason on its
/// stderr) ends the benchmark.
fn json_line(mut program: Command) -> String {
    let output =
        program.stderr(Stdio::inherit()).output().unwrap_or_else(|err| panic!("cannot run {program:?}: {err}"));
    assert!(output.status.success(), "{program:?}: {}", output.status);
    let stdout = String::from_utf8_lossy(&output.stdout);
    stdout.lines().rev().find(|line| line.starts_with('{')).expect("a JSON line").to_owned()
}

/// One etcd member on free ports with a data directory of its own.
fn start_etcd(binary: &Path) -> (Child, SocketAddr, PathBuf) {
    let (client, peer) = (free_port(), free_port());
    let data_dir = std::env::temp_dir().join(format!("baton-bench-etcd-{}", std::process::id()));
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let mut command = Command::new(binary);
    command
        .args(["--name", "bench", "--data-dir", data_dir.to_str().unwrap(), "--unsafe-no-fsync"])
        .args(["--log-level", "error"])
        .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
        .args(["--initial-cluster", &format!("bench={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let addr = SocketAddr::from(([127, 0, 0, 1], client));
    let child = spawn_ready(&mut command, PATIENCE, || TcpStream::connect(addr).is_ok());
    (child.unwrap_or_else(|| panic!("etcd did not listen on {addr}")), addr, data_dir)
}

/// "3.6.16", from the binary's own `--version`.
fn etcd_version(binary: &Path) -> String {
    let output = Command::new(binary).arg("--version").output().map(|o| o.stdout).unwrap_or_default();
    let text = String::from_utf8_lossy(&output);
    text.lines().find_map(|line| line.strip_prefix("etcd Version: ")).unwrap_or("?").trim().to_owned()
}
