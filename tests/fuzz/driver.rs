//! The driver: one request to every RPC per round, each answer checked against the oracle
//! and against Redis's write and command counters.

use super::*;
use crate::oracle;
use crate::strategies::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Counters {
    pub(crate) writes: u64,
    pub(crate) commands: u64,
}

#[derive(Default)]
pub(crate) struct Tally {
    pub(crate) ok: u32,
    pub(crate) invalid_argument: u32,
    pub(crate) other: BTreeMap<String, u32>,
}

/// Ids Baton really issued, fed back into later requests.
#[derive(Default)]
pub(crate) struct Pool {
    pub(crate) lock_leases: Vec<(String, String)>,
    pub(crate) jobs: Vec<String>,
    pub(crate) queue_leases: Vec<String>,
    pub(crate) sessions: Vec<String>,
    pub(crate) handles: Vec<String>,
    pub(crate) fills: Vec<(String, String)>,
}

pub(crate) fn remember<T>(list: &mut Vec<T>, item: T) {
    if list.len() >= 64 {
        list.remove(0);
    }
    list.push(item);
}

pub(crate) fn pick<T: Clone>(list: &[T], index: &Option<Index>) -> Option<T> {
    match index {
        Some(index) if !list.is_empty() => Some(list[index.index(list.len())].clone()),
        _ => None,
    }
}

/// A request's Debug, with long runs of one character folded, cut to a readable size.
pub(crate) fn brief(request: &impl Debug) -> String {
    fold(&format!("{request:?}"))
}

/// `text` with long repeats (of up to six characters: an escaped `\0`, a byte `118, `)
/// folded, cut to a readable size.
pub(crate) fn fold(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::new();
    let mut at = 0;
    while at < chars.len() {
        let folded = (1..=6).find_map(|unit| {
            let pattern = chars.get(at..at + unit)?;
            let repeats = chars[at..].chunks_exact(unit).take_while(|chunk| *chunk == pattern).count();
            (repeats * unit > 16).then_some((unit, repeats))
        });
        match folded {
            Some((unit, repeats)) => {
                out.push_str(&format!("{}{{×{repeats}}}", String::from_iter(&chars[at..at + unit])));
                at += unit * repeats;
            }
            None => {
                out.push(chars[at]);
                at += 1;
            }
        }
    }
    if out.len() > 1500 {
        let cut = (0..=1500).rev().find(|&i| out.is_char_boundary(i)).unwrap();
        out.truncate(cut);
        out.push('…');
    }
    out
}

pub(crate) struct Fuzz {
    pub(crate) runner: TestRunner,
    pub(crate) redis: redis::aio::MultiplexedConnection,
    /// How much `commands` grows between two snapshots with nothing in between.
    pub(crate) own_commands: u64,
    pub(crate) tallies: BTreeMap<&'static str, Tally>,
    pub(crate) failures: Vec<String>,
    pub(crate) findings: Vec<String>,
    pub(crate) reads_before_rejecting: BTreeMap<&'static str, u32>,
    pub(crate) retries: u32,
    pub(crate) pool: Pool,
    /// The last accepted Consume stream, kept open so its deliveries' leases are live
    /// for Ack, Nack and Extend; replacing it hands its jobs back.
    pub(crate) consumer: Option<tonic::Streaming<ConsumeResponse>>,
}

impl Fuzz {
    pub(crate) fn sample<T: Debug>(&mut self, strategy: &BoxedStrategy<T>) -> T {
        strategy.new_tree(&mut self.runner).expect("strategy generates").current()
    }

    pub(crate) async fn counters(&mut self) -> Counters {
        let info: String =
            redis::cmd("INFO").arg("persistence").arg("stats").query_async(&mut self.redis).await.unwrap();
        let field = |name: &str| -> u64 {
            info.lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or_else(|| panic!("INFO has no {name}"))
        };
        Counters { writes: field("rdb_changes_since_last_save"), commands: field("total_commands_processed") }
    }

    /// Waits (briefly) until Redis's counters stop moving.
    pub(crate) async fn settle(&mut self) {
        let started = Instant::now();
        let mut last = self.counters().await;
        while started.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(30)).await;
            let now = self.counters().await;
            if now.writes == last.writes && now.commands - last.commands == self.own_commands {
                return;
            }
            last = now;
        }
    }

    /// Takes the deliveries the open Consume stream has ready, for their lease ids.
    pub(crate) async fn drain_consumer(&mut self) {
        let Some(stream) = self.consumer.as_mut() else {
            return;
        };
        for _ in 0..8 {
            match tokio::time::timeout(Duration::from_millis(1), stream.message()).await {
                Ok(Ok(Some(message))) => {
                    if let Some(consume_response::Event::Delivery(delivery)) = message.event {
                        remember(&mut self.pool.queue_leases, delivery.lease_id);
                    }
                }
                Ok(Ok(None) | Err(_)) => {
                    self.consumer = None;
                    return;
                }
                Err(_) => return,
            }
        }
    }

    pub(crate) fn fail(&mut self, rpc: &str, what: String, request: &impl Debug) {
        self.failures.push(format!("{rpc}: {what}\n    request: {}", brief(request)));
    }

    /// Sends `request`, checks the answer, and returns the response if it was accepted.
    pub(crate) async fn exercise<Req, Resp, F, Fut>(
        &mut self,
        rpc: &'static str,
        request: Req,
        verdict: oracle::Verdict,
        send: F,
    ) -> Option<Resp>
    where
        Req: Clone + Debug,
        F: Fn(Req) -> Fut,
        Fut: Future<Output = Result<Resp, Status>>,
    {
        let (mut wrote_every_time, mut read_every_time) = (true, true);
        for attempt in 1..=ATTEMPTS {
            let before = self.counters().await;
            let answer = tokio::time::timeout(HANG, send(request.clone())).await;
            let after = self.counters().await;
            let Ok(answer) = answer else {
                self.fail(rpc, format!("no answer within {HANG:?}"), &request);
                return None;
            };
            let tally = self.tallies.entry(rpc).or_default();
            let status = match answer {
                Ok(response) => {
                    tally.ok += 1;
                    if let Some(why) = verdict {
                        self.findings.push(format!(
                            "{rpc}: accepted, but {}\n    request: {}",
                            fold(&why),
                            brief(&request)
                        ));
                    }
                    return Some(response);
                }
                Err(status) => status,
            };
            let code = status.code();
            match code {
                Code::InvalidArgument => {
                    let wrote = after.writes != before.writes;
                    let read = after.commands - before.commands != self.own_commands;
                    wrote_every_time &= wrote;
                    read_every_time &= read;
                    if (wrote || read) && attempt < ATTEMPTS {
                        // Maybe background work: settle, then the same request again.
                        self.retries += 1;
                        self.settle().await;
                        continue;
                    }
                    tally.invalid_argument += 1;
                    let named = status
                        .get_details_bad_request()
                        .is_some_and(|bad| bad.field_violations.first().is_some_and(|v| !v.field.is_empty()));
                    if !named {
                        self.fail(
                            rpc,
                            format!("INVALID_ARGUMENT without a BadRequest field: {}", fold(&format!("{status:?}"))),
                            &request,
                        );
                    }
                    if wrote_every_time {
                        self.fail(
                            rpc,
                            format!(
                                "rejected ({}) but Redis was written, {ATTEMPTS} times in a row",
                                fold(status.message())
                            ),
                            &request,
                        );
                    } else if read_every_time {
                        *self.reads_before_rejecting.entry(rpc).or_default() += 1;
                    }
                    return None;
                }
                // An ambiguous answer to a request that must be rejected: ask again.
                Code::DeadlineExceeded | Code::Unavailable if verdict.is_some() && attempt < ATTEMPTS => {
                    self.retries += 1;
                    self.settle().await;
                    continue;
                }
                Code::Internal
                | Code::Unknown
                | Code::Unauthenticated
                | Code::PermissionDenied
                | Code::Unimplemented
                | Code::DataLoss => {
                    *tally.other.entry(format!("{code:?}")).or_default() += 1;
                    self.fail(rpc, format!("answered {code:?}: {}", fold(status.message())), &request);
                    return None;
                }
                _ => {
                    *tally.other.entry(format!("{code:?}")).or_default() += 1;
                    if let Some(why) = verdict {
                        self.findings.push(format!(
                            "{rpc}: answered {code:?} ({}), not INVALID_ARGUMENT, but {}\n    request: {}",
                            fold(status.message()),
                            fold(&why),
                            brief(&request)
                        ));
                    }
                    return None;
                }
            }
        }
        unreachable!("every attempt returns or continues")
    }
}

/// A unary call with a deadline: a closure from request to response, for `exercise`.
macro_rules! unary {
    ($client:expr, $method:ident, $deadline:expr) => {{
        let client = $client.clone();
        move |request| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(request);
                request.set_timeout($deadline);
                client.$method(request).await.map(tonic::Response::into_inner)
            }
        }
    }};
}

/// A streaming call whose first request message opens it: sends that one message, reads the
/// first answer (or status) briefly, drops the call (the caller settles what that frees).
macro_rules! first_message {
    ($client:expr, $method:ident) => {{
        let client = $client.clone();
        move |request| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(tokio_stream::once(request));
                request.set_timeout(DEADLINE);
                let mut stream = client.$method(request).await?.into_inner();
                let first = match tokio::time::timeout(FIRST_MESSAGE, stream.message()).await {
                    Ok(message) => message?,
                    Err(_) => None,
                };
                drop(stream);
                Ok::<_, Status>(first)
            }
        }
    }};
}

pub(crate) struct Clients {
    pub(crate) rate: RateLimiterServiceClient<Channel>,
    pub(crate) locks: LockServiceClient<Channel>,
    pub(crate) cache: CacheServiceClient<Channel>,
    pub(crate) sessions: SessionStoreServiceClient<Channel>,
    pub(crate) queues: JobQueueServiceClient<Channel>,
    pub(crate) envoy: RateLimitServiceClient<Channel>,
}

/// One request to every RPC.
pub(crate) async fn round(fuzz: &mut Fuzz, s: &Strategies, c: &Clients) {
    use oracle as o;

    // RateLimiterService
    let r = fuzz.sample(&s.check);
    let v = o::check(&r);
    fuzz.exercise("RateLimiter/Check", r, v, unary!(c.rate, check, DEADLINE)).await;
    let r = fuzz.sample(&s.reset);
    let v = o::reset(&r);
    fuzz.exercise("RateLimiter/Reset", r, v, unary!(c.rate, reset, DEADLINE)).await;

    // LockService
    let r = fuzz.sample(&s.acquire);
    let v = o::first([
        o::key("name", &r.name),
        o::lock_ttl(r.ttl.as_ref(), true),
        o::duration("wait_timeout", r.wait_timeout.as_ref()),
    ]);
    if let Some(response) = fuzz.exercise("Lock/Acquire", r, v, unary!(c.locks, acquire, WAITING_DEADLINE)).await
        && let Some(lease) = response.lease
    {
        remember(&mut fuzz.pool.lock_leases, (lease.name, lease.lease_id));
    }
    let (mut r, p) = fuzz.sample(&s.renew);
    if let Some((name, id)) = pick(&fuzz.pool.lock_leases, &p) {
        (r.name, r.lease_id) = (name, id);
    }
    let v = o::first([o::key("name", &r.name), o::lock_lease_id(&r.lease_id), o::lock_ttl(r.ttl.as_ref(), false)]);
    fuzz.exercise("Lock/Renew", r, v, unary!(c.locks, renew, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.release);
    if let Some((name, id)) = pick(&fuzz.pool.lock_leases, &p) {
        (r.name, r.lease_id) = (name, id);
    }
    let v = o::first([o::key("name", &r.name), o::lock_lease_id(&r.lease_id)]);
    fuzz.exercise("Lock/Release", r, v, unary!(c.locks, release, DEADLINE)).await;
    let r = fuzz.sample(&s.describe);
    let v = o::key("name", &r.name);
    fuzz.exercise("Lock/Describe", r, v, unary!(c.locks, describe, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.keep_alive);
    if let Some((name, id)) = pick(&fuzz.pool.lock_leases, &p) {
        (r.name, r.lease_id) = (name, id);
    }
    let v = o::first([o::key("name", &r.name), o::lock_lease_id(&r.lease_id), o::lock_ttl(r.ttl.as_ref(), false)]);
    fuzz.exercise("Lock/KeepAlive", r, v, first_message!(c.locks, keep_alive)).await;
    // A stream that acquires its lease is judged as Acquire is.
    let r = fuzz.sample(&s.acquire);
    let v = o::first([
        o::key("acquire.name", &r.name),
        o::lock_ttl(r.ttl.as_ref(), true),
        o::duration("acquire.wait_timeout", r.wait_timeout.as_ref()),
    ]);
    let r = KeepAliveRequest { acquire: Some(r), ..Default::default() };
    fuzz.exercise("Lock/KeepAlive acquiring", r, v, first_message!(c.locks, keep_alive)).await;
    // The server releases what the dropped stream held: until Redis is quiet again, that
    // would blur the next request's measurement.
    fuzz.settle().await;

    // CacheService
    let r = fuzz.sample(&s.get);
    let v = o::key("key", &r.key);
    fuzz.exercise("Cache/Get", r, v, unary!(c.cache, get, DEADLINE)).await;
    let r = fuzz.sample(&s.set);
    let v = o::set(&r.key, &r.value, r.ttl.as_ref(), r.stale_ttl.as_ref(), "");
    fuzz.exercise("Cache/Set", r, v, unary!(c.cache, set, DEADLINE)).await;
    let r = fuzz.sample(&s.delete);
    let v = o::key("key", &r.key);
    fuzz.exercise("Cache/Delete", r, v, unary!(c.cache, delete, DEADLINE)).await;
    let r = fuzz.sample(&s.batch_get);
    let v = o::first(
        std::iter::once(o::batch("keys", &r.keys, MAX_BATCH))
            .chain(r.keys.iter().enumerate().map(|(i, k)| o::key(&format!("keys[{i}]"), k))),
    );
    fuzz.exercise("Cache/BatchGet", r, v, unary!(c.cache, batch_get, DEADLINE)).await;
    let r = fuzz.sample(&s.batch_set);
    let v =
        o::first(std::iter::once(o::batch("entries", &r.entries, MAX_BATCH)).chain(
            r.entries.iter().enumerate().map(|(i, e)| {
                o::set(&e.key, &e.value, e.ttl.as_ref(), e.stale_ttl.as_ref(), &format!("entries[{i}]."))
            }),
        ));
    fuzz.exercise("Cache/BatchSet", r, v, unary!(c.cache, batch_set, DEADLINE)).await;
    let r = fuzz.sample(&s.invalidate_tag);
    let v = r.tag.is_empty().then(|| "tag is empty".to_owned());
    fuzz.exercise("Cache/InvalidateTag", r, v, unary!(c.cache, invalidate_tag, DEADLINE)).await;
    let r = fuzz.sample(&s.fetch);
    let v = o::first([
        o::key("key", &r.key),
        o::duration("lease_ttl", r.lease_ttl.as_ref()),
        o::duration("wait_timeout", r.wait_timeout.as_ref()),
    ]);
    let key_ = r.key.clone();
    if let Some(response) = fuzz.exercise("Cache/Fetch", r, v, unary!(c.cache, fetch, WAITING_DEADLINE)).await
        && !response.fill_token.is_empty()
    {
        remember(&mut fuzz.pool.fills, (key_, response.fill_token));
    }
    let (mut r, p) = fuzz.sample(&s.fill);
    if let Some((key_, token)) = pick(&fuzz.pool.fills, &p) {
        (r.key, r.fill_token) = (key_, token);
    }
    let v = o::first([
        r.fill_token.is_empty().then(|| "fill_token is empty".to_owned()),
        if r.abandon {
            o::key("key", &r.key)
        } else {
            o::set(&r.key, &r.value, r.ttl.as_ref(), r.stale_ttl.as_ref(), "")
        },
    ]);
    fuzz.exercise("Cache/Fill", r, v, unary!(c.cache, fill, DEADLINE)).await;

    // SessionStoreService
    let r = fuzz.sample(&s.create_session);
    let v = o::first([
        (!r.session_id.is_empty()).then(|| o::session_id(&r.session_id)).flatten(),
        (!r.subject.is_empty()).then(|| o::key("subject", &r.subject)).flatten(),
        o::duration("idle_timeout", r.idle_timeout.as_ref()),
        o::duration("absolute_timeout", r.absolute_timeout.as_ref()),
    ]);
    if let Some(response) =
        fuzz.exercise("Session/CreateSession", r, v, unary!(c.sessions, create_session, DEADLINE)).await
    {
        remember(&mut fuzz.pool.sessions, response.session_id);
        if let Some(session) = response.session {
            remember(&mut fuzz.pool.handles, session.handle);
        }
    }
    let (mut r, p) = fuzz.sample(&s.get_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::session_id(&r.session_id);
    fuzz.exercise("Session/GetSession", r, v, unary!(c.sessions, get_session, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.update_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::first([
        o::session_id(&r.session_id),
        o::duration("idle_timeout", r.idle_timeout.as_ref()),
        o::duration("absolute_timeout", r.absolute_timeout.as_ref()),
    ]);
    fuzz.exercise("Session/UpdateSession", r, v, unary!(c.sessions, update_session, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.rotate_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::session_id(&r.session_id);
    if let Some(response) =
        fuzz.exercise("Session/RotateSession", r, v, unary!(c.sessions, rotate_session, DEADLINE)).await
    {
        remember(&mut fuzz.pool.sessions, response.session_id);
    }
    let (mut r, p) = fuzz.sample(&s.delete_session);
    if let Some(id) = pick(&fuzz.pool.sessions, &p) {
        r.session_id = id;
    }
    let v = o::session_id(&r.session_id);
    fuzz.exercise("Session/DeleteSession", r, v, unary!(c.sessions, delete_session, DEADLINE)).await;
    let r = fuzz.sample(&s.list_sessions);
    let v = o::key("subject", &r.subject);
    fuzz.exercise("Session/ListSessions", r, v, unary!(c.sessions, list_sessions, DEADLINE)).await;
    fuzz.exercise("Session/CountSessions", CountSessionsRequest {}, None, unary!(c.sessions, count_sessions, DEADLINE))
        .await;
    fuzz.exercise("Session/ClearSessions", ClearSessionsRequest {}, None, unary!(c.sessions, clear_sessions, DEADLINE))
        .await;
    let (mut r, p) = fuzz.sample(&s.revoke_sessions);
    if let Some(handle) = pick(&fuzz.pool.handles, &p) {
        r.handles.push(handle);
    }
    let v = o::key("subject", &r.subject);
    fuzz.exercise("Session/RevokeSessions", r, v, unary!(c.sessions, revoke_sessions, DEADLINE)).await;

    // JobQueueService
    let r = fuzz.sample(&s.enqueue);
    let v = o::enqueue(&r, "");
    if let Some(response) = fuzz.exercise("Queue/Enqueue", r, v, unary!(c.queues, enqueue, DEADLINE)).await {
        remember(&mut fuzz.pool.jobs, response.job_id);
    }
    let r = fuzz.sample(&s.enqueue_batch);
    let v = o::first(
        [o::batch("requests", &r.requests, MAX_BATCH), r.requests.is_empty().then(|| "requests is empty".to_owned())]
            .into_iter()
            .chain(r.requests.iter().enumerate().map(|(i, e)| o::enqueue(e, &format!("requests[{i}].")))),
    );
    if let Some(response) = fuzz.exercise("Queue/EnqueueBatch", r, v, unary!(c.queues, enqueue_batch, DEADLINE)).await {
        for result in response.results.into_iter().take(4) {
            remember(&mut fuzz.pool.jobs, result.job_id);
        }
    }
    let r = fuzz.sample(&s.consume);
    let v = o::first([o::key("queue", &r.queue), o::duration("visibility_timeout", r.visibility_timeout.as_ref())]);
    let consume = {
        let client = c.queues.clone();
        move |request| {
            let mut client = client.clone();
            async move {
                let mut request = tonic::Request::new(tokio_stream::once(request));
                request.set_timeout(DEADLINE);
                let mut stream = client.consume(request).await?.into_inner();
                let first = match tokio::time::timeout(FIRST_MESSAGE, stream.message()).await {
                    Ok(message) => message?,
                    Err(_) => None,
                };
                Ok::<_, Status>((first, stream))
            }
        }
    };
    if let Some((first, stream)) = fuzz.exercise("Queue/Consume", r, v, consume).await {
        if let Some(consume_response::Event::Delivery(delivery)) = first.and_then(|m| m.event) {
            remember(&mut fuzz.pool.queue_leases, delivery.lease_id);
        }
        if fuzz.consumer.replace(stream).is_some() {
            // The old stream's jobs are handed back: wait until Redis is quiet again.
            fuzz.settle().await;
        }
    }
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.extend);
    if let Some(id) = pick(&fuzz.pool.queue_leases, &p) {
        r.lease_id = id;
    }
    let v = o::first([
        o::malformed_id("lease_id", &r.lease_id),
        o::duration("visibility_timeout", r.visibility_timeout.as_ref()),
    ]);
    fuzz.exercise("Queue/Extend", r, v, unary!(c.queues, extend, DEADLINE)).await;
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.nack);
    if let Some(id) = pick(&fuzz.pool.queue_leases, &p) {
        r.lease_id = id;
    }
    let v = o::first([o::malformed_id("lease_id", &r.lease_id), o::duration("retry_after", r.retry_after.as_ref())]);
    fuzz.exercise("Queue/Nack", r, v, unary!(c.queues, nack, DEADLINE)).await;
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.ack);
    if let Some(id) = pick(&fuzz.pool.queue_leases, &p) {
        r.lease_id = id;
    }
    let v = o::first([o::malformed_id("lease_id", &r.lease_id), o::value("result", &r.result)]);
    fuzz.exercise("Queue/Ack", r, v, unary!(c.queues, ack, DEADLINE)).await;
    fuzz.drain_consumer().await;
    let (mut r, p) = fuzz.sample(&s.ack_batch);
    if let (Some(id), Some(first)) = (pick(&fuzz.pool.queue_leases, &p), r.acks.first_mut()) {
        first.lease_id = id;
    }
    let v = o::first(
        [o::batch("acks", &r.acks, MAX_BATCH), r.acks.is_empty().then(|| "acks is empty".to_owned())]
            .into_iter()
            .chain(r.acks.iter().enumerate().flat_map(|(i, ack)| {
                [
                    o::malformed_id(&format!("acks[{i}].lease_id"), &ack.lease_id),
                    o::value(&format!("acks[{i}].result"), &ack.result),
                ]
            })),
    );
    fuzz.exercise("Queue/AckBatch", r, v, unary!(c.queues, ack_batch, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.get_job);
    if let Some(id) = pick(&fuzz.pool.jobs, &p) {
        r.job_id = id;
    }
    let v = o::malformed_id("job_id", &r.job_id);
    fuzz.exercise("Queue/GetJob", r, v, unary!(c.queues, get_job, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.cancel_job);
    if let Some(id) = pick(&fuzz.pool.jobs, &p) {
        r.job_id = id;
    }
    let v = o::malformed_id("job_id", &r.job_id);
    fuzz.exercise("Queue/CancelJob", r, v, unary!(c.queues, cancel_job, DEADLINE)).await;
    let r = fuzz.sample(&s.get_queue_stats);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/GetQueueStats", r, v, unary!(c.queues, get_queue_stats, DEADLINE)).await;
    let r = fuzz.sample(&s.list_dead_jobs);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/ListDeadJobs", r, v, unary!(c.queues, list_dead_jobs, DEADLINE)).await;
    let r = fuzz.sample(&s.list_jobs);
    let listable = [JobState::Ready, JobState::Scheduled, JobState::Active, JobState::Succeeded, JobState::Dead];
    let v = o::first([
        o::key("queue", &r.queue),
        (!listable.iter().any(|state| *state as i32 == r.state)).then(|| format!("state {} has no list", r.state)),
        (r.page_size > 1000).then(|| format!("page_size {}", r.page_size)),
    ]);
    fuzz.exercise("Queue/ListJobs", r, v, unary!(c.queues, list_jobs, DEADLINE)).await;
    let r = fuzz.sample(&s.configure_queue);
    let config = r.config.unwrap_or_default();
    let v = o::first([
        o::key("queue", &r.queue),
        (config.group_concurrency > 10_000).then(|| format!("group_concurrency {}", config.group_concurrency)),
        config.start_limit.as_ref().and_then(|limit| o::limit("config.start_limit", limit)),
    ]);
    let queue = r.queue.clone();
    fuzz.exercise("Queue/ConfigureQueue", r, v, unary!(c.queues, configure_queue, DEADLINE)).await;
    let r = GetQueueConfigRequest { queue };
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/GetQueueConfig", r, v, unary!(c.queues, get_queue_config, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.update_progress);
    if let Some(id) = pick(&fuzz.pool.queue_leases, &p) {
        r.lease_id = id;
    }
    let v = o::first([
        o::malformed_id("lease_id", &r.lease_id),
        (!r.value.is_finite()).then(|| format!("value {}", r.value)),
        (r.detail.len() > 4096).then(|| format!("detail of {} bytes", r.detail.len())),
    ]);
    fuzz.exercise("Queue/UpdateProgress", r, v, unary!(c.queues, update_progress, DEADLINE)).await;
    let (mut r, p) = fuzz.sample(&s.retry_dead_jobs);
    if let Some(id) = pick(&fuzz.pool.jobs, &p) {
        r.job_ids.push(id);
    }
    let v = o::first(
        std::iter::once(o::key("queue", &r.queue))
            .chain(r.job_ids.iter().enumerate().map(|(i, id)| o::malformed_id(&format!("job_ids[{i}]"), id))),
    );
    fuzz.exercise("Queue/RetryDeadJobs", r, v, unary!(c.queues, retry_dead_jobs, DEADLINE)).await;
    let r = fuzz.sample(&s.pause_queue);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/PauseQueue", r, v, unary!(c.queues, pause_queue, DEADLINE)).await;
    let r = fuzz.sample(&s.resume_queue);
    let v = o::key("queue", &r.queue);
    fuzz.exercise("Queue/ResumeQueue", r, v, unary!(c.queues, resume_queue, DEADLINE)).await;

    // envoy.service.ratelimit.v3.RateLimitService
    let r = fuzz.sample(&s.should_rate_limit);
    let v = o::first([
        r.domain.is_empty().then(|| "domain is empty".to_owned()),
        r.descriptors.is_empty().then(|| "descriptors is empty".to_owned()),
    ]);
    fuzz.exercise("Envoy/ShouldRateLimit", r, v, unary!(c.envoy, should_rate_limit, DEADLINE)).await;
}
