//! The development Redis: a private, non-persistent `redis-server` child on a unix socket
//! in a temporary directory, started when no `--redis-url` is given.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const STARTUP_PATIENCE: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedRedisError {
    #[error(
        "no Redis URL was given and `{0}` could not be started: install the `redis-server` \
         package (Debian/Ubuntu: `apt-get install redis-server`) or pass --redis-url"
    )]
    NotInstalled(PathBuf),
    #[error("cannot prepare the embedded redis-server: {0}")]
    Io(#[from] std::io::Error),
    #[error("the embedded redis-server did not answer within {0:?}")]
    NoAnswer(Duration),
}

/// A running `redis-server` child; stopped (and its directory removed) on drop. If Baton
/// dies without dropping it (SIGKILL, abort), the kernel kills it too (`PR_SET_PDEATHSIG`).
pub struct EmbeddedRedis {
    child: Child,
    socket: PathBuf,
    // Removed on drop, after the child is gone.
    _dir: tempfile::TempDir,
}

impl EmbeddedRedis {
    /// Starts `redis-server` and waits until it answers PING. Call from the main thread:
    /// the death signal follows the thread that spawned the child.
    /// Spawns the server from the calling thread (whose exit, with PR_SET_PDEATHSIG, kills
    /// it: call it from the main thread) and waits until it answers.
    pub async fn start(binary: &Path) -> Result<Self, EmbeddedRedisError> {
        let dir = tempfile::Builder::new().prefix("baton-redis-").tempdir()?;
        let socket = dir.path().join("redis.sock");
        let mut command = Command::new(binary);
        command
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .args(["--unixsocketperm", "700", "--maxmemory-policy", "noeviction"])
            .arg("--dir")
            .arg(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        #[allow(unsafe_code)]
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => {
                EmbeddedRedisError::NotInstalled(binary.to_owned())
            }
            _ => EmbeddedRedisError::Io(err),
        })?;
        let embedded = Self { child, socket, _dir: dir };
        embedded.wait_until_ready().await?;
        Ok(embedded)
    }

    /// The URL clients use to reach it.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    async fn wait_until_ready(&self) -> Result<(), EmbeddedRedisError> {
        let started = Instant::now();
        while started.elapsed() < STARTUP_PATIENCE {
            if answers_ping(&self.socket) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(EmbeddedRedisError::NoAnswer(STARTUP_PATIENCE))
    }
}

fn answers_ping(socket: &Path) -> bool {
    let Ok(mut stream) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok() && stream.read_exact(&mut reply).is_ok() && &reply == b"+PONG\r\n"
}

impl Drop for EmbeddedRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
