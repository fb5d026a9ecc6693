//! A private redis-server (`testkit::RedisServer`) with the direct connections tests use
//! to inspect what Baton wrote and published.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use testkit::RedisServer;

/// A private redis-server: kill, freeze, restart and inspect it.
pub struct Redis(RedisServer);

impl Redis {
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// With `extra` redis-server arguments (`--appendonly yes`, `--replicaof …`).
    pub fn start_with(extra: &[&str]) -> Self {
        Self(RedisServer::start(extra))
    }

    /// A direct connection for inspecting what Baton wrote.
    pub fn connection(&self) -> redis::Connection {
        redis::Client::open(self.url()).unwrap().get_connection_with_timeout(Duration::from_secs(2)).unwrap()
    }

    pub fn dbsize(&self) -> i64 {
        redis::cmd("DBSIZE").query(&mut self.connection()).unwrap()
    }

    pub fn keys(&self) -> Vec<String> {
        redis::cmd("KEYS").arg("*").query(&mut self.connection()).unwrap()
    }

    /// Asserts that every key expires, within `most`: what a counter's window allows.
    pub fn assert_every_key_expires_within(&self, most: Duration) {
        let mut connection = self.connection();
        let keys = self.keys();
        assert!(!keys.is_empty(), "no keys to look at");
        for key in keys {
            let ttl: i64 = redis::cmd("PTTL").arg(&key).query(&mut connection).unwrap();
            assert!(ttl > 0 && ttl as u128 <= most.as_millis(), "{key}: PTTL {ttl} ms, want (0, {most:?}]");
        }
    }

    /// Records every message published on Baton's channels from now on.
    pub fn record_published(&self) -> Published {
        let mut connection = self.connection();
        connection.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let (messages, stop) = (Arc::new(Mutex::new(Vec::new())), Arc::new(AtomicBool::new(false)));
        let (ready, subscribed) = mpsc::channel();
        let (record, stopped) = (messages.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut pubsub = connection.as_pubsub();
            pubsub.psubscribe("baton:*").unwrap();
            ready.send(()).unwrap();
            while !stopped.load(Ordering::Relaxed) {
                if let Ok(message) = pubsub.get_message() {
                    let payload: String = message.get_payload().unwrap_or_default();
                    record.lock().unwrap().push((message.get_channel_name().to_owned(), payload));
                }
            }
        });
        subscribed.recv_timeout(Duration::from_secs(5)).expect("psubscribe");
        Published { messages, stop }
    }
}

impl Deref for Redis {
    type Target = RedisServer;

    fn deref(&self) -> &RedisServer {
        &self.0
    }
}

impl DerefMut for Redis {
    fn deref_mut(&mut self) -> &mut RedisServer {
        &mut self.0
    }
}

/// Messages published on Baton's channels: (channel, payload).
pub struct Published {
    messages: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
}

impl Published {
    /// The payloads of messages on channels for which `channel` holds, so far.
    pub fn on(&self, channel: impl Fn(&str) -> bool) -> Vec<String> {
        let messages = self.messages.lock().unwrap();
        messages.iter().filter(|(name, _)| channel(name)).map(|(_, payload)| payload.clone()).collect()
    }
}

impl Drop for Published {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}
