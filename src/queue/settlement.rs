//! Settlements that never leave the process: an Ack or Nack through the replica that holds
//! the lease's Consume stream tells that stream directly.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// Where an Ack or Nack through this process tells a Consume stream of this process that
/// one of its leases is settled: no PUBLISH, no pub/sub round trip, and no re-reading of the
/// stream's leases from Redis. Settlements through other replicas still go over pub/sub.
#[derive(Default)]
pub struct SettledInbox {
    tokens: Mutex<Vec<String>>,
    wake: Notify,
}

impl SettledInbox {
    pub(super) fn settle(&self, token: &str) {
        self.tokens.lock().expect("inbox lock").push(token.to_owned());
        // A stored permit: a settlement while the stream is busy still wakes it afterwards.
        self.wake.notify_one();
    }

    /// Resolves once a settlement arrived since the last call.
    pub async fn settled(&self) {
        self.wake.notified().await;
    }

    /// The tokens settled since the last drain.
    pub fn drain(&self) -> HashSet<String> {
        self.tokens.lock().expect("inbox lock").drain(..).collect()
    }
}

/// This process's Consume streams, by their channel.
#[derive(Default)]
pub(super) struct LocalStreams {
    by_channel: Mutex<HashMap<String, Arc<SettledInbox>>>,
}

impl LocalStreams {
    pub(super) fn get(&self, channel: &str) -> Option<Arc<SettledInbox>> {
        self.by_channel.lock().expect("streams lock").get(channel).cloned()
    }

    /// Registers the stream that announces settlements on `channel`.
    pub(super) fn register(self: &Arc<Self>, channel: String) -> LocalStream {
        let inbox = Arc::new(SettledInbox::default());
        self.by_channel.lock().expect("streams lock").insert(channel.clone(), inbox.clone());
        LocalStream { streams: self.clone(), channel, inbox }
    }
}

/// A Consume stream's place in [`LocalStreams`], given up when the stream ends.
pub struct LocalStream {
    streams: Arc<LocalStreams>,
    channel: String,
    pub inbox: Arc<SettledInbox>,
}

impl Drop for LocalStream {
    fn drop(&mut self) {
        self.streams.by_channel.lock().expect("streams lock").remove(&self.channel);
    }
}
