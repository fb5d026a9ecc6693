//! Leader election: one leading lease per election name, with terms that only rise and an
//! ordered history that any number of observers follow.
//!
//! An election is a hash (the leader, its term and value) and a capped stream of changes in
//! Redis. Candidates wait like lock waiters: woken through the process's one pub/sub
//! listener when a leader resigns and by their own timer at the leader's expiry. Observers
//! of one name in one process share one [`hub`]: a task that reads the history after the
//! last change it saw whenever a change is announced (so every observer on every replica
//! sees the same changes in the same order, and a lost announcement delays but never drops
//! one), and that records a leader's expiry when its lease runs out.

pub mod grpc;
mod hub;
mod keys;

use std::future::Future;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::lock::{Lease, LocalQueues, leases, micros};
use crate::store::notify::Notifier;
use crate::store::{Arg, Fields, KeyBuilder, Outcome, Script, Store};
pub use hub::{Change, ChangeKind, Observation};

const PRELUDE: &str = include_str!("prelude.lua");
static CAMPAIGN: LazyLock<Script> =
    LazyLock::new(|| Script::new("election_campaign", &[PRELUDE, include_str!("campaign.lua")]));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new("election_renew", &[PRELUDE, include_str!("renew.lua")]));
static PROCLAIM: LazyLock<Script> =
    LazyLock::new(|| Script::new("election_proclaim", &[PRELUDE, include_str!("proclaim.lua")]));
static RESIGN: LazyLock<Script> =
    LazyLock::new(|| Script::new("election_resign", &[PRELUDE, include_str!("resign.lua")]));
static HELD: LazyLock<Script> = LazyLock::new(|| Script::new("election_held", &[PRELUDE, include_str!("held.lua")]));
static OBSERVE: LazyLock<Script> =
    LazyLock::new(|| Script::new("election_observe", &[PRELUDE, include_str!("observe.lua")]));

pub const MAX_VALUE_BYTES: usize = 4096;
/// A candidate re-checks at least this often, in case an announcement was lost.
const SAFETY_RECHECK: Duration = Duration::from_secs(1);
/// Changes read per history read; more wait for the next read.
const HISTORY_BATCH: u32 = 64;

/// Who leads an election, as anyone may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    pub name: String,
    pub value: Vec<u8>,
    pub term: u64,
    pub since_micros: u64,
    pub owner: String,
    pub expires_at_micros: u64,
}

/// A validated Campaign.
#[derive(Debug, Clone)]
pub struct CampaignParams {
    pub name: String,
    pub ttl: Duration,
    pub wait: Duration,
    pub value: Vec<u8>,
    pub owner: String,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    Elected {
        lease: Lease,
        leader: Leader,
    },
    /// The wait ended first; the leader then, if any.
    NotElected(Option<Leader>),
}

enum Attempt {
    Elected { lease: Lease, leader: Leader },
    Busy { leader: Leader, expires_in: Duration },
}

/// One read of an election: its leader and the changes after a given history entry.
pub(crate) struct Read {
    pub last_id: String,
    /// Changes after the given entry were trimmed before this read saw them.
    pub gap: bool,
    pub leader: Option<Leader>,
    /// How long the leader's lease has left, by Redis's clock.
    pub expires_in: Option<Duration>,
    pub now_micros: u64,
    pub changes: Vec<Change>,
}

#[derive(Clone)]
pub struct ElectionManager {
    store: Store,
    keys: KeyBuilder,
    notifier: Notifier,
    /// A name's state is forgotten this long after its last change (as a lock's fence).
    idle: Duration,
    local_queues: LocalQueues,
    hubs: hub::Hubs,
}

impl ElectionManager {
    pub fn new(store: Store, keys: KeyBuilder, notifier: Notifier, idle: Duration) -> Self {
        Self { store, keys, notifier, idle, local_queues: LocalQueues::default(), hubs: hub::Hubs::default() }
    }

    /// The same manager acting for another tenant namespace.
    pub fn scoped(&self, namespace: &Arc<str>) -> Self {
        Self { keys: KeyBuilder::new(namespace.clone()), ..self.clone() }
    }

    fn channel(&self, name: &str) -> String {
        keys::channel(&self.keys, name)
    }

    /// Runs an election script: ARGV[1] and ARGV[2] are the idle expiry and the channel.
    async fn run(&self, script: &Script, name: &str, args: &[Arg<'_>]) -> Result<Outcome, Error> {
        let channel = self.channel(name);
        let idle_ms = u64::try_from(self.idle.as_millis()).unwrap_or(u64::MAX);
        let mut all = Vec::with_capacity(args.len() + 2);
        all.push(Arg::from(idle_ms));
        all.push(Arg::from(&channel));
        all.extend_from_slice(args);
        Ok(self.store.eval(script, &keys::election_keys(&self.keys, name), &all).await?.outcome()?)
    }

    /// Waits until elected, `params.wait` passes, or this replica drains.
    pub async fn campaign(&self, params: &CampaignParams, draining: &CancellationToken) -> Result<Campaign, Error> {
        if draining.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let lease_id = crate::lock::new_lease_id();
        let deadline = Instant::now() + params.wait;
        let channel = self.channel(&params.name);
        let queue = self.local_queues.turn(&channel);
        let _turn = tokio::select! {
            turn = tokio::time::timeout_at(deadline, queue.lock()) => match turn {
                Ok(turn) => turn,
                Err(_) => return Ok(Campaign::NotElected(self.leader(&params.name).await?)),
            },
            () = draining.cancelled() => return Err(Error::ShuttingDown),
        };
        let wake = self.notifier.watch(&channel);
        loop {
            if draining.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (leader, expires_in) = match self.try_campaign(params, &lease_id).await? {
                Attempt::Elected { lease, leader } => {
                    metrics::counter!("baton_election_elected_total").increment(1);
                    crate::traces::record_outcome("elected");
                    return Ok(Campaign::Elected { lease, leader });
                }
                Attempt::Busy { leader, expires_in } => (leader, expires_in),
            };
            let now = Instant::now();
            if now >= deadline {
                crate::traces::record_outcome("not_elected");
                return Ok(Campaign::NotElected(Some(leader)));
            }
            let nap = (deadline - now).min(expires_in + Duration::from_millis(1)).min(SAFETY_RECHECK);
            if crate::lock::leases::nap(notified.as_mut(), nap, draining, "election").await {
                return Err(Error::ShuttingDown);
            }
        }
    }

    async fn try_campaign(&self, params: &CampaignParams, lease_id: &str) -> Result<Attempt, Error> {
        let args = [
            Arg::from(lease_id),
            micros(params.ttl).into(),
            Arg::from(&params.value),
            params.owner.as_str().into(),
            params.request_id.as_deref().unwrap_or("").into(),
        ];
        match self.run(&CAMPAIGN, &params.name, &args).await? {
            Outcome::Done(mut fields) => {
                let lease = Lease {
                    name: params.name.clone(),
                    lease_id: fields.string(0)?,
                    fencing_token: fields.uint(1)?,
                    expires_at_micros: fields.uint(2)?,
                    ttl: Duration::from_micros(fields.uint(3)?),
                };
                let leader = Leader {
                    name: params.name.clone(),
                    value: fields.take_bytes(5)?,
                    term: lease.fencing_token,
                    since_micros: fields.uint(4)?,
                    owner: fields.string(6)?,
                    expires_at_micros: lease.expires_at_micros,
                };
                Ok(Attempt::Elected { lease, leader })
            }
            Outcome::Refused { mut fields, .. } => {
                let leader = Leader {
                    name: params.name.clone(),
                    term: fields.uint(0)?,
                    value: fields.take_bytes(1)?,
                    owner: fields.string(2)?,
                    since_micros: fields.uint(3)?,
                    expires_at_micros: fields.uint(4)?,
                };
                Ok(Attempt::Busy { leader, expires_in: Duration::from_micros(fields.uint(5)?) })
            }
        }
    }

    /// Extends a leading lease; `ttl` zero keeps its current ttl.
    pub async fn renew(&self, name: &str, lease_id: &str, ttl: Duration) -> Result<Lease, Error> {
        let fields = self.leading(&RENEW, name, &[lease_id.into(), micros(ttl).into()]).await?;
        Ok(Lease {
            name: name.to_owned(),
            lease_id: lease_id.to_owned(),
            fencing_token: fields.uint(0)?,
            expires_at_micros: fields.uint(1)?,
            ttl: Duration::from_micros(fields.uint(2)?),
        })
    }

    /// Replaces the leader's value.
    pub async fn proclaim(&self, name: &str, lease_id: &str, value: &[u8]) -> Result<Leader, Error> {
        let fields = self.leading(&PROCLAIM, name, &[lease_id.into(), Arg::from(value)]).await?;
        Ok(Leader {
            name: name.to_owned(),
            value: value.to_vec(),
            term: fields.uint(0)?,
            since_micros: fields.uint(1)?,
            expires_at_micros: fields.uint(2)?,
            owner: fields.string(3)?,
        })
    }

    /// Runs a script that only a leading lease may run.
    async fn leading(&self, script: &Script, name: &str, args: &[Arg<'_>]) -> Result<Fields, Error> {
        match self.run(script, name, args).await? {
            Outcome::Done(fields) => Ok(fields),
            Outcome::Refused { .. } => Err(Error::LeaseNotHeld {
                name: name.to_owned(),
                why: "it no longer leads: it resigned, expired, or never led".into(),
            }),
        }
    }

    /// Gives leadership up; `false` when the lease no longer led.
    pub async fn resign(&self, name: &str, lease_id: &str) -> Result<bool, Error> {
        let resigned = self.leading(&RESIGN, name, &[lease_id.into()]).await?.int(0)? == 1;
        if resigned {
            metrics::counter!("baton_election_resigned_total").increment(1);
        }
        Ok(resigned)
    }

    /// Whether `lease_id` leads `name` right now, by Redis's clock.
    pub async fn is_held(&self, name: &str, lease_id: &str) -> Result<bool, Error> {
        Ok(self.leading(&HELD, name, &[lease_id.into()]).await?.int(0)? == 1)
    }

    /// Who leads now, if anyone.
    pub async fn leader(&self, name: &str) -> Result<Option<Leader>, Error> {
        Ok(self.read(name, None).await?.leader)
    }

    /// The leader, and the changes after history entry `after` (none when `None`).
    pub(crate) async fn read(&self, name: &str, after: Option<&str>) -> Result<Read, Error> {
        let args = [after.unwrap_or("").into(), HISTORY_BATCH.into()];
        let Outcome::Done(mut fields) = self.run(&OBSERVE, name, &args).await? else {
            return Err(Error::Internal("election_observe refused".into()));
        };
        let now = fields.uint(2)?;
        let leader = if fields.int(3)? == 1 {
            Some(Leader {
                name: name.to_owned(),
                term: fields.uint(4)?,
                value: fields.take_bytes(5)?,
                owner: fields.string(6)?,
                since_micros: fields.uint(7)?,
                expires_at_micros: fields.uint(8)?,
            })
        } else {
            None
        };
        let expires_in =
            leader.as_ref().map(|leader| Duration::from_micros(leader.expires_at_micros.saturating_sub(now)));
        let mut listed = fields.take_fields(9)?;
        let mut changes = Vec::with_capacity(listed.len() / 8);
        for i in (0..listed.len()).step_by(8) {
            let kind = ChangeKind::from_recorded(&listed.string(i + 1)?)?;
            let term = listed.uint(i + 2)?;
            let value = listed.take_bytes(i + 3)?;
            changes.push(Change {
                id: listed.string(i)?,
                kind,
                leader: Some(Leader {
                    name: name.to_owned(),
                    value,
                    term,
                    owner: listed.string(i + 4)?,
                    since_micros: listed.uint(i + 5)?,
                    expires_at_micros: listed.uint(i + 6)?,
                }),
                at_micros: listed.uint(i + 7)? * 1000,
            });
        }
        Ok(Read { last_id: fields.string(0)?, gap: fields.int(1)? == 1, leader, expires_in, now_micros: now, changes })
    }

    /// Follows `name`'s history from its current state on.
    pub async fn observe(&self, name: &str) -> Result<Observation, Error> {
        hub::observe(self, name).await
    }
}

impl leases::Leases for ElectionManager {
    const LOST_METRIC: &'static str = "baton_election_lost_total";
    const PATTERN: &'static str = "election";

    fn renew(&self, name: &str, lease_id: &str, ttl: Duration) -> impl Future<Output = Result<Lease, Error>> + Send {
        ElectionManager::renew(self, name, lease_id, ttl)
    }

    fn release(&self, name: &str, lease_id: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        self.resign(name, lease_id)
    }

    fn is_held(&self, name: &str, lease_id: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        ElectionManager::is_held(self, name, lease_id)
    }
}
