//! Child processes on loopback: free ports, signals, liveness, spawning until ready.

use std::net::TcpListener;
use std::process::{Child, Command};
use std::time::Duration;

use crate::wait;

/// A port free on 127.0.0.1 a moment ago. Another process may take it before the caller
/// binds it: callers that spawn a server on it retry with a fresh one.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|listener| listener.local_addr()).expect("a free loopback port").port()
}

/// Sends `signal` to `pid`.
pub fn signal(pid: u32, signal: libc::c_int) {
    // SAFETY: kill(2) has no memory preconditions; callers pass pids they started.
    #[allow(unsafe_code)]
    unsafe {
        libc::kill(pid as libc::pid_t, signal);
    }
}

/// Whether a process with this pid still exists (and is not a zombie).
pub fn process_alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state letter follows the parenthesised command name; Z is a zombie.
    !stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

/// Spawns `command` and waits up to `patience` until `ready` holds. `None` (the child
/// killed and reaped) when it exits first or never gets ready, e.g. because another
/// process took its port: the caller then tries a fresh port.
pub fn spawn_ready(command: &mut Command, patience: Duration, mut ready: impl FnMut() -> bool) -> Option<Child> {
    let mut child = command.spawn().unwrap_or_else(|err| panic!("cannot start {:?}: {err}", command.get_program()));
    let mut exited = None;
    let became_ready = wait::until(patience, || match child.try_wait() {
        Ok(Some(status)) => {
            exited = Some(status);
            true
        }
        _ => ready(),
    });
    if let Some(status) = exited {
        eprintln!("{:?} exited before it was ready: {status}", command.get_program());
        return None;
    }
    if !became_ready {
        let _ = child.kill();
        let _ = child.wait();
        return None;
    }
    Some(child)
}
