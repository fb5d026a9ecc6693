//! The machine's gRPC ceiling: a bare tonic server in its own process, then baton's own
//! health Check, which passes every layer but touches no Redis.

use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command};

use testkit::{PATIENCE, free_port};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::{Bench, Call, Pool};
use crate::measure;

/// The row of baton's own health `Check`: every layer, no Redis.
pub const BATON_HEALTH: &str = "baton Health/Check (every layer, no Redis)";

/// A child process killed when dropped.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// This binary again, as a bare tonic server: what gRPC itself costs on this machine.
fn start_bare_server() -> (Process, SocketAddr) {
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut command = Command::new(std::env::current_exe().expect("own path"));
    command.args(["--serve-bare", &addr.to_string()]);
    let child = testkit::process::spawn_ready(&mut command, PATIENCE, || TcpStream::connect(addr).is_ok())
        .expect("the bare tonic server did not start");
    (Process(child), addr)
}

/// Serves gRPC health alone on `addr`, with no layers (`--serve-bare`).
pub async fn serve_bare(addr: SocketAddr) {
    let (_, health) = tonic_health::server::health_reporter();
    tonic::transport::Server::builder().add_service(health).serve(addr).await.expect("bare server");
}

/// Caller `w`'s call: gRPC health `Check`, which touches no Redis.
pub fn health(pool: Pool) -> impl Fn(usize, u64) -> Call + Send + Sync + 'static {
    move |w, _| {
        let mut health = HealthClient::new(pool.get(w));
        Box::pin(async move {
            health.check(HealthCheckRequest { service: String::new() }).await.expect("health");
        })
    }
}

pub async fn run(bench: &mut Bench) {
    let (bare_process, bare_addr) = start_bare_server();
    let bare = Pool::connect(bare_addr, 8).await;
    measure::measure_pid(bare_process.0.id());
    bench.scenario("gRPC ceiling: bare tonic server, Health/Check", |_| None, health(bare)).await;
    measure::measure_pid(bench.baton_pid);
    drop(bare_process);
    bench.scenario(BATON_HEALTH, |_| None, health(bench.pool.clone())).await;
}
