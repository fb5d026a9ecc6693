//! A `baton` child process: started on free ports, its JSON log captured.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use crate::process::signal;
use crate::wait::{self, PATIENCE};

/// A `baton` child process, killed on drop. Its addresses are the ones it logs in its
/// `serving` line, so it binds port 0 and nobody races it for a port.
pub struct BatonProcess {
    child: Child,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    logs: Arc<Mutex<Vec<String>>>,
}

impl BatonProcess {
    /// Starts `binary` with `args` after `--log-format json` and free gRPC and metrics
    /// ports (`--listen` only when `args` has none, to restart a replica in place), logging
    /// at `rust_log`. Every stderr line is kept (see [`Self::logs`]) and echoed when
    /// `BATON_TEST_LOGS` is set.
    pub fn start(binary: &Path, args: &[&str], rust_log: &str) -> Self {
        let mut command = Command::new(binary);
        command.args(["--metrics-listen", "127.0.0.1:0", "--log-format", "json"]).args(args);
        if !args.contains(&"--listen") {
            command.args(["--listen", "127.0.0.1:0"]);
        }
        command.env("RUST_LOG", rust_log).stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|err| panic!("cannot start {}: {err}", binary.display()));
        let stderr = child.stderr.take().expect("stderr piped");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addrs_tx, addrs_rx) = mpsc::channel();
        let sink = logs.clone();
        // Reads until baton exits, so it never blocks on a full pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let (Some(grpc), Some(metrics)) = (json_field(&line, "grpc_addr"), json_field(&line, "metrics_addr"))
                {
                    let _ = addrs_tx.send((grpc.parse(), metrics.parse()));
                }
                if std::env::var_os("BATON_TEST_LOGS").is_some() {
                    eprintln!("baton: {line}");
                }
                sink.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).push(line);
            }
        });
        match addrs_rx.recv_timeout(PATIENCE) {
            Ok((Ok(addr), Ok(metrics_addr))) => Self { child, addr, metrics_addr, logs },
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("baton did not start: {:#?}", logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Every line baton has written to stderr so far.
    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    pub fn sigterm(&self) {
        signal(self.child.id(), libc::SIGTERM);
    }

    pub fn sigkill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit, up to `patience`.
    pub fn wait_exit(&mut self, patience: Duration) -> Option<ExitStatus> {
        let mut status = None;
        wait::until(patience, || {
            status = self.child.try_wait().ok().flatten();
            status.is_some()
        });
        status
    }
}

impl Drop for BatonProcess {
    fn drop(&mut self) {
        self.sigkill();
    }
}

/// Pulls `"name":"value"` out of a JSON log line.
pub fn json_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let marker = format!("\"{name}\":\"");
    let start = line.find(&marker)? + marker.len();
    let end = line[start..].find('"')? + start;
    Some(&line[start..end])
}

#[cfg(test)]
mod tests {
    use super::json_field;

    #[test]
    fn json_field_reads_a_string_field_and_nothing_else() {
        let line = r#"{"level":"INFO","fields":{"grpc_addr":"127.0.0.1:5","redis.pid":42}}"#;
        assert_eq!(json_field(line, "grpc_addr"), Some("127.0.0.1:5"));
        assert_eq!(json_field(line, "redis.pid"), None);
        assert_eq!(json_field(line, "missing"), None);
    }
}
