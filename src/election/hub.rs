//! One follower per observed election per process, fanning its history out to every local
//! observer: a thousand observers cost one task and one Redis read per change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::broadcast;

use super::{ElectionManager, HISTORY_BATCH, Leader, Read, SAFETY_RECHECK};
use crate::error::Error;
use crate::task::TaskGuard;

/// Changes an observer may fall behind by before it is sent the current state instead.
const OBSERVER_BACKLOG: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeKind {
    /// Not a change: the state an observer starts from (or restarts from after lagging).
    Current,
    Elected,
    Proclaimed,
    Resigned,
    Expired,
}

impl ChangeKind {
    pub(super) fn from_recorded(kind: &str) -> Result<Self, Error> {
        match kind {
            "elected" => Ok(Self::Elected),
            "proclaimed" => Ok(Self::Proclaimed),
            "resigned" => Ok(Self::Resigned),
            "expired" => Ok(Self::Expired),
            other => Err(Error::Internal(format!("unknown election change {other:?}"))),
        }
    }
}

/// One entry of an election's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The history entry's id ("" for [`ChangeKind::Current`]).
    pub id: String,
    pub kind: ChangeKind,
    /// The leadership after the change; for a resignation or expiry, the one that ended.
    pub leader: Option<Leader>,
    /// Unix µs on Redis's clock (ms precision for recorded changes).
    pub at_micros: u64,
}

/// What a new observer starts from, kept in step with the changes sent.
struct Position {
    leader: Option<Leader>,
    /// The newest history entry applied.
    last_id: String,
    at_micros: u64,
}

struct Shared {
    position: Mutex<Position>,
    /// Sent while `position` is locked, so a subscriber that reads the position under the
    /// same lock misses nothing and sees nothing twice.
    changes: broadcast::Sender<Arc<Change>>,
}

impl Shared {
    fn current(&self, position: &Position) -> Arc<Change> {
        Arc::new(Change {
            id: String::new(),
            kind: ChangeKind::Current,
            leader: position.leader.clone(),
            at_micros: position.at_micros,
        })
    }

    /// Applies a read; returns whether more changes wait to be read.
    fn apply(&self, read: Read) -> bool {
        let mut position = self.position.lock().expect("position lock");
        position.at_micros = read.now_micros;
        if read.gap {
            position.leader = read.leader;
            position.last_id = read.last_id;
            let _ = self.changes.send(self.current(&position));
            return false;
        }
        let more = read.changes.len() >= HISTORY_BATCH as usize;
        for change in read.changes {
            position.leader = match change.kind {
                ChangeKind::Elected | ChangeKind::Proclaimed => change.leader.clone(),
                ChangeKind::Current | ChangeKind::Resigned | ChangeKind::Expired => None,
            };
            position.last_id.clone_from(&change.id);
            let _ = self.changes.send(Arc::new(change));
        }
        if position.last_id == read.last_id {
            // Caught up: the read's leader is this position's, with its latest expiry.
            position.leader = read.leader;
        }
        more
    }
}

struct Hub {
    shared: Arc<Shared>,
    _follower: TaskGuard,
}

/// The hubs of one process, by channel (which carries the namespace).
#[derive(Clone, Default)]
pub(crate) struct Hubs(Arc<Mutex<HashMap<String, Weak<Hub>>>>);

/// One observer's view of an election: its current state, then every change in order.
pub struct Observation {
    hub: Arc<Hub>,
    first: Option<Arc<Change>>,
    changes: broadcast::Receiver<Arc<Change>>,
}

impl Observation {
    fn subscribe(hub: Arc<Hub>) -> Self {
        let (first, changes) = {
            let position = hub.shared.position.lock().expect("position lock");
            (hub.shared.current(&position), hub.shared.changes.subscribe())
        };
        Self { hub, first: Some(first), changes }
    }

    /// The next change; after falling more than the backlog behind, the current state.
    pub async fn next(&mut self) -> Arc<Change> {
        if let Some(first) = self.first.take() {
            return first;
        }
        loop {
            match self.changes.recv().await {
                Ok(change) => return change,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    metrics::counter!("baton_election_observer_lagged_total").increment(1);
                    tracing::debug!(missed, "election observer fell behind; sending the current state");
                    let position = self.hub.shared.position.lock().expect("position lock");
                    self.changes = self.hub.shared.changes.subscribe();
                    return self.hub.shared.current(&position);
                }
                // The hub lives as long as this observation holds it: never closed.
                Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
            }
        }
    }
}

/// Joins the hub of `name`, starting one (from a fresh read) when this process has none.
pub(super) async fn observe(manager: &ElectionManager, name: &str) -> Result<Observation, Error> {
    let channel = manager.channel(name);
    if let Some(hub) = manager.hubs.get(&channel) {
        return Ok(Observation::subscribe(hub));
    }
    let read = manager.read(name, None).await?;
    let mut hubs = manager.hubs.0.lock().expect("hubs lock");
    if let Some(hub) = hubs.get(&channel).and_then(Weak::upgrade) {
        return Ok(Observation::subscribe(hub));
    }
    let shared = Arc::new(Shared {
        position: Mutex::new(Position {
            leader: read.leader,
            last_id: read.last_id.clone(),
            at_micros: read.now_micros,
        }),
        changes: broadcast::channel(OBSERVER_BACKLOG).0,
    });
    let follower = TaskGuard::spawn(follow(manager.clone(), name.to_owned(), shared.clone(), read.last_id));
    let hub = Arc::new(Hub { shared, _follower: follower });
    hubs.retain(|_, hub| hub.strong_count() > 0);
    hubs.insert(channel, Arc::downgrade(&hub));
    Ok(Observation::subscribe(hub))
}

impl Hubs {
    fn get(&self, channel: &str) -> Option<Arc<Hub>> {
        self.0.lock().expect("hubs lock").get(channel).and_then(Weak::upgrade)
    }
}

/// Reads the history after the last change seen whenever a change is announced, when the
/// leader's lease runs out (the read records the expiry), and on a slow safety interval.
async fn follow(manager: ElectionManager, name: String, shared: Arc<Shared>, mut after: String) {
    let mut expires_in;
    let wake = manager.notifier.watch(&manager.channel(&name));
    loop {
        let notified = wake.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        loop {
            match manager.read(&name, Some(&after)).await {
                Ok(read) => {
                    expires_in = read.expires_in;
                    let more = shared.apply(read);
                    after = shared.position.lock().expect("position lock").last_id.clone();
                    if !more {
                        break;
                    }
                }
                Err(err) => {
                    // Redis is away: try again on the next wake-up or safety interval.
                    tracing::debug!(election.name = %name, error = %err, "cannot read the election's history");
                    expires_in = None;
                    break;
                }
            }
        }
        let nap = expires_in.map_or(SAFETY_RECHECK, |left| (left + Duration::from_millis(1)).min(SAFETY_RECHECK));
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep(nap) => {}
        }
    }
}
