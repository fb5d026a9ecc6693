//! Baton: one correct, shared implementation of the coordination patterns every backend
//! needs once it runs on more than one instance — rate limits, fenced locks, a
//! stampede-proof cache, sessions and a job queue — served over gRPC, with all state in
//! Redis and every multi-step operation one atomic Lua script.
//!
//! # Layout
//! Every pattern has the same shape: `mod.rs` holds its settings and its manager (the
//! domain logic, answering domain outcomes or [`error::Error`]s), `keys.rs` its Redis keys
//! in the order its scripts take them, `*.lua` its scripts, and `grpc.rs` its tonic face
//! (validation and proto conversions only).
//!
//! Public, for the `baton` binary and the tests:
//! - [`config`]: flags (`BATON_*` env twins) and the optional TOML file.
//! - [`server`]: the tonic server, health, reflection, layers, graceful shutdown.
//! - [`proto`]: generated code and proto conversions.
//! - [`telemetry`]: logs, Prometheus metrics.
//! - [`traces`]: OpenTelemetry spans per RPC and per Redis call, exported over OTLP.
//! - [`signal`]: the shutdown signals (SIGTERM, SIGINT).
//! - [`embedded`]: the development-mode `redis-server`.
//! - [`ids`]: ids as Baton hands them out, for tests that forge or compare them.
//! - [`slot_of`]: a key's Redis Cluster slot, for tests that place keys.
//!
//! Internal:
//! - `ratelimit`, `envoy` (Envoy's rate limit service on the rate limiter), `lock`,
//!   `election` (leaders on the lock's leases), `cache`, `session`, `queue`: the patterns.
//! - `store`: the only module that speaks to Redis: connections, timeouts, scripts and
//!   their one reply shape, keys, topology, the health pinger and the notification
//!   listener.
//! - `error`: the single mapping from errors to gRPC statuses and `baton.v1.ErrorReason`.
//! - `validate`: request limits and the checks every service shares.
//! - `auth`: API keys and tenants; `tls`: the listener's certificates; `listener`:
//!   accepting connections; `codec`: undecodable requests answered as bad input;
//!   `middleware`: the one shape of the HTTP middlewares; `deadline`: the default deadline; `secret`: unguessable values; `task`: background
//!   task ownership.

mod auth;
mod cache;
mod codec;
pub mod config;
mod dashboard;
mod deadline;
mod election;
mod envoy;
mod error;
mod listener;
mod lock;
mod middleware;
pub mod proto;
mod queue;
mod ratelimit;
mod secret;
pub mod server;
mod session;
pub mod signal;
mod store;
mod task;
pub mod telemetry;
mod tls;
pub mod traces;
mod validate;

pub use store::embedded;
pub use store::topology::slot_of;

/// Ids in the forms Baton hands out.
pub mod ids {
    pub use crate::lock::new_lease_id;
    pub use crate::queue::new_job_id;
    pub use crate::secret::hex;
    pub use crate::session::new_session_id;
}
