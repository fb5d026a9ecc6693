//! Fenced distributed locks and semaphores.
//!
//! A lock is a set of leases in Redis, each with a secret `lease_id`, an expiry on Redis's
//! clock and a fencing token from a per-name counter that only grows. Waiters are woken
//! through the process's one pub/sub listener ([`Notifier`]) when a lease is released, and
//! by their own timer when the soonest lease expires — never by blind polling, never with a
//! connection each. Within one process, waiters on a lock are served in arrival order.

pub mod grpc;
mod keys;
pub mod leases;

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::keys::Pattern;
use crate::store::notify::Notifier;
use crate::store::{Arg, Command, Fields, KeyBuilder, Outcome, Reply, Script, Store, StoreError};
use keys::LockKeys;

const PRELUDE: &str = include_str!("prelude.lua");
static ACQUIRE: LazyLock<Script> =
    LazyLock::new(|| Script::new("lock_acquire", &[PRELUDE, include_str!("acquire.lua")]));
static RENEW: LazyLock<Script> = LazyLock::new(|| Script::new("lock_renew", &[PRELUDE, include_str!("renew.lua")]));
static RELEASE: LazyLock<Script> =
    LazyLock::new(|| Script::new("lock_release", &[PRELUDE, include_str!("release.lua")]));
static DESCRIBE: LazyLock<Script> =
    LazyLock::new(|| Script::new("lock_describe", &[PRELUDE, include_str!("describe.lua")]));
static HELD: LazyLock<Script> = LazyLock::new(|| Script::new("lock_held", &[PRELUDE, include_str!("held.lua")]));

pub const MIN_TTL: Duration = Duration::from_millis(100);
pub const MAX_TTL: Duration = Duration::from_secs(3600);
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
pub const MAX_PERMITS: u32 = 10_000;
/// A waiter re-checks at least this often, in case a release notification was lost.
const SAFETY_RECHECK: Duration = Duration::from_secs(1);
/// How long a waiter's marker outlives its latest try: longer than any nap between tries
/// (at most [`SAFETY_RECHECK`]), so a release always sees a live waiter's marker.
const WAITER_MARKER_TTL: Duration = Duration::from_secs(2);
/// Lease ids are 128 bits from the OS CSPRNG, hex-encoded.
const LEASE_ID_BYTES: usize = 16;

/// A granted lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub name: String,
    pub lease_id: String,
    pub fencing_token: u64,
    /// Unix µs on Redis's clock.
    pub expires_at_micros: u64,
    pub ttl: Duration,
}

/// Someone else's lease, as shown to others (never its lease id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub owner: String,
    pub fencing_token: u64,
    pub expires_at_micros: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acquisition {
    Acquired(Lease),
    /// Not acquired; the lease expiring first.
    Busy(Holder),
}

/// A validated Acquire.
#[derive(Debug, Clone)]
pub struct AcquireParams {
    pub name: String,
    pub ttl: Duration,
    /// Zero: try once.
    pub wait: Duration,
    pub owner: String,
    /// 1 for a mutex.
    pub permits: u32,
    pub request_id: Option<String>,
}

/// Settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct LockSettings {
    /// A fencing counter idle this long is forgotten (and restarts from the clock).
    pub fence_idle: Duration,
    /// Replicas that must acknowledge a grant or renewal (`WAIT`); 0 = don't wait.
    pub min_replicas: u32,
}

enum TryOutcome {
    Acquired(Lease),
    Busy { holder: Holder, expires_in: Duration },
}

#[derive(Clone)]
pub struct LockManager {
    store: Store,
    keys: KeyBuilder,
    notifier: Notifier,
    settings: LockSettings,
    local_queues: LocalQueues,
}

impl LockManager {
    pub fn new(store: Store, keys: KeyBuilder, notifier: Notifier, settings: LockSettings) -> Self {
        Self { store, keys, notifier, settings, local_queues: LocalQueues::default() }
    }

    /// The same manager acting for another tenant namespace.
    pub fn scoped(&self, namespace: &std::sync::Arc<str>) -> Self {
        Self { keys: KeyBuilder::new(namespace.clone()), ..self.clone() }
    }

    /// Takes the lock, or one permit, waiting up to `params.wait`.
    /// Grants a lease, waiting up to `params.wait`. Once `draining` is cancelled (this
    /// replica is shutting down) it grants nothing more: a lease granted now could not be
    /// kept alive here, so the caller is told to go elsewhere. A script already sent is
    /// never abandoned, so no grant is ever made that the caller does not hear of.
    pub async fn acquire(&self, params: &AcquireParams, draining: &CancellationToken) -> Result<Acquisition, Error> {
        if draining.is_cancelled() {
            return Err(Error::ShuttingDown);
        }
        let started = Instant::now();
        let lease_id = new_lease_id();
        if params.wait.is_zero() {
            return match self.try_acquire(params, &lease_id, false).await? {
                TryOutcome::Acquired(lease) => Ok(self.granted(lease, started, false)),
                TryOutcome::Busy { holder, .. } => {
                    metrics::counter!("baton_lock_contended_total").increment(1);
                    crate::traces::record_outcome("busy");
                    Ok(Acquisition::Busy(holder))
                }
            };
        }

        // Waiters in this process line up first, so they are served in arrival order.
        let deadline = started + params.wait;
        let channel = self.keys.channel(Pattern::Lock, &params.name);
        let queue = self.local_queues.turn(&channel);
        let _turn = tokio::select! {
            turn = tokio::time::timeout_at(deadline, queue.lock()) => turn,
            () = draining.cancelled() => return Err(Error::ShuttingDown),
        };
        let mut contended = false;
        let wake = self.notifier.watch(&channel);
        loop {
            if draining.is_cancelled() {
                return Err(Error::ShuttingDown);
            }
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (holder, expires_in) = match self.try_acquire(params, &lease_id, true).await? {
                TryOutcome::Acquired(lease) => return Ok(self.granted(lease, started, contended)),
                TryOutcome::Busy { holder, expires_in } => (holder, expires_in),
            };
            if !contended {
                contended = true;
                metrics::counter!("baton_lock_contended_total").increment(1);
            }
            let now = Instant::now();
            if now >= deadline {
                crate::traces::record_outcome("busy");
                return Ok(Acquisition::Busy(holder));
            }
            // Woken by a release, by the soonest lease's expiry, or by the safety re-check.
            let nap = (deadline - now).min(expires_in + Duration::from_millis(1)).min(SAFETY_RECHECK);
            if leases::nap(notified.as_mut(), nap, draining, "lock").await {
                return Err(Error::ShuttingDown);
            }
        }
    }

    fn granted(&self, lease: Lease, started: Instant, waited: bool) -> Acquisition {
        metrics::counter!("baton_lock_acquired_total").increment(1);
        crate::traces::record_outcome(if waited { "waited" } else { "acquired" });
        metrics::histogram!("baton_lock_wait_seconds").record(started.elapsed().as_secs_f64());
        Acquisition::Acquired(lease)
    }

    /// One attempt; a `waiting` caller that finds the lock busy leaves its marker, so the
    /// release announces itself.
    async fn try_acquire(&self, params: &AcquireParams, lease_id: &str, waiting: bool) -> Result<TryOutcome, Error> {
        let keys = LockKeys::new(&self.keys, &params.name).with_waiters();
        let marker_ms = if waiting { WAITER_MARKER_TTL.as_millis() as u64 } else { 0 };
        let args = [
            Arg::from(lease_id),
            micros(params.ttl).into(),
            params.permits.into(),
            params.owner.as_str().into(),
            (self.settings.fence_idle.as_millis() as u64).into(),
            params.request_id.as_deref().unwrap_or("").into(),
            marker_ms.into(),
        ];
        match self.run_replicated(&ACQUIRE, &keys, &args, &params.name).await?.outcome()? {
            Outcome::Done(fields) => Ok(TryOutcome::Acquired(Lease {
                name: params.name.clone(),
                lease_id: fields.string(0)?,
                fencing_token: fields.uint(1)?,
                expires_at_micros: fields.uint(2)?,
                ttl: Duration::from_micros(fields.uint(3)?),
            })),
            Outcome::Refused { fields, .. } => Ok(TryOutcome::Busy {
                holder: Holder {
                    owner: fields.string(0)?,
                    fencing_token: fields.uint(1)?,
                    expires_at_micros: fields.uint(2)?,
                },
                expires_in: Duration::from_micros(fields.uint(3)?),
            }),
        }
    }

    /// Extends a held lease; `ttl` zero keeps its current ttl.
    pub async fn renew(&self, name: &str, lease_id: &str, ttl: Duration) -> Result<Lease, Error> {
        let keys = LockKeys::new(&self.keys, name);
        let args = [Arg::from(lease_id), micros(ttl).into()];
        let fields = match self.run_replicated(&RENEW, keys.common(), &args, name).await?.outcome()? {
            Outcome::Done(fields) => fields,
            Outcome::Refused { .. } => {
                metrics::counter!("baton_lock_renew_failed_total").increment(1);
                return Err(Error::LeaseNotHeld {
                    name: name.to_owned(),
                    why: "it expired, was released, or never existed".into(),
                });
            }
        };
        Ok(Lease {
            name: name.to_owned(),
            lease_id: lease_id.to_owned(),
            fencing_token: fields.uint(0)?,
            expires_at_micros: fields.uint(1)?,
            ttl: Duration::from_micros(fields.uint(2)?),
        })
    }

    /// Releases a lease if it is still held; a lease that is gone is `false`, not an error.
    pub async fn release(&self, name: &str, lease_id: &str) -> Result<bool, Error> {
        let channel = self.keys.channel(Pattern::Lock, name);
        let keys = LockKeys::new(&self.keys, name).with_waiters();
        let released = self.store.eval(&RELEASE, &keys, &[lease_id.into(), (&channel).into()]).await?.done()?.int(0)?;
        if released == 1 {
            metrics::counter!("baton_lock_released_total").increment(1);
        }
        Ok(released == 1)
    }

    /// Whether `lease_id` holds `name` right now, by Redis's clock.
    pub async fn is_held(&self, name: &str, lease_id: &str) -> Result<bool, Error> {
        let keys = LockKeys::new(&self.keys, name);
        Ok(self.store.eval(&HELD, keys.common(), &[lease_id.into()]).await?.done()?.int(0)? == 1)
    }

    /// The live leases, soonest expiry first.
    /// Whether some Acquire is waiting for `name` (its waiters' marker is present).
    pub async fn has_waiters(&self, name: &str) -> Result<bool, Error> {
        let keys = LockKeys::new(&self.keys, name);
        let exists = Command::new("EXISTS").arg(keys.waiters_marker());
        Ok(self.store.command::<i64>("lock_waiters", &exists).await? == 1)
    }

    pub async fn describe(&self, name: &str) -> Result<Vec<Holder>, Error> {
        let keys = LockKeys::new(&self.keys, name);
        let fields: Fields = self.store.eval(&DESCRIBE, keys.common(), &[]).await?.done()?;
        (0..fields.len() / 3)
            .map(|i| {
                Ok(Holder {
                    owner: fields.string(i * 3)?,
                    fencing_token: fields.uint(i * 3 + 1)?,
                    expires_at_micros: fields.uint(i * 3 + 2)?,
                })
            })
            .collect()
    }

    /// Runs a granting script; with `--lock-min-replicas`, on a dedicated connection
    /// followed by `WAIT`, undoing the grant when too few replicas acknowledged it.
    /// `args[0]` is the lease id, as in both granting scripts.
    async fn run_replicated(
        &self,
        script: &Script,
        keys: &[String],
        args: &[Arg<'_>],
        name: &str,
    ) -> Result<Reply, Error> {
        if self.settings.min_replicas == 0 {
            return Ok(self.store.eval(script, keys, args).await?);
        }
        let (reply, acknowledged) = self.store.eval_replicated(script, keys, args, self.settings.min_replicas).await?;
        if acknowledged >= self.settings.min_replicas {
            return Ok(reply);
        }
        tracing::warn!(
            lock.name = %name,
            replicas.acknowledged = acknowledged,
            replicas.required = self.settings.min_replicas,
            "grant not replicated in time; undoing it"
        );
        if let (Outcome::Done(_), Some(Arg::Bytes(lease_id))) = (reply.outcome()?, args.first()) {
            // An undone renewal loses the lease: safer than a lease that a failover could
            // silently revoke.
            self.release(name, &String::from_utf8_lossy(lease_id)).await?;
        }
        Err(StoreError::Unavailable(format!("{acknowledged} of {} replicas acknowledged", self.settings.min_replicas))
            .into())
    }
}

impl leases::Leases for LockManager {
    const LOST_METRIC: &'static str = "baton_lock_lost_total";
    const PATTERN: &'static str = "lock";

    fn renew(&self, name: &str, lease_id: &str, ttl: Duration) -> impl Future<Output = Result<Lease, Error>> + Send {
        LockManager::renew(self, name, lease_id, ttl)
    }

    fn release(&self, name: &str, lease_id: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        LockManager::release(self, name, lease_id)
    }

    fn is_held(&self, name: &str, lease_id: &str) -> impl Future<Output = Result<bool, Error>> + Send {
        LockManager::is_held(self, name, lease_id)
    }
}

/// One FIFO queue per name with waiters in this process (lock acquirers, election
/// candidates); only its head talks to Redis, so waiters here are served in arrival order.
#[derive(Clone, Default)]
pub(crate) struct LocalQueues(Arc<Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>>);

impl LocalQueues {
    /// The queue of `channel` (which carries the namespace, so tenants never share one).
    pub(crate) fn turn(&self, channel: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut queues = self.0.lock().expect("queues lock");
        if let Some(queue) = queues.get(channel).and_then(Weak::upgrade) {
            return queue;
        }
        queues.retain(|_, queue| queue.strong_count() > 0);
        let queue = Arc::new(tokio::sync::Mutex::new(()));
        queues.insert(channel.to_owned(), Arc::downgrade(&queue));
        queue
    }
}

pub(crate) fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// A fresh lease id: 128 bits from the OS CSPRNG.
pub fn new_lease_id() -> String {
    crate::secret::random_hex(LEASE_ID_BYTES)
}

/// Whether `lease_id` has the form Baton hands out.
pub fn is_well_formed_lease_id(lease_id: &str) -> bool {
    crate::secret::is_hex(lease_id, LEASE_ID_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_are_128_random_bits() {
        let (a, b) = (new_lease_id(), new_lease_id());
        assert_ne!(a, b);
        assert!(is_well_formed_lease_id(&a));
        assert!(!is_well_formed_lease_id("not-a-lease"));
        assert!(!is_well_formed_lease_id(&a.to_uppercase()));
    }
}
