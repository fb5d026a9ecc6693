//! Baton: one correct, shared implementation of the coordination patterns every backend
//! needs once it runs on more than one instance — rate limits, fenced locks, a
//! stampede-proof cache, sessions and a job queue — served over gRPC, with all state in
//! Redis and every multi-step operation one atomic Lua script.
//!
//! # Layout
//! - [`config`]: flags (`BATON_*` env twins) and the optional TOML file.
//! - [`server`]: the tonic server, health, reflection, layers, graceful shutdown.
//! - [`store`]: the only module that speaks to Redis: connections, timeouts, scripts,
//!   keys, the health pinger and the embedded development Redis.
//! - [`ratelimit`], [`lock`]: one module per pattern; `grpc.rs` inside each is its tonic face.
//! - [`error`]: the single mapping from errors to gRPC statuses.
//! - [`telemetry`]: logs, Prometheus metrics.
//! - [`proto`]: generated code and proto conversions.

pub mod auth;
pub mod cache;
pub mod codec;
pub mod config;
pub mod deadline;
pub mod envoy;
pub mod error;
pub mod listener;
pub mod lock;
pub mod proto;
pub mod queue;
pub mod ratelimit;
pub mod secret;
pub mod server;
pub mod session;
pub mod signal;
pub mod store;
pub mod task;
pub mod telemetry;
pub mod tls;
pub mod validate;
