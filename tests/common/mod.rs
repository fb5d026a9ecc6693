//! Test harness: private `redis-server` processes on free ports (killable, freezable,
//! restartable), Baton served in this process or as a `baton` child, and polls for state
//! that becomes true later.
//!
//! # Layout
//! - [`server`]: [`Server`], Baton in-process through `baton::server::run` — the per-service
//!   suites use it.
//! - [`baton`]: [`Baton`], a `baton` child process, for tests that signal, kill or restart
//!   it, read its log or scrape its metrics; [`Clients`], the service clients of either.
//! - [`redis`]: [`Redis`], a private redis-server, and what Baton published on it.
//! - [`scale_out`]: credentials, Redis Cluster, Sentinel and TLS for `cluster.rs`,
//!   `sentinel.rs` and `transport.rs`.
//! - [`streams`]: KeepAlive heartbeats and Consume events.
//!
//! The process plumbing (free ports, spawning until ready, signals) is the `testkit` crate,
//! shared with the benchmark.

// Each test binary compiles the whole harness and uses a part of it.
#![allow(dead_code, unused_imports)]

pub mod baton;
pub mod redis;
pub mod scale_out;
pub mod server;
pub mod streams;

use std::time::{Duration, Instant};

pub use baton::{Baton, Clients, scrape_metrics, spawn_holding_child};
pub use redis::Redis;
pub use scale_out::{Auth, RedisCluster, SentinelSet, TlsFiles};
pub use server::Server;
pub use streams::{final_status, heartbeats, next_event};
pub use testkit::baton::json_field;
pub use testkit::{PATIENCE, free_port, process_alive};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The serving status of health name `service`, or `None` if the call failed.
pub async fn health_status(health: &mut HealthClient<Channel>, service: &str) -> Option<ServingStatus> {
    let request = HealthCheckRequest { service: service.to_owned() };
    let response = tokio::time::timeout(Duration::from_secs(2), health.check(request)).await.ok()?.ok()?;
    ServingStatus::try_from(response.into_inner().status).ok()
}

/// Polls `condition` until it holds or `patience` runs out; returns how long it took.
pub async fn eventually<F, Fut>(patience: Duration, what: &str, mut condition: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let started = Instant::now();
    loop {
        if condition().await {
            return started.elapsed();
        }
        assert!(started.elapsed() < patience, "not within {patience:?}: {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A key unique to one test, so tests sharing a Redis never collide.
pub fn unique(name: &str) -> String {
    format!("{name}-{}", uuid::Uuid::new_v4().simple())
}

/// The ErrorInfo reason of a status, as the enum the proto publishes.
pub fn reason_of(status: &tonic::Status) -> ::baton::proto::v1::ErrorReason {
    use tonic_types::StatusExt;
    let reason = status.get_details_error_info().expect("every Baton error carries ErrorInfo").reason;
    ::baton::proto::v1::ErrorReason::from_str_name(&reason).unwrap_or_else(|| panic!("{reason:?} is no ErrorReason"))
}
