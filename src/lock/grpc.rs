//! `baton.v1.LockService`: validation, the KeepAlive stream, and proto mapping.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::lock::{
    AcquireParams, Acquisition, Holder, Lease, LockManager, MAX_PERMITS, MAX_TTL, MAX_WAIT, MIN_TTL,
    is_well_formed_lease_id,
};
use crate::proto::v1::lock_service_server::LockService;
use crate::proto::v1::{
    self as pb, AcquireRequest, AcquireResponse, DescribeRequest, DescribeResponse, KeepAliveRequest,
    KeepAliveResponse, ReleaseRequest, ReleaseResponse, RenewRequest, RenewResponse,
};
use crate::proto::{duration_from_proto, duration_to_proto, timestamp_from_micros};
use crate::validate::Limits;
use crate::{deadline, validate};

const MAX_OWNER_BYTES: usize = 256;
const MAX_REQUEST_ID_BYTES: usize = 128;
/// How long a KeepAlive stream may stay open without naming its lease.
const FIRST_MESSAGE_WAIT: Duration = Duration::from_secs(10);
/// Answer a waiting Acquire this long before the caller's deadline, so it gets
/// `acquired = false` rather than DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

pub struct LockGrpc {
    locks: LockManager,
    limits: Limits,
    /// Cancelled when this replica starts draining: Acquires grant nothing more, and
    /// KeepAlive streams end with UNAVAILABLE and keep their leases, for the client to
    /// resume on another replica.
    draining: CancellationToken,
}

impl LockGrpc {
    pub fn new(locks: LockManager, limits: Limits, draining: CancellationToken) -> Self {
        Self { locks, limits, draining }
    }

    fn lease_ref(&self, name: &str, lease_id: &str) -> Result<(), Error> {
        validate::key("name", name, &self.limits)?;
        if !is_well_formed_lease_id(lease_id) {
            return Err(Error::invalid("lease_id", "is not a lease id issued by Baton"));
        }
        Ok(())
    }
}

/// A ttl for Acquire: required, 100 ms ..= 1 h.
fn required_ttl(field: &str, value: Option<&prost_types::Duration>) -> Result<Duration, Error> {
    let ttl = duration_from_proto(field, value)?.ok_or_else(|| Error::invalid(field, "is required"))?;
    check_ttl_range(field, ttl)
}

/// A ttl for Renew/KeepAlive: zero keeps the lease's current ttl.
fn optional_ttl(field: &str, value: Option<&prost_types::Duration>) -> Result<Duration, Error> {
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

fn lease_to_proto(lease: Lease) -> pb::Lease {
    pb::Lease {
        name: lease.name,
        lease_id: lease.lease_id,
        fencing_token: lease.fencing_token,
        expires_at: Some(timestamp_from_micros(lease.expires_at_micros)),
        ttl: Some(duration_to_proto(lease.ttl)),
    }
}

fn holder_to_proto(holder: Holder) -> pb::Holder {
    pb::Holder {
        owner: holder.owner,
        expires_at: Some(timestamp_from_micros(holder.expires_at_micros)),
        fencing_token: holder.fencing_token,
    }
}

#[tonic::async_trait]
impl LockService for LockGrpc {
    type KeepAliveStream = ReceiverStream<Result<KeepAliveResponse, Status>>;

    async fn acquire(&self, request: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let caller_deadline = deadline::remaining(request.metadata());
        let request = request.into_inner();
        validate::key("name", &request.name, &self.limits)?;
        let ttl = required_ttl("ttl", request.ttl.as_ref())?;
        let mut wait = duration_from_proto("wait_timeout", request.wait_timeout.as_ref())?.unwrap_or_default();
        if wait > MAX_WAIT {
            return Err(Error::invalid("wait_timeout", format!("must be at most {MAX_WAIT:?}")).into());
        }
        if let Some(left) = caller_deadline {
            wait = wait.min(left.saturating_sub(DEADLINE_MARGIN));
        }
        if request.owner.len() > MAX_OWNER_BYTES {
            return Err(Error::invalid("owner", format!("must be at most {MAX_OWNER_BYTES} bytes")).into());
        }
        if request.permits > MAX_PERMITS {
            return Err(Error::invalid("permits", format!("must be at most {MAX_PERMITS}")).into());
        }
        let request_id = match request.request_id.as_str() {
            "" => None,
            id if id.len() > MAX_REQUEST_ID_BYTES => {
                return Err(
                    Error::invalid("request_id", format!("must be at most {MAX_REQUEST_ID_BYTES} bytes")).into()
                );
            }
            id => Some(id.to_owned()),
        };
        let params = AcquireParams {
            name: request.name,
            ttl,
            wait,
            owner: request.owner,
            permits: request.permits.max(1),
            request_id,
        };
        let response = match self.locks.scoped(&namespace).acquire(&params, &self.draining).await? {
            Acquisition::Acquired(lease) => {
                AcquireResponse { acquired: true, lease: Some(lease_to_proto(lease)), holder: None }
            }
            Acquisition::Busy(holder) => {
                AcquireResponse { acquired: false, lease: None, holder: Some(holder_to_proto(holder)) }
            }
        };
        Ok(Response::new(response))
    }

    async fn renew(&self, request: Request<RenewRequest>) -> Result<Response<RenewResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        self.lease_ref(&request.name, &request.lease_id)?;
        let ttl = optional_ttl("ttl", request.ttl.as_ref())?;
        let lease = self.locks.scoped(&namespace).renew(&request.name, &request.lease_id, ttl).await?;
        Ok(Response::new(RenewResponse { lease: Some(lease_to_proto(lease)) }))
    }

    async fn release(&self, request: Request<ReleaseRequest>) -> Result<Response<ReleaseResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        self.lease_ref(&request.name, &request.lease_id)?;
        let released = self.locks.scoped(&namespace).release(&request.name, &request.lease_id).await?;
        Ok(Response::new(ReleaseResponse { released }))
    }

    async fn describe(&self, request: Request<DescribeRequest>) -> Result<Response<DescribeResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("name", &request.name, &self.limits)?;
        let holders = self.locks.scoped(&namespace).describe(&request.name).await?;
        Ok(Response::new(DescribeResponse {
            held: !holders.is_empty(),
            holders: holders.into_iter().map(holder_to_proto).collect(),
        }))
    }

    async fn keep_alive(
        &self,
        request: Request<Streaming<KeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        if self.draining.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let namespace = crate::auth::namespace(&request);
        let mut requests = request.into_inner();
        let first = match tokio::time::timeout(FIRST_MESSAGE_WAIT, requests.message()).await {
            Ok(Ok(Some(first))) => first,
            Ok(Err(status)) => return Err(status),
            Ok(Ok(None)) | Err(_) => {
                return Err(Error::invalid("name", "the first message must name the lease (name, lease_id)").into());
            }
        };
        self.lease_ref(&first.name, &first.lease_id)?;
        let ttl = optional_ttl("ttl", first.ttl.as_ref())?;
        let locks = self.locks.scoped(&namespace);
        // The first renewal proves the lease is held; failing it fails the call itself.
        let lease = locks.renew(&first.name, &first.lease_id, ttl).await?;
        let (sender, receiver) = mpsc::channel(4);
        let _ = sender.try_send(Ok(KeepAliveResponse { lease: Some(lease_to_proto(lease.clone())), renewed: true }));
        tokio::spawn(answer_heartbeats(locks, lease, requests, sender, self.draining.clone()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Renews the lease on each of the client's heartbeats, and never otherwise: a holder that
/// stops sending (frozen, paused, cut off) loses the lease at most its ttl after the last
/// renewal, however long its connection lingers. Every heartbeat is answered, in order, so
/// the client can match each answer to the heartbeat it sent. Ends when the client goes
/// away (the lease is released at once), when the lease runs out after the last renewal
/// (FAILED_PRECONDITION, or OK when another stream keeps it alive), or when this replica
/// drains (UNAVAILABLE; the lease stays, for the client to resume elsewhere). A half-close
/// only stops the heartbeats.
async fn answer_heartbeats(
    locks: LockManager,
    mut lease: Lease,
    mut heartbeats: Streaming<KeepAliveRequest>,
    sender: mpsc::Sender<Result<KeepAliveResponse, Status>>,
    draining: CancellationToken,
) {
    // By this process's clock, the lease surely ends `ttl` after a renewal's answer.
    let mut renewed_at = Instant::now();
    let mut sending = true;
    loop {
        tokio::select! {
            heartbeat = heartbeats.message(), if sending => match heartbeat {
                Ok(Some(_)) => {
                    let renewed = if renewed_at.elapsed() < lease.ttl / 10 {
                        false
                    } else {
                        match locks.renew(&lease.name, &lease.lease_id, lease.ttl).await {
                            Ok(renewal) => {
                                lease = renewal;
                                renewed_at = Instant::now();
                                true
                            }
                            // The client's own deadline runs; a later heartbeat renews if the
                            // lease is still held by then.
                            Err(Error::Unavailable) => false,
                            Err(err) => {
                                metrics::counter!("baton_lock_lost_total").increment(1);
                                let _ = sender.send(Err(err.into())).await;
                                return;
                            }
                        }
                    };
                    let answer = KeepAliveResponse { lease: Some(lease_to_proto(lease.clone())), renewed };
                    if sender.send(Ok(answer)).await.is_err() {
                        release_abandoned(&locks, &lease).await;
                        return;
                    }
                }
                Ok(None) => sending = false,
                // Cancelled or cut off.
                Err(_) => {
                    release_abandoned(&locks, &lease).await;
                    return;
                }
            },
            () = sender.closed() => {
                release_abandoned(&locks, &lease).await;
                return;
            }
            () = draining.cancelled() => {
                let _ = sender.send(Err(Error::ShuttingDown.into())).await;
                return;
            }
            () = tokio::time::sleep_until(renewed_at + lease.ttl) => {
                // Another stream of the same holder (a client that resumed elsewhere, or
                // retired this one) may be keeping the lease alive: then this one just ends.
                // When Redis cannot say, the client is told to ask again.
                match locks.is_held(&lease.name, &lease.lease_id).await {
                    Ok(true) => return,
                    Ok(false) => {}
                    Err(err) => {
                        let _ = sender.send(Err(err.into())).await;
                        return;
                    }
                }
                metrics::counter!("baton_lock_lost_total").increment(1);
                tracing::info!(lock.name = %lease.name, "no heartbeat within the lease's ttl; lease lost");
                let lost = Error::LeaseNotHeld {
                    name: lease.name.clone(),
                    why: format!("no heartbeat within the lease's ttl ({:?}), so it expired", lease.ttl),
                };
                let _ = sender.send(Err(lost.into())).await;
                return;
            }
        }
    }
}

/// The KeepAlive client went away: its lease is released at once rather than left to expire.
async fn release_abandoned(locks: &LockManager, lease: &Lease) {
    match locks.release(&lease.name, &lease.lease_id).await {
        Ok(_) => tracing::debug!(lock.name = %lease.name, "keepalive client left; lease released"),
        // The lease then expires after its ttl, as if the process had died.
        Err(err) => tracing::warn!(lock.name = %lease.name, error = %err, "keepalive client left; release failed"),
    }
}
