//! One pub/sub connection per Redis instance, fanned out to every in-process waiter: ten
//! thousand waiting clients cost one Redis connection, not ten thousand.
//!
//! Messages can be lost (the connection drops, Redis restarts): after every (re)connect
//! all waiters are woken to re-check, and waiters also re-check on their own slow safety
//! interval, so a lost message delays a waiter but never strands it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Notify;

use crate::store::Store;
use crate::task::TaskGuard;

/// Every Baton notification channel starts with this; see [`crate::store::keys`].
const CHANNEL_PATTERN: &str = "baton:*";
const RECONNECT_DELAY: Duration = Duration::from_millis(250);
/// Above this many registered channels, forget the ones nobody waits on any more.
const PRUNE_ABOVE: usize = 1024;

#[derive(Default)]
struct Waiters {
    by_channel: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Waiters {
    fn wake(&self, channel: &str) {
        let mut map = self.by_channel.lock().expect("waiters lock");
        match map.get(channel).and_then(Weak::upgrade) {
            Some(notify) => notify.notify_waiters(),
            None => {
                map.remove(channel);
            }
        }
    }

    fn wake_all(&self) {
        let map = self.by_channel.lock().expect("waiters lock");
        for notify in map.values().filter_map(Weak::upgrade) {
            notify.notify_waiters();
        }
    }
}

/// Wakes in-process waiters when a script PUBLISHes on their channel.
#[derive(Clone)]
pub struct Notifier {
    waiters: Arc<Waiters>,
    _listener: Arc<TaskGuard>,
}

impl Notifier {
    /// Subscribes (and keeps re-subscribing) to every Baton channel on `store`'s Redis.
    pub fn start(store: Store) -> Self {
        let waiters = Arc::new(Waiters::default());
        let listener = TaskGuard::spawn(listen(store, waiters.clone()));
        Self { waiters, _listener: Arc::new(listener) }
    }

    /// The wake-up for `channel`, shared by every waiter on it in this process. Call
    /// `notified()` (and `enable()` it) *before* checking state, so a message between the
    /// check and the wait is not missed.
    pub fn watch(&self, channel: &str) -> Arc<Notify> {
        let mut map = self.waiters.by_channel.lock().expect("waiters lock");
        if let Some(notify) = map.get(channel).and_then(Weak::upgrade) {
            return notify;
        }
        if map.len() > PRUNE_ABOVE {
            map.retain(|_, notify| notify.strong_count() > 0);
        }
        let notify = Arc::new(Notify::new());
        map.insert(channel.to_owned(), Arc::downgrade(&notify));
        notify
    }
}

async fn listen(store: Store, waiters: Arc<Waiters>) {
    let mut master_changes = store.master_changes();
    loop {
        match store.pubsub().await {
            Ok(mut pubsub) => match pubsub.psubscribe(CHANNEL_PATTERN).await {
                Ok(()) => {
                    tracing::debug!(redis.instance = store.name(), "notification listener subscribed");
                    if let Some(changes) = &mut master_changes {
                        changes.mark_unchanged();
                    }
                    // Whatever was published while we were away is lost: everyone re-checks.
                    waiters.wake_all();
                    let mut messages = pubsub.on_message();
                    loop {
                        tokio::select! {
                            message = messages.next() => match message {
                                Some(message) => waiters.wake(message.get_channel_name()),
                                None => break,
                            },
                            // Under Sentinel, a new master: move the subscription there.
                            Ok(()) = master_changed(&mut master_changes) => break,
                        }
                    }
                    tracing::debug!(redis.instance = store.name(), "notification listener disconnected");
                }
                Err(err) => tracing::debug!(error = %err, "psubscribe failed"),
            },
            Err(err) => tracing::debug!(error = %err, "notification listener cannot connect"),
        }
        waiters.wake_all();
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

/// Resolves when the followed master changes; never without Sentinel.
async fn master_changed(changes: &mut Option<tokio::sync::watch::Receiver<u64>>) -> Result<(), ()> {
    match changes {
        Some(changes) => changes.changed().await.map_err(drop),
        None => std::future::pending().await,
    }
}
