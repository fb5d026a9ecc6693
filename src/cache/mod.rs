//! A versioned cache with compare-and-set, tags, batches and stampede-proof Fetch/Fill.
//!
//! Each entry is one hash written by Lua scripts (see `prelude.lua`). Tags live in other
//! Cluster slots, so they are generation stamps: a write records each tag's generation,
//! `InvalidateTag` bumps the generation (O(1), however many entries carry it), and a read
//! compares the recorded stamps with the current ones. `Fetch` hands one caller across all
//! replicas a fill token; the rest wait on the process's notification path for the `Fill`.

pub mod grpc;
mod keys;

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;
use std::time::Duration;

use futures::future::join_all;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::store::notify::Notifier;
use crate::store::{Arg, Command, Fields, KeyBuilder, Outcome, Script, Store};
use keys::CacheKeys;

const PRELUDE: &str = include_str!("prelude.lua");
static GET: LazyLock<Script> = LazyLock::new(|| Script::new("cache_get", &[PRELUDE, include_str!("get.lua")]));
static SET: LazyLock<Script> = LazyLock::new(|| Script::new("cache_set", &[PRELUDE, include_str!("set.lua")]));
static DELETE: LazyLock<Script> = LazyLock::new(|| Script::new("cache_delete", &[PRELUDE, include_str!("delete.lua")]));
static FETCH: LazyLock<Script> = LazyLock::new(|| Script::new("cache_fetch", &[PRELUDE, include_str!("fetch.lua")]));
static FILL: LazyLock<Script> = LazyLock::new(|| Script::new("cache_fill", &[PRELUDE, include_str!("fill.lua")]));
static INVALIDATE_TAG: LazyLock<Script> =
    LazyLock::new(|| Script::new("cache_invalidate_tag", &[include_str!("invalidate_tag.lua")]));

/// A waiter re-checks at least this often, in case a notification was lost.
const SAFETY_RECHECK: Duration = Duration::from_secs(1);
const TOKEN_BYTES: usize = 16;

/// A cache entry as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub value: Vec<u8>,
    pub version: u64,
    pub expires_at_micros: u64,
    /// Past its ttl, served within its stale_ttl.
    pub stale: bool,
}

/// What a write stored: the entry is the written value at this version and expiry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub version: u64,
    pub expires_at_micros: u64,
}

impl Stored {
    /// The entry, given the value that was written (which never travels back from Redis).
    pub fn entry(self, value: Vec<u8>) -> Entry {
        Entry { value, version: self.version, expires_at_micros: self.expires_at_micros, stale: false }
    }

    fn decode(fields: &Fields, at: usize) -> Result<Self, Error> {
        Ok(Self { version: fields.uint(at)?, expires_at_micros: fields.uint(at + 1)? })
    }
}

/// A validated write.
#[derive(Debug, Clone)]
pub struct Write {
    pub key: String,
    pub value: Vec<u8>,
    pub ttl: Duration,
    pub stale_ttl: Duration,
    pub tags: Vec<String>,
    pub if_version: u64,
    pub if_absent: bool,
}

/// Why a conditional write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteRefused {
    VersionMismatch,
    AlreadyExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchOutcome {
    Hit(Entry),
    /// A stale entry; the token, if any, makes this caller the one refresher.
    Stale(Entry, Option<String>),
    /// A miss: this caller must load the value and Fill it.
    Fill(String),
    /// A miss whose fill did not land within the wait.
    TimedOut,
}

/// Tag stamps as stored in an entry.
fn encode_tags(stamps: &[(String, u64)]) -> Vec<u8> {
    let mut encoded = Vec::new();
    for (index, (tag, generation)) in stamps.iter().enumerate() {
        if index > 0 {
            encoded.push(0);
        }
        encoded.extend_from_slice(tag.as_bytes());
        encoded.push(0);
        encoded.extend_from_slice(generation.to_string().as_bytes());
    }
    encoded
}

fn decode_tags(encoded: &[u8]) -> Vec<(String, u64)> {
    let mut parts = encoded.split(|byte| *byte == 0);
    let mut stamps = Vec::new();
    while let (Some(tag), Some(generation)) = (parts.next(), parts.next()) {
        let generation = std::str::from_utf8(generation).ok().and_then(|g| g.parse().ok()).unwrap_or(0);
        stamps.push((String::from_utf8_lossy(tag).into_owned(), generation));
    }
    stamps
}

fn stamped_tags(stamps: &[(String, u64)]) -> HashSet<String> {
    stamps.iter().map(|(tag, _)| tag.clone()).collect()
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

fn new_token() -> String {
    crate::secret::random_hex(TOKEN_BYTES)
}

/// An entry read by a script, with its tag stamps not yet checked.
struct RawEntry {
    entry: Entry,
    stamps: Vec<(String, u64)>,
}

/// An entry's fields from position `at` of a script's reply: value, version, expiry, tags.
fn decode_entry(fields: &mut Fields, at: usize, stale: bool) -> Result<RawEntry, Error> {
    Ok(RawEntry {
        entry: Entry {
            value: fields.take_bytes(at)?,
            version: fields.uint(at + 1)?,
            expires_at_micros: fields.uint(at + 2)?,
            stale,
        },
        stamps: decode_tags(&fields.take_bytes(at + 3)?),
    })
}

#[derive(Clone)]
pub struct CacheManager {
    store: Store,
    keys: KeyBuilder,
    notifier: Notifier,
    /// Tag generations outlive every entry stamped with them.
    tag_ttl: Duration,
}

impl CacheManager {
    pub fn new(store: Store, keys: KeyBuilder, notifier: Notifier, max_ttl: Duration) -> Self {
        Self { store, keys, notifier, tag_ttl: max_ttl * 3 }
    }

    /// The same manager acting for another tenant namespace.
    pub fn scoped(&self, namespace: &std::sync::Arc<str>) -> Self {
        Self { keys: KeyBuilder::new(namespace.clone()), ..self.clone() }
    }

    fn entry_key(&self, key: &str) -> String {
        CacheKeys(&self.keys).entry(key)
    }

    fn tag_key(&self, tag: &str) -> String {
        CacheKeys(&self.keys).tag(tag)
    }

    fn channel(&self, key: &str) -> String {
        CacheKeys(&self.keys).channel(key)
    }

    /// Current generations of `tags` (0 for a tag never invalidated), one MGET.
    async fn generations(&self, tags: HashSet<String>) -> Result<HashMap<String, u64>, Error> {
        let tags: Vec<String> = tags.into_iter().collect();
        if tags.is_empty() {
            return Ok(HashMap::new());
        }
        let tag_keys: Vec<String> = tags.iter().map(|tag| self.tag_key(tag)).collect();
        let mget = Command::new("MGET").args(&tag_keys);
        let values: Vec<Option<u64>> = self.store.command("cache_tag_generations", &mget).await?;
        Ok(tags.into_iter().zip(values.into_iter().map(Option::unwrap_or_default)).collect())
    }

    fn stamps_current(stamps: &[(String, u64)], generations: &HashMap<String, u64>) -> bool {
        stamps.iter().all(|(tag, generation)| generations.get(tag).copied().unwrap_or(0) == *generation)
    }

    /// Keeps the entries whose tags were not invalidated since they were written.
    async fn check_tags(&self, raw: Vec<Option<RawEntry>>) -> Result<Vec<Option<RawEntry>>, Error> {
        let tags = raw.iter().flatten().flat_map(|r| r.stamps.iter().map(|(tag, _)| tag.clone())).collect();
        let generations = self.generations(tags).await?;
        let mut checked = Vec::with_capacity(raw.len());
        for item in raw {
            checked.push(item.filter(|r| Self::stamps_current(&r.stamps, &generations)));
        }
        Ok(checked)
    }

    async fn read_raw(&self, key: &str) -> Result<Option<RawEntry>, Error> {
        let mut fields = self.store.eval(&GET, &[self.entry_key(key)], &[]).await?.done()?;
        if fields.int(0)? != 1 {
            return Ok(None);
        }
        Ok(Some(decode_entry(&mut fields, 1, false)?))
    }

    pub async fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        let raw = self.read_raw(key).await?;
        let entry = self.check_tags(vec![raw]).await?.pop().flatten().map(|r| r.entry);
        let outcome = if entry.is_some() { "hit" } else { "miss" };
        metrics::counter!("baton_cache_reads_total", "outcome" => outcome).increment(1);
        Ok(entry)
    }

    /// Reads many keys: their scripts pipeline on the multiplexed connection, then one
    /// MGET checks every tag involved.
    pub async fn batch_get(&self, keys: &[String]) -> Result<Vec<Option<Entry>>, Error> {
        let raw: Vec<Option<RawEntry>> =
            join_all(keys.iter().map(|key| self.read_raw(key))).await.into_iter().collect::<Result<_, _>>()?;
        Ok(self.check_tags(raw).await?.into_iter().map(|r| r.map(|r| r.entry)).collect())
    }

    /// The version of `key`'s value if a tag invalidation hides it (so conditional writes
    /// treat it as absent), else -1.
    async fn hidden_version(&self, key: &str) -> Result<i64, Error> {
        let Some(raw) = self.read_raw(key).await? else {
            return Ok(-1);
        };
        let generations = self.generations(stamped_tags(&raw.stamps)).await?;
        Ok(if Self::stamps_current(&raw.stamps, &generations) { -1 } else { raw.entry.version as i64 })
    }

    pub async fn set(&self, write: &Write) -> Result<Result<Stored, WriteRefused>, Error> {
        let generations = self.generations(write.tags.iter().cloned().collect()).await?;
        let stamps: Vec<(String, u64)> =
            write.tags.iter().map(|tag| (tag.clone(), generations.get(tag).copied().unwrap_or(0))).collect();
        let hidden = if write.if_version > 0 || write.if_absent { self.hidden_version(&write.key).await? } else { -1 };
        let (tags, channel) = (encode_tags(&stamps), self.channel(&write.key));
        let args = [
            Arg::from(&write.value),
            micros(write.ttl).into(),
            micros(write.stale_ttl).into(),
            (&tags).into(),
            write.if_version.into(),
            write.if_absent.into(),
            hidden.into(),
            (&channel).into(),
        ];
        match self.store.eval(&SET, &[self.entry_key(&write.key)], &args).await?.outcome()? {
            Outcome::Done(fields) => {
                metrics::counter!("baton_cache_writes_total").increment(1);
                Ok(Ok(Stored::decode(&fields, 0)?))
            }
            Outcome::Refused { reason, .. } if reason == "ALREADY_EXISTS" => Ok(Err(WriteRefused::AlreadyExists)),
            Outcome::Refused { .. } => Ok(Err(WriteRefused::VersionMismatch)),
        }
    }

    pub async fn batch_set(&self, writes: &[Write]) -> Result<Vec<Result<Stored, WriteRefused>>, Error> {
        join_all(writes.iter().map(|write| self.set(write))).await.into_iter().collect()
    }

    /// Deletes `key`; `Err(VersionMismatch)` when `if_version` does not match.
    pub async fn delete(&self, key: &str, if_version: u64) -> Result<Result<bool, WriteRefused>, Error> {
        match self.store.eval(&DELETE, &[self.entry_key(key)], &[if_version.into()]).await?.outcome()? {
            Outcome::Done(fields) => Ok(Ok(fields.int(0)? == 1)),
            Outcome::Refused { .. } => Ok(Err(WriteRefused::VersionMismatch)),
        }
    }

    /// Hides every entry written with `tag` so far: one INCR, however many entries.
    pub async fn invalidate_tag(&self, tag: &str) -> Result<(), Error> {
        let ttl_ms = self.tag_ttl.as_millis() as u64;
        self.store.eval(&INVALIDATE_TAG, &[self.tag_key(tag)], &[ttl_ms.into()]).await?.done()?;
        metrics::counter!("baton_cache_invalidations_total").increment(1);
        Ok(())
    }

    /// Reads with stampede protection; waits up to `wait` for another caller's fill, but
    /// not once `draining` is cancelled (the caller waits on another replica instead).
    pub async fn fetch(
        &self,
        key: &str,
        lease_ttl: Duration,
        wait: Duration,
        draining: &CancellationToken,
    ) -> Result<FetchOutcome, Error> {
        let deadline = Instant::now() + wait;
        let token = new_token();
        let mut outcome = self.fetch_once(key, &token, lease_ttl, true).await?;
        let FetchStep::Wait(mut lease_left) = outcome else {
            return Ok(self.finished(outcome));
        };
        if draining.is_cancelled() && !wait.is_zero() {
            return Err(Error::ShuttingDown);
        }
        metrics::counter!("baton_cache_fill_waits_total").increment(1);
        let wake = self.notifier.watch(&self.channel(key));
        loop {
            let now = Instant::now();
            if now >= deadline {
                metrics::counter!("baton_cache_fill_timeouts_total").increment(1);
                return Ok(FetchOutcome::TimedOut);
            }
            let notified = wake.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // A waiter never takes over the fill (the API promises it the value or a
            // timeout), so it only needs waking when the value lands.
            let nap = (deadline - now).min(SAFETY_RECHECK).min(lease_left.max(Duration::from_millis(1)));
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep(nap) => {}
                () = draining.cancelled() => return Err(Error::ShuttingDown),
            }
            outcome = self.fetch_once(key, &token, lease_ttl, false).await?;
            match outcome {
                FetchStep::Wait(left) => lease_left = if left.is_zero() { SAFETY_RECHECK } else { left },
                _ => return Ok(self.finished(outcome)),
            }
        }
    }

    fn finished(&self, step: FetchStep) -> FetchOutcome {
        let outcome = match step {
            FetchStep::Done(outcome) => outcome,
            FetchStep::Wait(_) => FetchOutcome::TimedOut,
        };
        let label = match &outcome {
            FetchOutcome::Hit(_) => "hit",
            FetchOutcome::Stale(..) => "stale",
            FetchOutcome::Fill(_) => "fill",
            FetchOutcome::TimedOut => "timeout",
        };
        metrics::counter!("baton_cache_fetches_total", "outcome" => label).increment(1);
        outcome
    }

    async fn fetch_once(
        &self,
        key: &str,
        token: &str,
        lease_ttl: Duration,
        may_grant: bool,
    ) -> Result<FetchStep, Error> {
        let mut hidden = -1i64;
        loop {
            let args = [Arg::from(token), micros(lease_ttl).into(), may_grant.into(), hidden.into()];
            let mut fields = self.store.eval(&FETCH, &[self.entry_key(key)], &args).await?.done()?;
            let code = fields.int(0)?;
            if code == 1 || code == 2 {
                let raw = decode_entry(&mut fields, 1, code == 2)?;
                let generations = self.generations(stamped_tags(&raw.stamps)).await?;
                if !Self::stamps_current(&raw.stamps, &generations) && hidden < 0 {
                    // A tag invalidation hides this value: ask again, treating it as missing.
                    hidden = raw.entry.version as i64;
                    continue;
                }
                return Ok(FetchStep::Done(if code == 1 {
                    FetchOutcome::Hit(raw.entry)
                } else {
                    let token = Some(fields.string(5)?).filter(|t| !t.is_empty());
                    FetchOutcome::Stale(raw.entry, token)
                }));
            }
            if code == 3 {
                return Ok(FetchStep::Done(FetchOutcome::Fill(fields.string(1)?)));
            }
            let left = fields.uint(1).unwrap_or(0);
            return Ok(FetchStep::Wait(Duration::from_micros(left)));
        }
    }

    /// Stores a loader's value, or gives its token up (`abandon`). `Ok(None)` for an abandon.
    pub async fn fill(&self, write: &Write, token: &str, abandon: bool) -> Result<Option<Stored>, Error> {
        let generations = self.generations(write.tags.iter().cloned().collect()).await?;
        let stamps: Vec<(String, u64)> =
            write.tags.iter().map(|tag| (tag.clone(), generations.get(tag).copied().unwrap_or(0))).collect();
        let (tags, channel) = (encode_tags(&stamps), self.channel(&write.key));
        let newest_generation = stamps.iter().map(|(_, generation)| *generation).max().unwrap_or(0);
        let args = [
            Arg::from(token),
            (&write.value).into(),
            micros(write.ttl).into(),
            micros(write.stale_ttl).into(),
            (&tags).into(),
            abandon.into(),
            (&channel).into(),
            newest_generation.into(),
        ];
        match self.store.eval(&FILL, &[self.entry_key(&write.key)], &args).await?.outcome()? {
            Outcome::Done(fields) if fields.int(0)? == 1 => {
                metrics::counter!("baton_cache_fills_total").increment(1);
                Ok(Some(Stored::decode(&fields, 1)?))
            }
            Outcome::Done(_) => Ok(None),
            Outcome::Refused { reason, .. } if reason == "TAG_INVALIDATED" => Err(Error::FillTagInvalidated),
            Outcome::Refused { .. } => Err(Error::FillTokenStale),
        }
    }
}

enum FetchStep {
    Done(FetchOutcome),
    /// Someone else is filling; their lease has this long left.
    Wait(Duration),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tag_stamps_round_trip() {
        let stamps = vec![("user:1".to_owned(), 3), ("team".to_owned(), 0)];
        assert_eq!(decode_tags(&encode_tags(&stamps)), stamps);
        assert!(decode_tags(b"").is_empty());
    }

    #[test]
    fn stamps_are_current_only_when_every_generation_matches() {
        let stamps = vec![("a".to_owned(), 1), ("b".to_owned(), 0)];
        let mut generations = HashMap::from([("a".to_owned(), 1)]);
        assert!(CacheManager::stamps_current(&stamps, &generations));
        generations.insert("b".to_owned(), 1);
        assert!(!CacheManager::stamps_current(&stamps, &generations));
    }
}
