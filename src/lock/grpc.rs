//! `baton.v1.LockService`: validation, the KeepAlive stream, and proto mapping.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::config::Limits;
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
use crate::{deadline, validate};

const MAX_OWNER_BYTES: usize = 256;
const MAX_REQUEST_ID_BYTES: usize = 128;
/// While Redis is unreachable, KeepAlive retries this often (bounded by ttl/3).
const KEEPALIVE_RETRY: Duration = Duration::from_millis(250);
/// Answer a waiting Acquire this long before the caller's deadline, so it gets
/// `acquired = false` rather than DEADLINE_EXCEEDED.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);

pub struct LockGrpc {
    locks: LockManager,
    limits: Limits,
    /// Cancelled when the server shuts down: KeepAlive streams end with UNAVAILABLE and
    /// keep their leases, for the client to resume on another replica.
    shutdown: CancellationToken,
}

impl LockGrpc {
    pub fn new(locks: LockManager, limits: Limits, shutdown: CancellationToken) -> Self {
        Self { locks, limits, shutdown }
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
        let response = match self.locks.scoped(&namespace).acquire(&params).await? {
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

    async fn keep_alive(&self, request: Request<KeepAliveRequest>) -> Result<Response<Self::KeepAliveStream>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        self.lease_ref(&request.name, &request.lease_id)?;
        let ttl = optional_ttl("ttl", request.ttl.as_ref())?;
        // The first renewal proves the lease is held; failing it fails the call itself.
        let first = self.locks.scoped(&namespace).renew(&request.name, &request.lease_id, ttl).await?;
        let (sender, receiver) = mpsc::channel(4);
        let _ = sender.try_send(Ok(KeepAliveResponse { lease: Some(lease_to_proto(first.clone())) }));
        tokio::spawn(keep_renewing(self.locks.scoped(&namespace), first, sender, self.shutdown.clone()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

/// Renews at about ttl/3 until the client goes away (the lease is released at once), the
/// lease is lost (the stream ends FAILED_PRECONDITION), or the server shuts down (the
/// stream ends UNAVAILABLE and the lease stays, for the client to resume elsewhere).
async fn keep_renewing(
    locks: LockManager,
    mut lease: Lease,
    sender: mpsc::Sender<Result<KeepAliveResponse, Status>>,
    shutdown: CancellationToken,
) {
    let period = lease.ttl / 3;
    let mut next = period;
    loop {
        tokio::select! {
            () = sender.closed() => {
                match locks.release(&lease.name, &lease.lease_id).await {
                    Ok(_) => tracing::debug!(lock.name = %lease.name, "keepalive client left; lease released"),
                    // The lease then expires after its ttl, as if the process had died.
                    Err(err) => tracing::warn!(lock.name = %lease.name, error = %err, "keepalive client left; release failed"),
                }
                return;
            }
            () = shutdown.cancelled() => {
                let _ = sender.send(Err(Error::ShuttingDown.into())).await;
                return;
            }
            () = tokio::time::sleep(next) => {}
        }
        match locks.renew(&lease.name, &lease.lease_id, lease.ttl).await {
            Ok(renewed) => {
                lease = renewed;
                next = period;
                if sender.send(Ok(KeepAliveResponse { lease: Some(lease_to_proto(lease.clone())) })).await.is_err() {
                    // Client gone: the next loop turn sees `closed` and releases.
                    next = Duration::ZERO;
                }
            }
            Err(Error::Unavailable) => next = KEEPALIVE_RETRY.min(period),
            Err(err) => {
                metrics::counter!("baton_lock_lost_total").increment(1);
                tracing::warn!(lock.name = %lease.name, "keepalive lease lost");
                let _ = sender.send(Err(err.into())).await;
                return;
            }
        }
    }
}
