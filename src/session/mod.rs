//! Sessions after the OWASP Session Management Cheat Sheet: 256-bit ids from the OS
//! CSPRNG that Redis never sees (only their SHA-256), idle and absolute timeouts, rotation
//! that keeps the data, and a per-subject index for "log out everywhere".
//!
//! A session lives in its own slot (its hash); a subject's index lives in the subject's.
//! Index entries are written first and read tolerantly: a crash between the two steps
//! leaves at worst an index entry pointing at nothing, which readers drop.

pub mod grpc;
mod keys;

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};

use crate::error::Error;
use crate::store::{Arg, Command, KeyBuilder, Outcome, Pipeline, Reply, Script, Store};
use crate::task::TaskGuard;
use keys::SessionKeys;

const PRELUDE: &str = include_str!("prelude.lua");
static CREATE: LazyLock<Script> =
    LazyLock::new(|| Script::new("session_create", &[PRELUDE, include_str!("create.lua")]));
static GET: LazyLock<Script> = LazyLock::new(|| Script::new("session_get", &[PRELUDE, include_str!("get.lua")]));
static UPDATE: LazyLock<Script> =
    LazyLock::new(|| Script::new("session_update", &[PRELUDE, include_str!("update.lua")]));
static ROTATE: LazyLock<Script> =
    LazyLock::new(|| Script::new("session_rotate", &[PRELUDE, include_str!("rotate.lua")]));
static TAKE: LazyLock<Script> =
    LazyLock::new(|| Script::new("session_rotate_take", &[PRELUDE, include_str!("take.lua")]));
static PUT: LazyLock<Script> = LazyLock::new(|| Script::new("session_rotate_put", &[PRELUDE, include_str!("put.lua")]));
static DELETE: LazyLock<Script> =
    LazyLock::new(|| Script::new("session_delete", &[PRELUDE, include_str!("delete.lua")]));

/// 256 bits.
const ID_BYTES: usize = 32;
/// Gauge-set entries read per step by CountSessions and ClearSessions.
const SCAN_PAGE: usize = 1000;
/// How often the active-sessions gauge is refreshed.
const GAUGE_INTERVAL: Duration = Duration::from_secs(15);

/// A session as returned to callers (never with its id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    pub handle: String,
    pub subject: String,
    pub data: BTreeMap<String, Vec<u8>>,
    pub attributes: BTreeMap<String, String>,
    pub version: u64,
    pub created_at_micros: u64,
    pub last_seen_at_micros: u64,
    pub idle_expires_at_micros: u64,
    pub absolute_expires_at_micros: u64,
}

/// A validated CreateSession.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// A client-chosen id, already checked for form.
    pub session_id: Option<String>,
    pub subject: String,
    pub data: BTreeMap<String, Vec<u8>>,
    pub attributes: BTreeMap<String, String>,
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
}

/// A validated UpdateSession.
#[derive(Debug, Clone, Default)]
pub struct SessionChange {
    pub set: BTreeMap<String, Vec<u8>>,
    pub remove: Vec<String>,
    /// 0: unconditional.
    pub if_version: u64,
    pub idle_timeout: Option<Duration>,
    /// Counted from the session's creation.
    pub absolute_timeout: Option<Duration>,
}

/// Settings from the command line.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    /// Timeouts of a session whose creator gives none.
    pub idle_timeout: Duration,
    pub absolute_timeout: Duration,
    /// Most bytes of data keys and values in one session.
    pub max_data_bytes: usize,
    /// Most live sessions per subject (the oldest are evicted); 0 = unlimited.
    pub max_per_subject: usize,
}

/// A new session id: 256 bits from the OS CSPRNG, base64url without padding.
pub fn new_session_id() -> String {
    URL_SAFE_NO_PAD.encode(crate::secret::random_bytes(ID_BYTES))
}

/// Whether `id` has the form of a session id: 22..=256 characters of `[A-Za-z0-9_-]`,
/// at least 128 bits by its form.
pub fn is_well_formed_id(id: &str) -> bool {
    (22..=256).contains(&id.len()) && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The SHA-256 of an id, hex: the only form Redis sees.
fn id_hash(id: &str) -> String {
    crate::secret::hex(&Sha256::digest(id.as_bytes()))
}

/// The public handle: a one-way function of the hash, so it leads back neither to the id
/// nor (without the index) to the session key.
fn handle_of(hash: &str) -> String {
    let digest = Sha256::digest(format!("baton-session-handle:{hash}").as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..16])
}

#[derive(Clone)]
pub struct SessionManager {
    store: Store,
    keys: KeyBuilder,
    settings: SessionSettings,
}

impl SessionManager {
    pub fn new(store: Store, keys: KeyBuilder, settings: SessionSettings) -> Self {
        Self { store, keys, settings }
    }

    /// The same manager acting for another tenant namespace.
    pub fn scoped(&self, namespace: &std::sync::Arc<str>) -> Self {
        Self { keys: KeyBuilder::new(namespace.clone()), ..self.clone() }
    }

    pub fn settings(&self) -> &SessionSettings {
        &self.settings
    }

    fn session_key(&self, hash: &str) -> String {
        SessionKeys(&self.keys).session(hash)
    }

    fn index_key(&self, subject: &str) -> String {
        SessionKeys(&self.keys).index(subject)
    }

    fn active_key(&self) -> String {
        SessionKeys(&self.keys).active()
    }

    /// Keeps `baton_sessions_active` fresh; docs/operations.md says what it counts.
    pub fn spawn_gauge(&self) -> TaskGuard {
        let manager = self.clone();
        TaskGuard::spawn(async move {
            let mut interval = tokio::time::interval(GAUGE_INTERVAL);
            loop {
                interval.tick().await;
                let now = crate::proto::now_micros();
                let mut pipe = Pipeline::new();
                pipe.ignored(Command::new("ZREMRANGEBYSCORE").arg(&manager.active_key()).arg("-inf").arg(now));
                pipe.add(Command::new("ZCARD").arg(&manager.active_key()));
                if let Ok((count,)) = manager.store.pipeline::<(u64,)>("session_gauge", &pipe).await {
                    metrics::gauge!("baton_sessions_active", "namespace" => manager.keys.namespace().to_owned())
                        .set(count as f64);
                }
            }
        })
    }

    /// Creates a session; returns its id and state. `Ok(None)`: the client-chosen id exists.
    pub async fn create(&self, new: &NewSession) -> Result<Option<(String, Session)>, Error> {
        let id = new.session_id.clone().unwrap_or_else(new_session_id);
        let hash = id_hash(&id);
        let handle = handle_of(&hash);
        let absolute_deadline = crate::proto::now_micros() + new.absolute_timeout.as_micros() as u64;
        // Index first: a crash after it leaves an entry that readers drop. The subject's
        // index and the namespace's gauge set live in different Cluster slots. NX, so that
        // a refused create can take back exactly the entries it added and nothing else.
        let now = crate::proto::now_micros();
        let index = self.index_key(&new.subject);
        let mut index_pipe = Pipeline::new();
        if !new.subject.is_empty() {
            index_pipe.add(Command::new("ZADD").arg(&index).arg("NX").arg(now).arg(&hash));
            index_pipe.ignored(Command::new("PEXPIREAT").arg(&index).arg(absolute_deadline / 1000 + 1).arg("GT"));
            // GT does not apply to a key without a TTL; NX covers the first member.
            index_pipe.ignored(Command::new("PEXPIREAT").arg(&index).arg(absolute_deadline / 1000 + 1).arg("NX"));
        }
        let mut active_pipe = Pipeline::new();
        active_pipe.add(Command::new("ZADD").arg(&self.active_key()).arg("NX").arg(absolute_deadline).arg(&hash));
        let index_added = async {
            match new.subject.is_empty() {
                true => Ok(false),
                false => Ok::<_, Error>(self.store.pipeline::<(i64,)>("session_index", &index_pipe).await?.0 == 1),
            }
        };
        let active_added =
            async { Ok::<_, Error>(self.store.pipeline::<(i64,)>("session_index", &active_pipe).await?.0) };
        let (added_to_index, added_to_active) = futures::future::try_join(index_added, active_added).await?;

        let size: usize = new.data.iter().map(|(k, v)| k.len() + v.len()).sum();
        let mut args: Vec<Arg> = Vec::with_capacity(7 + 2 * (new.data.len() + new.attributes.len()));
        args.extend([
            Arg::from(&new.subject),
            (&handle).into(),
            micros(new.idle_timeout).into(),
            micros(new.absolute_timeout).into(),
            size.into(),
            new.data.len().into(),
        ]);
        for (key, value) in &new.data {
            args.extend([Arg::from(key), value.into()]);
        }
        args.push(new.attributes.len().into());
        for (key, value) in &new.attributes {
            args.extend([Arg::from(key), value.into()]);
        }
        let reply = self.store.eval(&CREATE, &[self.session_key(&hash)], &args).await?;
        let Some(session) = decode(reply)? else {
            // Refused: take back what this call added, so the id's owner is unaffected and
            // no other subject's index ever points at it.
            let mut undo_index = Pipeline::new();
            if added_to_index {
                undo_index.ignored(Command::new("ZREM").arg(&index).arg(&hash));
            }
            let mut undo_active = Pipeline::new();
            if added_to_active == 1 {
                undo_active.ignored(Command::new("ZREM").arg(&self.active_key()).arg(&hash));
            }
            self.pipelines("session_index", &[undo_index, undo_active]).await?;
            return Ok(None);
        };
        // An entry left by an earlier session of this hash keeps its old deadline under NX.
        let mut refresh = Pipeline::new();
        if added_to_active == 0 {
            refresh.ignored(Command::new("ZADD").arg(&self.active_key()).arg(absolute_deadline).arg(&hash));
        }
        self.pipelines("session_index", &[refresh]).await?;
        metrics::counter!("baton_sessions_created_total").increment(1);
        if self.settings.max_per_subject > 0 && !new.subject.is_empty() {
            self.evict_beyond_limit(&new.subject).await?;
        }
        Ok(Some((id, session)))
    }

    /// Drops the oldest sessions of a subject above the configured maximum.
    async fn evict_beyond_limit(&self, subject: &str) -> Result<(), Error> {
        let sessions = self.live_index(subject).await?;
        let excess = sessions.len().saturating_sub(self.settings.max_per_subject);
        if excess > 0 {
            let oldest: Vec<String> = sessions.into_iter().take(excess).map(|(hash, _)| hash).collect();
            self.remove(subject, &oldest).await?;
        }
        Ok(())
    }

    pub async fn get(&self, id: &str, touch: bool) -> Result<Option<Session>, Error> {
        decode(self.store.eval(&GET, &[self.session_key(&id_hash(id))], &[touch.into()]).await?)
    }

    /// Applies a change; `Err(Aborted)` on a version mismatch, `Ok(None)` when the session
    /// is gone (or the change's absolute timeout ended it).
    pub async fn update(&self, id: &str, change: &SessionChange) -> Result<Option<Session>, Error> {
        let timeout = |timeout: Option<Duration>| timeout.map_or(0, micros);
        let mut args: Vec<Arg> = Vec::with_capacity(6 + 2 * change.set.len() + change.remove.len());
        args.extend([
            Arg::from(change.if_version),
            self.settings.max_data_bytes.into(),
            timeout(change.idle_timeout).into(),
            timeout(change.absolute_timeout).into(),
            change.set.len().into(),
        ]);
        for (key, value) in &change.set {
            args.extend([Arg::from(key), value.into()]);
        }
        args.push(change.remove.len().into());
        args.extend(change.remove.iter().map(Arg::from));
        let hash = id_hash(id);
        let session = match self.store.eval(&UPDATE, &[self.session_key(&hash)], &args).await?.outcome()? {
            Outcome::Done(fields) => Some(session_from(fields)?),
            Outcome::Refused { reason, .. } if reason == "TOO_LARGE" => {
                return Err(Error::invalid(
                    "set",
                    format!("session data would exceed {} bytes", self.settings.max_data_bytes),
                ));
            }
            Outcome::Refused { reason, .. } if reason == "VERSION_MISMATCH" => {
                return Err(Error::VersionMismatch { what: "session" });
            }
            Outcome::Refused { reason, fields } if reason == "ENDED" => {
                self.forget(&hash, &fields.string(0)?).await?;
                metrics::counter!("baton_sessions_expired_total").increment(1);
                return Ok(None);
            }
            Outcome::Refused { .. } => None,
        };
        if let (Some(session), Some(_)) = (&session, change.absolute_timeout) {
            self.follow_absolute_deadline(&hash, session).await?;
        }
        Ok(session)
    }

    /// After a session's absolute deadline moved: its gauge entry and its subject's index
    /// must live as long as it does.
    async fn follow_absolute_deadline(&self, hash: &str, session: &Session) -> Result<(), Error> {
        let deadline = session.absolute_expires_at_micros;
        let mut active_pipe = Pipeline::new();
        active_pipe.ignored(Command::new("ZADD").arg(&self.active_key()).arg("XX").arg(deadline).arg(hash));
        let mut index_pipe = Pipeline::new();
        if !session.subject.is_empty() {
            let index = self.index_key(&session.subject);
            index_pipe.ignored(Command::new("PEXPIREAT").arg(&index).arg(deadline / 1000 + 1).arg("GT"));
        }
        self.pipelines("session_index", &[active_pipe, index_pipe]).await
    }

    /// Moves a session to a new id; the old id is dead at once.
    pub async fn rotate(&self, id: &str) -> Result<Option<(String, Session)>, Error> {
        let old_hash = id_hash(id);
        // Peek at the subject so the index can take the new hash first.
        let Some(current) = self.get(id, false).await? else {
            return Ok(None);
        };
        let new_id = new_session_id();
        let new_hash = id_hash(&new_id);
        if !current.subject.is_empty() {
            let index = self.index_key(&current.subject);
            let mut pipe = Pipeline::new();
            pipe.ignored(Command::new("ZADD").arg(&index).arg(current.created_at_micros).arg(&new_hash));
            let _: () = self.store.pipeline("session_index", &pipe).await?;
        }
        let reply = if self.store.is_cluster() {
            self.move_across_slots(&old_hash, &new_hash).await?
        } else {
            let keys = [self.session_key(&old_hash), self.session_key(&new_hash)];
            self.store.eval(&ROTATE, &keys, &[(&handle_of(&new_hash)).into()]).await?
        };
        let Some(session) = decode(reply)? else {
            return Ok(None);
        };
        let mut index_pipe = Pipeline::new();
        if !session.subject.is_empty() {
            index_pipe.ignored(Command::new("ZREM").arg(&self.index_key(&session.subject)).arg(&old_hash));
        }
        let mut active_pipe = Pipeline::new();
        active_pipe.ignored(Command::new("ZREM").arg(&self.active_key()).arg(&old_hash));
        active_pipe.ignored(
            Command::new("ZADD").arg(&self.active_key()).arg(session.absolute_expires_at_micros).arg(&new_hash),
        );
        self.pipelines("session_index", &[index_pipe, active_pipe]).await?;
        metrics::counter!("baton_sessions_rotated_total").increment(1);
        Ok(Some((new_id, session)))
    }

    /// Rotation where the old and new session keys are in different Cluster slots: take
    /// the session from the old key, then put it under the new one. The order means a crash
    /// between the two loses the session rather than leaving the old id alive.
    async fn move_across_slots(&self, old_hash: &str, new_hash: &str) -> Result<Reply, Error> {
        let taken = self.store.eval(&TAKE, &[self.session_key(old_hash)], &[]).await?;
        let Outcome::Done(mut fields) = taken.outcome()? else {
            return Ok(self.store.eval(&GET, &[self.session_key(old_hash)], &[false.into()]).await?);
        };
        let pairs = fields.take_pairs(0)?;
        let handle = handle_of(new_hash);
        let mut args: Vec<Arg> = Vec::with_capacity(1 + 2 * pairs.len());
        args.push((&handle).into());
        for (name, value) in &pairs {
            args.extend([Arg::from(name), value.into()]);
        }
        Ok(self.store.eval(&PUT, &[self.session_key(new_hash)], &args).await?)
    }

    /// Runs single-slot pipelines concurrently; for steps whose mutual order is free.
    async fn pipelines(&self, op: &'static str, pipes: &[Pipeline]) -> Result<(), Error> {
        let runs = pipes.iter().filter(|pipe| !pipe.is_empty()).map(|pipe| self.store.pipeline::<()>(op, pipe));
        futures::future::try_join_all(runs).await?;
        Ok(())
    }

    pub async fn delete(&self, id: &str) -> Result<bool, Error> {
        let hash = id_hash(id);
        let (deleted, subject) = self.delete_hash(&hash).await?;
        self.forget(&hash, &subject).await?;
        Ok(deleted)
    }

    /// Deletes one session; returns whether it existed and its subject.
    async fn delete_hash(&self, hash: &str) -> Result<(bool, String), Error> {
        let fields = self.store.eval(&DELETE, &[self.session_key(hash)], &[]).await?.done()?;
        Ok((fields.int(0)? == 1, fields.string(1)?))
    }

    /// Drops a deleted session's entries from its subject's index and the gauge set.
    async fn forget(&self, hash: &str, subject: &str) -> Result<(), Error> {
        let mut index_pipe = Pipeline::new();
        if !subject.is_empty() {
            index_pipe.ignored(Command::new("ZREM").arg(&self.index_key(subject)).arg(hash));
        }
        let mut active_pipe = Pipeline::new();
        active_pipe.ignored(Command::new("ZREM").arg(&self.active_key()).arg(hash));
        self.pipelines("session_index", &[index_pipe, active_pipe]).await
    }

    /// The subject's live sessions, oldest first, as (hash, session); dangling index
    /// entries are dropped on the way.
    async fn live_index(&self, subject: &str) -> Result<Vec<(String, Session)>, Error> {
        let index = self.index_key(subject);
        let hashes: Vec<String> =
            self.store.command("session_list", &Command::new("ZRANGE").arg(&index).arg(0u64).arg(-1i64)).await?;
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        // Each session lives in its own slot: one read each, pipelined on the connection.
        let replies = futures::future::join_all(hashes.iter().map(|hash| self.peek(hash))).await;
        let mut live = Vec::new();
        let mut dangling = Vec::new();
        let mut expired = 0;
        for (hash, reply) in hashes.into_iter().zip(replies) {
            match decode(reply?)? {
                // An entry counts only for the subject its session has, whoever wrote it.
                Some(session) if session.subject == subject => live.push((hash, session)),
                Some(_) => dangling.push(hash),
                None => {
                    expired += 1;
                    dangling.push(hash);
                }
            }
        }
        if !dangling.is_empty() {
            let _: i64 =
                self.store.command("session_index_clean", &Command::new("ZREM").arg(&index).args(&dangling)).await?;
            metrics::counter!("baton_sessions_expired_total").increment(expired);
        }
        Ok(live)
    }

    async fn peek(&self, hash: &str) -> Result<Reply, Error> {
        Ok(self.store.eval(&GET, &[self.session_key(hash)], &[false.into()]).await?)
    }

    pub async fn list(&self, subject: &str) -> Result<Vec<Session>, Error> {
        Ok(self.live_index(subject).await?.into_iter().map(|(_, session)| session).collect())
    }

    /// Revokes the subject's sessions with these handles (all when empty), except one.
    pub async fn revoke(&self, subject: &str, handles: &[String], except_handle: &str) -> Result<u64, Error> {
        let doomed: Vec<String> = self
            .live_index(subject)
            .await?
            .into_iter()
            .filter(|(_, session)| handles.is_empty() || handles.contains(&session.handle))
            .filter(|(_, session)| session.handle != except_handle)
            .map(|(hash, _)| hash)
            .collect();
        let revoked = self.remove(subject, &doomed).await?;
        metrics::counter!("baton_sessions_revoked_total").increment(revoked);
        Ok(revoked)
    }

    /// The namespace's live sessions: every entry of the gauge set whose session key still
    /// exists, page by page; entries of sessions that ended idle are dropped on the way.
    pub async fn count(&self) -> Result<u64, Error> {
        let mut live = 0;
        let mut start = 0;
        loop {
            let page = self.active_page(start).await?;
            let exists = futures::future::try_join_all(page.iter().map(|hash| {
                let key = self.session_key(hash);
                async move { self.store.command::<i64>("session_count", &Command::new("EXISTS").arg(&key)).await }
            }))
            .await?;
            let ended: Vec<&String> = page.iter().zip(&exists).filter(|(_, e)| **e == 0).map(|(h, _)| h).collect();
            live += (page.len() - ended.len()) as u64;
            if !ended.is_empty() {
                let _: i64 = self
                    .store
                    .command("session_count", &Command::new("ZREM").arg(&self.active_key()).args(&ended))
                    .await?;
            }
            if page.len() < SCAN_PAGE {
                return Ok(live);
            }
            // The dropped entries were at or before the cursor, so later ranks moved back.
            start += page.len() - ended.len();
        }
    }

    /// Ends every session of the namespace that exists when the call starts (a steady
    /// stream of new sessions cannot keep it running).
    pub async fn clear(&self) -> Result<u64, Error> {
        let total: usize = self.store.command("session_clear", &Command::new("ZCARD").arg(&self.active_key())).await?;
        let mut cleared = 0;
        for _ in 0..total.div_ceil(SCAN_PAGE) {
            let page = self.active_page(0).await?;
            if page.is_empty() {
                break;
            }
            let deletes = futures::future::try_join_all(page.iter().map(|hash| async move {
                let (deleted, subject) = self.delete_hash(hash).await?;
                Ok::<_, Error>((hash, deleted, subject))
            }))
            .await?;
            // The page's index and gauge entries go in one command per key, not one per session.
            let mut by_subject: BTreeMap<&str, Vec<&String>> = BTreeMap::new();
            for (hash, _, subject) in deletes.iter().filter(|(_, _, subject)| !subject.is_empty()) {
                by_subject.entry(subject.as_str()).or_default().push(hash);
            }
            let mut pipes = Vec::with_capacity(by_subject.len() + 1);
            for (subject, hashes) in by_subject {
                let mut pipe = Pipeline::new();
                pipe.ignored(Command::new("ZREM").arg(&self.index_key(subject)).args(hashes));
                pipes.push(pipe);
            }
            let mut active_pipe = Pipeline::new();
            active_pipe.ignored(Command::new("ZREM").arg(&self.active_key()).args(&page));
            pipes.push(active_pipe);
            self.pipelines("session_clear", &pipes).await?;
            cleared += deletes.iter().filter(|(_, deleted, _)| *deleted).count() as u64;
        }
        metrics::counter!("baton_sessions_revoked_total").increment(cleared);
        Ok(cleared)
    }

    async fn active_page(&self, start: usize) -> Result<Vec<String>, Error> {
        let stop = start + SCAN_PAGE - 1;
        Ok(self
            .store
            .command("session_scan", &Command::new("ZRANGE").arg(&self.active_key()).arg(start).arg(stop))
            .await?)
    }

    async fn remove(&self, subject: &str, hashes: &[String]) -> Result<u64, Error> {
        if hashes.is_empty() {
            return Ok(0);
        }
        // Sessions first, index entries after: a crash between leaves dangling entries,
        // which readers drop, never a live session its subject can no longer list. Each
        // session is its own Cluster slot; the DELs still pipeline on the connection.
        let deletes = hashes.iter().map(|hash| {
            let key = self.session_key(hash);
            async move { self.store.command::<i64>("session_revoke", &Command::new("DEL").arg(&key)).await }
        });
        let deleted = futures::future::try_join_all(deletes).await?;
        let mut index_pipe = Pipeline::new();
        index_pipe.ignored(Command::new("ZREM").arg(&self.index_key(subject)).args(hashes));
        let mut active_pipe = Pipeline::new();
        active_pipe.ignored(Command::new("ZREM").arg(&self.active_key()).args(hashes));
        self.pipelines("session_revoke", &[index_pipe, active_pipe]).await?;
        Ok(deleted.into_iter().filter(|d| *d == 1).count() as u64)
    }
}

/// A session from a script's reply; `None` when it is missing, or when it had just
/// expired (`EXPIRED`, counted here).
fn decode(reply: Reply) -> Result<Option<Session>, Error> {
    match reply.outcome()? {
        Outcome::Done(fields) => Ok(Some(session_from(fields)?)),
        Outcome::Refused { reason, .. } => {
            if reason == "EXPIRED" {
                metrics::counter!("baton_sessions_expired_total").increment(1);
            }
            Ok(None)
        }
    }
}

/// A session from its hash's fields, as every script's `{1, packed HGETALL}` carries them.
fn session_from(fields: crate::store::Fields) -> Result<Session, Error> {
    let text = |value: &[u8]| String::from_utf8_lossy(value).into_owned();
    let number = |value: &[u8]| std::str::from_utf8(value).ok().and_then(|text| text.parse::<u64>().ok()).unwrap_or(0);
    let mut session = Session::default();
    let mut has_deadlines = false;
    for (name, value) in fields.packed_pairs(0)? {
        match name {
            b"handle" => session.handle = text(value),
            b"subject" => session.subject = text(value),
            b"ver" => session.version = number(value),
            b"created" => session.created_at_micros = number(value),
            b"last_seen" => session.last_seen_at_micros = number(value),
            b"idle_exp" => session.idle_expires_at_micros = number(value),
            b"abs_exp" => {
                session.absolute_expires_at_micros = number(value);
                has_deadlines = true;
            }
            _ => {
                if let Some(key) = name.strip_prefix(b"d:") {
                    session.data.insert(text(key), value.to_vec());
                } else if let Some(key) = name.strip_prefix(b"a:") {
                    session.attributes.insert(text(key), text(value));
                }
            }
        }
    }
    if !has_deadlines {
        return Err(Error::Internal("session script returned a hash without deadlines".into()));
    }
    Ok(session)
}

fn micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_256_bits_and_well_formed() {
        let id = new_session_id();
        assert_eq!(URL_SAFE_NO_PAD.decode(&id).unwrap().len(), 32);
        assert!(is_well_formed_id(&id));
        assert!(!is_well_formed_id("short"));
        assert!(!is_well_formed_id(&"a+b/".repeat(10)));
        assert!(!is_well_formed_id(&"a".repeat(257)));
    }

    #[test]
    fn hashes_and_handles_do_not_contain_the_id() {
        let id = new_session_id();
        let hash = id_hash(&id);
        let handle = handle_of(&hash);
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains(&id) && !handle.contains(&id));
        assert_ne!(handle_of(&id_hash(&new_session_id())), handle);
    }
}
