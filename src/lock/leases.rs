//! What lock leases and leadership leases share: their fields as callers send them, and the
//! KeepAlive stream — one liveness contract (see `LockService.KeepAlive` in lock.proto).

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures::StreamExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::{Status, Streaming};
use tracing::Instrument;

use crate::error::Error;
use crate::lock::{Lease, MAX_TTL, MIN_TTL, is_well_formed_lease_id};
use crate::proto::duration_from_proto;
use crate::validate::{self, Limits};

/// How long a KeepAlive stream may stay open without naming its lease.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);

/// Leases a KeepAlive stream can hold.
pub trait Leases: Clone + Send + Sync + 'static {
    /// Counts leases lost for want of a heartbeat.
    const LOST_METRIC: &'static str;
    /// The pattern on the trace spans of renewals.
    const PATTERN: &'static str;

    /// Extends a held lease; `ttl` zero keeps its current ttl.
    fn renew(&self, name: &str, lease_id: &str, ttl: Duration) -> impl Future<Output = Result<Lease, Error>> + Send;
    /// Gives a lease up; `false` when it was already gone.
    fn release(&self, name: &str, lease_id: &str) -> impl Future<Output = Result<bool, Error>> + Send;
    /// Whether the lease is held right now, by Redis's clock.
    fn is_held(&self, name: &str, lease_id: &str) -> impl Future<Output = Result<bool, Error>> + Send;
}

/// The first message of a KeepAlive stream: the lease it holds.
pub struct Opening {
    pub name: String,
    pub lease_id: String,
    pub ttl: Option<prost_types::Duration>,
}

/// A name and a lease id as a caller may send them.
pub fn lease_ref(name: &str, lease_id: &str, limits: &Limits) -> Result<(), Error> {
    validate::key("name", name, limits)?;
    if !is_well_formed_lease_id(lease_id) {
        return Err(Error::invalid("lease_id", "is not a lease id issued by Baton"));
    }
    Ok(())
}

const MAX_OWNER_BYTES: usize = 256;
const MAX_REQUEST_ID_BYTES: usize = 128;

/// A free-text owner, shown to others.
pub fn owner(owner: &str) -> Result<(), Error> {
    if owner.len() > MAX_OWNER_BYTES {
        return Err(Error::invalid("owner", format!("must be at most {MAX_OWNER_BYTES} bytes")));
    }
    Ok(())
}

/// An optional idempotency key; empty means none.
pub fn request_id(request_id: String) -> Result<Option<String>, Error> {
    match request_id.len() {
        0 => Ok(None),
        n if n > MAX_REQUEST_ID_BYTES => {
            Err(Error::invalid("request_id", format!("must be at most {MAX_REQUEST_ID_BYTES} bytes")))
        }
        _ => Ok(Some(request_id)),
    }
}

/// Answer a waiting Acquire or Campaign this long before the caller's deadline, so it gets
/// a "not acquired" answer rather than DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

/// How long to wait: `wait_timeout`, or `unset` when it is zero; at most `max`; cut to end
/// before the caller's deadline.
pub fn wait(
    value: Option<&prost_types::Duration>,
    unset: Duration,
    max: Duration,
    caller_deadline: Option<Duration>,
) -> Result<Duration, Error> {
    let wait = duration_from_proto("wait_timeout", value)?.unwrap_or(unset);
    if wait > max {
        return Err(Error::invalid("wait_timeout", format!("must be at most {max:?}")));
    }
    Ok(caller_deadline.map_or(wait, |left| wait.min(left.saturating_sub(DEADLINE_MARGIN))))
}

/// Sleeps between two attempts of a waiting Acquire or Campaign, under a "wait" span: until
/// woken (`notified`: a release or resignation), `nap` passes, or the replica drains (true).
pub async fn nap(
    notified: std::pin::Pin<&mut tokio::sync::futures::Notified<'_>>,
    nap: Duration,
    draining: &CancellationToken,
    pattern: &'static str,
) -> bool {
    async {
        tokio::select! {
            () = notified => false,
            () = tokio::time::sleep(nap) => false,
            () = draining.cancelled() => true,
        }
    }
    .instrument(crate::traces::wait_span(pattern))
    .await
}

/// A ttl for acquiring: required, 100 ms ..= 1 h.
pub fn required_ttl(field: &str, value: Option<&prost_types::Duration>) -> Result<Duration, Error> {
    let ttl = duration_from_proto(field, value)?.ok_or_else(|| Error::invalid(field, "is required"))?;
    check_ttl_range(field, ttl)
}

/// A ttl for renewing: zero keeps the lease's current ttl.
pub fn optional_ttl(field: &str, value: Option<&prost_types::Duration>) -> Result<Duration, Error> {
    match duration_from_proto(field, value)? {
        Some(ttl) => check_ttl_range(field, ttl),
        None => Ok(Duration::ZERO),
    }
}

fn check_ttl_range(field: &str, ttl: Duration) -> Result<Duration, Error> {
    if !(MIN_TTL..=MAX_TTL).contains(&ttl) {
        return Err(Error::invalid(field, format!("must be between {MIN_TTL:?} and {MAX_TTL:?}")));
    }
    Ok(ttl)
}

/// Opens a KeepAlive stream: reads the first message (`open` takes the lease out of it),
/// renews the lease once — failing the call itself when it is not held — and answers each
/// heartbeat after that with `answers`.
pub async fn serve<L: Leases, Request: Send + 'static, Response: Send + 'static>(
    leases: L,
    mut requests: Streaming<Request>,
    limits: &Limits,
    draining: CancellationToken,
    open: impl FnOnce(Request) -> Opening,
    answers: Answers<Request, Response>,
) -> Result<Answering<Response>, Status> {
    let first = open(first_message(&mut requests, &draining).await?);
    let lease = renew_opening(&leases, first, limits).await?;
    Ok(keep(leases, lease, false, requests, draining, answers))
}

/// A KeepAlive stream's first message, which must come within FIRST_MESSAGE_WAIT.
pub async fn first_message<Request>(
    requests: &mut Streaming<Request>,
    draining: &CancellationToken,
) -> Result<Request, Status> {
    if draining.is_cancelled() {
        return Err(Error::ShuttingDown.into());
    }
    match tokio::time::timeout(FIRST_MESSAGE_WAIT, requests.message()).await {
        Ok(Ok(Some(first))) => Ok(first),
        Ok(Err(status)) => Err(status),
        Ok(Ok(None)) | Err(_) => {
            Err(Error::invalid("name", "the first message must name the lease (name, lease_id) or acquire one").into())
        }
    }
}

/// Renews the lease a first message names: proof that it is held, or the call's failure.
pub async fn renew_opening<L: Leases>(leases: &L, first: Opening, limits: &Limits) -> Result<Lease, Status> {
    lease_ref(&first.name, &first.lease_id, limits)?;
    let ttl = optional_ttl("ttl", first.ttl.as_ref())?;
    Ok(leases.renew(&first.name, &first.lease_id, ttl).await?)
}

/// A stream of one answer, then the end (OK).
pub fn answer_once<Response: Send + 'static>(answer: Response) -> Answering<Response> {
    Box::pin(futures::stream::once(std::future::ready(Ok(answer))))
}

/// How a KeepAlive stream answers its messages.
pub struct Answers<Request, Response> {
    /// The answer to the first message (renewed: true) and to each heartbeat.
    pub heartbeat: fn(Lease, bool) -> Response,
    /// `None` where a stream cannot release its lease.
    pub release: Option<ReleaseAnswer<Request, Response>>,
}

/// A message that releases the stream's lease, which ends the stream.
pub struct ReleaseAnswer<Request, Response> {
    /// Whether a message asks to release.
    pub asks: fn(&Request) -> bool,
    /// The answer, saying whether it released the lease (false: it was already gone).
    pub answer: fn(Lease, bool) -> Response,
}

/// Answers with `lease`, already held (renewed by the first message, or `granted_here`),
/// then keeps it alive on the stream's heartbeats. The answers are made as tonic asks for
/// them, in its task: no task or channel of the stream's own sits between a heartbeat and
/// its answer (each was a hand-over, and at one caller a thread's wake-up).
pub fn keep<L: Leases, Request: Send + 'static, Response: Send + 'static>(
    leases: L,
    lease: Lease,
    granted_here: bool,
    requests: Streaming<Request>,
    draining: CancellationToken,
    answers: Answers<Request, Response>,
) -> Answering<Response> {
    let first = (answers.heartbeat)(lease.clone(), true);
    // By this process's clock, the lease surely ends `ttl` after a renewal's answer.
    let renewed_at = Instant::now();
    // Heartbeats closer than ttl/10 to a renewal renew nothing; but a lease granted on this
    // stream renews on the first, which lets a client whose acquire waited date the lease
    // by its own clock.
    let renewable_from = if granted_here { renewed_at } else { renewed_at + lease.ttl / 10 };
    let kept = Kept {
        held: Held { leases, lease, abandoned_releases: true },
        heartbeats: requests,
        trace: crate::traces::stream_context(),
        draining,
        answers,
        renewed_at,
        renewable_from,
        sending: true,
        ended: false,
    };
    Box::pin(futures::stream::once(std::future::ready(Ok(first))).chain(futures::stream::unfold(kept, next_answer)))
}

/// A KeepAlive stream's answers, produced as they are polled.
pub type Answering<Response> = Pin<Box<dyn futures::Stream<Item = Result<Response, Status>> + Send>>;

/// A KeepAlive stream's answering side, between two answers.
struct Kept<L: Leases, Request, Response> {
    held: Held<L>,
    heartbeats: Streaming<Request>,
    /// The KeepAlive call's span, which each renewal's span links to.
    trace: Option<opentelemetry::trace::SpanContext>,
    draining: CancellationToken,
    answers: Answers<Request, Response>,
    renewed_at: Instant,
    renewable_from: Instant,
    /// False once the client half-closed: only its heartbeats stop.
    sending: bool,
    /// The last answer has been given.
    ended: bool,
}

/// The stream's lease. Dropped while `abandoned_releases` — the client went away: tonic
/// dropped the answers, or the stream broke — it releases the lease at once rather than
/// leave it to expire.
struct Held<L: Leases> {
    leases: L,
    lease: Lease,
    abandoned_releases: bool,
}

impl<L: Leases> Held<L> {
    /// The lease's fate is settled (released, lost, kept elsewhere, or left for the client
    /// to resume on another replica): the stream's end no longer releases it.
    fn settle(&mut self) {
        self.abandoned_releases = false;
    }
}

impl<L: Leases> Drop for Held<L> {
    fn drop(&mut self) {
        if !self.abandoned_releases {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let (leases, lease) = (self.leases.clone(), self.lease.clone());
            runtime.spawn(async move { release_abandoned(&leases, &lease).await });
        }
    }
}

/// Renews the lease on each of the client's heartbeats, and never otherwise: a holder that
/// stops sending (frozen, paused, cut off) loses the lease at most its ttl after the last
/// renewal, however long its connection lingers. Every heartbeat is answered, in order, so
/// the client can match each answer to the heartbeat it sent. Ends when the client goes
/// away (the lease is released at once), when it asks to release the lease (answered, then
/// OK), when the lease runs out after the last renewal
/// (FAILED_PRECONDITION, or OK when another stream keeps it alive), or when this replica
/// drains (UNAVAILABLE; the lease stays, for the client to resume elsewhere). A half-close
/// only stops the heartbeats.
async fn next_answer<L: Leases, Request, Response>(
    mut kept: Kept<L, Request, Response>,
) -> Option<(Result<Response, Status>, Kept<L, Request, Response>)> {
    if kept.ended {
        return None;
    }
    loop {
        let expires = kept.renewed_at + kept.held.lease.ttl;
        tokio::select! {
            heartbeat = kept.heartbeats.message(), if kept.sending => match heartbeat {
                Ok(Some(message)) if kept.answers.release.as_ref().is_some_and(|release| (release.asks)(&message)) => {
                    let release = kept.answers.release.as_ref()?.answer;
                    kept.held.settle();
                    kept.ended = true;
                    let lease = &kept.held.lease;
                    let answer = match kept.held.leases.release(&lease.name, &lease.lease_id).await {
                        Ok(released) => Ok(release(lease.clone(), released)),
                        Err(err) => Err(err.into()),
                    };
                    return Some((answer, kept));
                }
                Ok(Some(_)) => {
                    let renewed = if Instant::now() < kept.renewable_from {
                        false
                    } else {
                        let lease = &kept.held.lease;
                        // A span per renewal, linked to the stream's, not one held for hours.
                        let span = crate::traces::message_span("renew", L::PATTERN, &lease.name, kept.trace.as_ref(), "");
                        match kept.held.leases.renew(&lease.name, &lease.lease_id, lease.ttl).instrument(span).await {
                            Ok(renewal) => {
                                kept.held.lease = renewal;
                                kept.renewed_at = Instant::now();
                                kept.renewable_from = kept.renewed_at + kept.held.lease.ttl / 10;
                                true
                            }
                            // The client's own deadline runs; a later heartbeat renews if the
                            // lease is still held by then.
                            Err(Error::Unavailable) => false,
                            Err(err) => {
                                metrics::counter!(L::LOST_METRIC).increment(1);
                                return Some((Err(err.into()), kept.end()));
                            }
                        }
                    };
                    let answer = (kept.answers.heartbeat)(kept.held.lease.clone(), renewed);
                    return Some((Ok(answer), kept));
                }
                Ok(None) => kept.sending = false,
                // Cancelled or cut off.
                Err(_) => {
                    kept.held.settle();
                    release_abandoned(&kept.held.leases, &kept.held.lease).await;
                    return None;
                }
            },
            () = kept.draining.cancelled() => return Some((Err(Error::ShuttingDown.into()), kept.end())),
            () = tokio::time::sleep_until(expires) => {
                // Another stream of the same holder (a client that resumed elsewhere, or
                // retired this one) may be keeping the lease alive: then this one just ends.
                // When Redis cannot say, the client is told to ask again.
                let lease = &kept.held.lease;
                match kept.held.leases.is_held(&lease.name, &lease.lease_id).await {
                    Ok(true) => {
                        kept.held.settle();
                        return None;
                    }
                    Ok(false) => {}
                    Err(err) => return Some((Err(err.into()), kept.end())),
                }
                metrics::counter!(L::LOST_METRIC).increment(1);
                tracing::info!(lease.name = %lease.name, "no heartbeat within the lease's ttl; lease lost");
                let lost = Error::LeaseNotHeld {
                    name: lease.name.clone(),
                    why: format!("no heartbeat within the lease's ttl ({:?}), so it expired", lease.ttl),
                };
                return Some((Err(lost.into()), kept.end()));
            }
        }
    }
}

impl<L: Leases, Request, Response> Kept<L, Request, Response> {
    /// The stream's last answer is being given, and its end leaves the lease as it is.
    fn end(mut self) -> Self {
        self.held.settle();
        self.ended = true;
        self
    }
}

/// The KeepAlive client went away: its lease is released at once rather than left to expire.
async fn release_abandoned<L: Leases>(leases: &L, lease: &Lease) {
    match leases.release(&lease.name, &lease.lease_id).await {
        Ok(_) => tracing::debug!(lease.name = %lease.name, "keepalive client left; lease released"),
        // The lease then expires after its ttl, as if the process had died.
        Err(err) => tracing::warn!(lease.name = %lease.name, error = %err, "keepalive client left; release failed"),
    }
}
