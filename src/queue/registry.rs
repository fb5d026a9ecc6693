//! The queues of a namespace, for the dashboard: Redis has no cheap way to list them (a
//! SCAN walks the whole keyspace), so enqueuing names its queue in the namespace's set
//! `baton:<namespace>:queues`. Each process adds a queue at most once a minute, so a busy
//! queue costs one SADD a minute, not one per job; the dashboard drops a queue from the set
//! once nothing of it is left in Redis, and the next enqueue after that minute adds it back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a process trusts that a queue it added is still in the set.
const RENOTE_AFTER: Duration = Duration::from_secs(60);
/// Entries a process remembers; past this it forgets them all (one SADD each again) rather
/// than grow with every queue name callers make up.
const MAX_REMEMBERED: usize = 10_000;

#[derive(Debug, Default)]
pub(super) struct Registry {
    noted: Mutex<HashMap<(Arc<str>, String), Instant>>,
}

impl Registry {
    /// Whether `queue` of `namespace` should be added to the set now (and notes it added).
    pub(super) fn needs_noting(&self, namespace: &Arc<str>, queue: &str) -> bool {
        let now = Instant::now();
        let mut noted = self.noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (namespace.clone(), queue.to_owned());
        if noted.get(&key).is_some_and(|at| now.duration_since(*at) < RENOTE_AFTER) {
            return false;
        }
        if noted.len() >= MAX_REMEMBERED {
            noted.clear();
        }
        noted.insert(key, now);
        true
    }

    /// Forgets `queue`, so its next enqueue adds it again (after the dashboard dropped it).
    pub(super) fn forget(&self, namespace: &Arc<str>, queue: &str) {
        let mut noted = self.noted.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        noted.remove(&(namespace.clone(), queue.to_owned()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notes_a_queue_once_until_forgotten_and_stays_bounded() {
        let registry = Registry::default();
        let namespace: Arc<str> = Arc::from("default");
        assert!(registry.needs_noting(&namespace, "emails"));
        assert!(!registry.needs_noting(&namespace, "emails"));
        assert!(registry.needs_noting(&Arc::from("acme"), "emails"), "namespaces are apart");
        registry.forget(&namespace, "emails");
        assert!(registry.needs_noting(&namespace, "emails"));
        for n in 0..MAX_REMEMBERED * 2 {
            registry.needs_noting(&namespace, &format!("q{n}"));
        }
        assert!(registry.noted.lock().unwrap().len() <= MAX_REMEMBERED);
    }
}
