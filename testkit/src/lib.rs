//! What Baton's integration tests (`tests/`) and its load generator (`bench/`) share:
//! free loopback ports, a private `redis-server` on one, a `baton` child process whose
//! addresses come from its JSON log, and bounded waits for state that becomes true later.
//!
//! No Baton types here: the tests link the `baton` library they test, and a kit that did
//! too would be a second copy of it.
//!
//! # Layout
//! - [`wait`]: [`PATIENCE`] and the one synchronous poll, [`wait::until`].
//! - [`process`]: free ports, signals, whether a pid lives, spawning until ready.
//! - [`redis`]: [`RedisServer`], a private redis-server (killable, freezable, restartable).
//! - [`baton`]: [`BatonProcess`], a `baton` child process and its captured log.

pub mod baton;
pub mod process;
pub mod redis;
pub mod wait;

pub use baton::BatonProcess;
pub use process::{free_port, process_alive, signal};
pub use redis::RedisServer;
pub use wait::PATIENCE;
