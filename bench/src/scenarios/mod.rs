//! The scenario groups, one module each (`--only` names them), and what they share.

pub mod cache;
pub mod ceiling;
pub mod check;
pub mod envoy;
pub mod etcd;
pub mod lock;
pub mod pinned;
pub mod queue;
pub mod session;
pub mod singletons;
pub mod streams;
pub mod tracing;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tonic::transport::Channel;

use crate::measure::{self, Raw, Row};

/// What every scenario measures against, and the report it adds to.
pub struct Bench {
    /// The benchmark's own Redis, which baton uses and `redis-benchmark` measures.
    pub redis_port: u16,
    /// The benchmark's redis-server, whose CPU time a scenario may charge to its operations.
    pub redis_pid: u32,
    pub baton_addr: SocketAddr,
    pub baton_pid: u32,
    /// The binary measured, for scenarios that start baton with other flags.
    pub baton_binary: PathBuf,
    /// The connections the callers share.
    pub pool: Pool,
    /// How long each measurement runs.
    pub duration: Duration,
    /// Concurrent callers of each closed-loop measurement.
    pub levels: Vec<usize>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

impl Bench {
    /// Measures `op` at every concurrency and paced at half its peak; see
    /// [`measure::scenario`].
    pub async fn scenario<F, Fut>(&mut self, name: &str, baseline: impl Fn(usize) -> Option<Raw>, op: F)
    where
        F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        measure::scenario(&mut self.rows, name, &self.levels, self.duration, baseline, op).await;
    }
}

/// One call of a scenario, boxed so that more than one pass can make the same calls.
pub type Call = futures::future::BoxFuture<'static, ()>;

/// A few HTTP/2 connections that callers spread over, as a real client pool would.
#[derive(Clone)]
pub struct Pool(Arc<Vec<Channel>>);

impl Pool {
    pub async fn connect(addr: SocketAddr, count: usize) -> Self {
        Self(Arc::new(channels(addr, count).await))
    }

    /// The connection of caller `worker`.
    pub fn get(&self, worker: usize) -> Channel {
        self.0[worker % self.0.len()].clone()
    }
}

/// `count` connections to `addr`.
pub async fn channels(addr: SocketAddr, count: usize) -> Vec<Channel> {
    let mut channels = Vec::new();
    for _ in 0..count {
        channels.push(Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap());
    }
    channels
}
