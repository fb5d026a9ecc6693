//! `baton.v1.LockService`: validation, the KeepAlive stream, and proto mapping.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::error::Error;
use crate::lock::leases::{self, Answers, Opening, ReleaseAnswer, optional_ttl, required_ttl};
use crate::lock::{AcquireParams, Acquisition, Holder, Lease, LockManager, MAX_PERMITS, MAX_WAIT};
use crate::proto::v1::lock_service_server::LockService;
use crate::proto::v1::{
    self as pb, AcquireRequest, AcquireResponse, DescribeRequest, DescribeResponse, KeepAliveRequest,
    KeepAliveResponse, ReleaseRequest, ReleaseResponse, RenewRequest, RenewResponse,
};
use crate::proto::{duration_to_proto, timestamp_from_micros};
use crate::validate::Limits;
use crate::{deadline, validate};

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
        leases::lease_ref(name, lease_id, &self.limits)
    }

    /// An Acquire as a caller sent it, validated.
    fn acquire_params(
        &self,
        request: AcquireRequest,
        caller_deadline: Option<Duration>,
    ) -> Result<AcquireParams, Error> {
        validate::key("name", &request.name, &self.limits)?;
        let ttl = required_ttl("ttl", request.ttl.as_ref())?;
        let wait = leases::wait(request.wait_timeout.as_ref(), Duration::ZERO, MAX_WAIT, caller_deadline)?;
        leases::owner(&request.owner)?;
        if request.permits > MAX_PERMITS {
            return Err(Error::invalid("permits", format!("must be at most {MAX_PERMITS}")));
        }
        let request_id = leases::request_id(request.request_id)?;
        crate::traces::record_name(&request.name);
        Ok(AcquireParams {
            name: request.name,
            ttl,
            wait,
            owner: request.owner,
            permits: request.permits.max(1),
            request_id,
        })
    }
}

/// How a lock's KeepAlive stream answers: heartbeats with the lease, and a `release`.
const ANSWERS: Answers<KeepAliveRequest, KeepAliveResponse> = Answers {
    heartbeat: |lease, renewed| KeepAliveResponse {
        lease: Some(lease_to_proto(lease)),
        renewed,
        acquired: true,
        ..Default::default()
    },
    release: Some(ReleaseAnswer {
        asks: |request| request.release,
        answer: |lease, released| KeepAliveResponse {
            lease: Some(lease_to_proto(lease)),
            released,
            ..Default::default()
        },
    }),
};

pub(crate) fn lease_to_proto(lease: Lease) -> pb::Lease {
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
    type KeepAliveStream = leases::Answering<KeepAliveResponse>;

    async fn acquire(&self, request: Request<AcquireRequest>) -> Result<Response<AcquireResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let caller_deadline = deadline::remaining(request.metadata());
        let params = self.acquire_params(request.into_inner(), caller_deadline)?;
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
        let namespace = crate::auth::namespace(&request);
        let caller_deadline = deadline::remaining(request.metadata());
        let mut requests = request.into_inner();
        let first = leases::first_message(&mut requests, &self.draining).await?;
        let locks = self.locks.scoped(&namespace);
        let granted_here = first.acquire.is_some();
        let lease = match first.acquire {
            // The lease's whole life on this stream: granted here, then kept as any other.
            Some(acquire) => {
                let params = self.acquire_params(acquire, caller_deadline).map_err(|err| err.within("acquire"))?;
                match locks.acquire(&params, &self.draining).await? {
                    Acquisition::Acquired(lease) => lease,
                    Acquisition::Busy(holder) => {
                        let busy = KeepAliveResponse { holder: Some(holder_to_proto(holder)), ..Default::default() };
                        return Ok(Response::new(leases::answer_once(busy)));
                    }
                }
            }
            None => {
                let opening = Opening { name: first.name, lease_id: first.lease_id, ttl: first.ttl };
                leases::renew_opening(&locks, opening, &self.limits).await?
            }
        };
        Ok(Response::new(leases::keep(locks, lease, granted_here, requests, self.draining.clone(), ANSWERS)))
    }
}
