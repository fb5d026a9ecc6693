//! `baton.v1.ElectionService`: validation, the Observe stream, and proto mapping.

use std::time::Duration;

use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::deadline;
use crate::election::{Campaign, CampaignParams, Change, ChangeKind, ElectionManager, Leader, MAX_VALUE_BYTES};
use crate::error::Error;
use crate::lock::grpc::lease_to_proto;
use crate::lock::leases::{self, Answers, Opening, required_ttl};
use crate::proto::timestamp_from_micros;
use crate::proto::v1::election_service_server::ElectionService;
use crate::proto::v1::observe_response::Kind;
use crate::proto::v1::{
    self as pb, CampaignRequest, CampaignResponse, ElectionServiceKeepAliveRequest, ElectionServiceKeepAliveResponse,
    LeaderRequest, LeaderResponse, ObserveRequest, ObserveResponse, ProclaimRequest, ProclaimResponse, ResignRequest,
    ResignResponse,
};
use crate::task::serve_until_drained;
use crate::validate::{self, Limits};

/// The longest a Campaign waits, and how long a Campaign without `wait_timeout` waits.
const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Changes buffered per Observe stream before the observer counts as falling behind.
const OBSERVE_BUFFER: usize = 16;

pub struct ElectionGrpc {
    elections: ElectionManager,
    limits: Limits,
    /// Cancelled when this replica starts draining: Campaigns end, Observe and KeepAlive
    /// streams end with UNAVAILABLE (leases are kept, for the client to resume elsewhere).
    draining: CancellationToken,
}

impl ElectionGrpc {
    pub fn new(elections: ElectionManager, limits: Limits, draining: CancellationToken) -> Self {
        Self { elections, limits, draining }
    }
}

fn value(value: &[u8]) -> Result<(), Error> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(Error::invalid("value", format!("must be at most {MAX_VALUE_BYTES} bytes")));
    }
    Ok(())
}

fn leader_to_proto(leader: Leader) -> pb::Leader {
    pb::Leader {
        name: leader.name,
        value: leader.value,
        term: leader.term,
        since: Some(timestamp_from_micros(leader.since_micros)),
        owner: leader.owner,
        expires_at: Some(timestamp_from_micros(leader.expires_at_micros)),
    }
}

fn change_to_proto(change: &Change) -> ObserveResponse {
    let kind = match change.kind {
        ChangeKind::Current => Kind::Current,
        ChangeKind::Elected => Kind::Elected,
        ChangeKind::Proclaimed => Kind::Proclaimed,
        ChangeKind::Resigned => Kind::Resigned,
        ChangeKind::Expired => Kind::Expired,
    };
    ObserveResponse {
        kind: kind.into(),
        leader: change.leader.clone().map(leader_to_proto),
        at: Some(timestamp_from_micros(change.at_micros)),
    }
}

#[tonic::async_trait]
impl ElectionService for ElectionGrpc {
    type ObserveStream = ReceiverStream<Result<ObserveResponse, Status>>;
    type KeepAliveStream = leases::Answering<ElectionServiceKeepAliveResponse>;

    async fn campaign(&self, request: Request<CampaignRequest>) -> Result<Response<CampaignResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let caller_deadline = deadline::remaining(request.metadata());
        let request = request.into_inner();
        validate::key("name", &request.name, &self.limits)?;
        let ttl = required_ttl("ttl", request.ttl.as_ref())?;
        let wait = leases::wait(request.wait_timeout.as_ref(), MAX_WAIT, MAX_WAIT, caller_deadline)?;
        value(&request.value)?;
        leases::owner(&request.owner)?;
        let params = CampaignParams {
            name: request.name,
            ttl,
            wait,
            value: request.value,
            owner: request.owner,
            request_id: leases::request_id(request.request_id)?,
        };
        crate::traces::record_name(&params.name);
        let response = match self.elections.scoped(&namespace).campaign(&params, &self.draining).await? {
            Campaign::Elected { lease, leader } => CampaignResponse {
                elected: true,
                lease: Some(lease_to_proto(lease)),
                leader: Some(leader_to_proto(leader)),
            },
            Campaign::NotElected(leader) => {
                CampaignResponse { elected: false, lease: None, leader: leader.map(leader_to_proto) }
            }
        };
        Ok(Response::new(response))
    }

    async fn proclaim(&self, request: Request<ProclaimRequest>) -> Result<Response<ProclaimResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        leases::lease_ref(&request.name, &request.lease_id, &self.limits)?;
        value(&request.value)?;
        let leader =
            self.elections.scoped(&namespace).proclaim(&request.name, &request.lease_id, &request.value).await?;
        Ok(Response::new(ProclaimResponse { leader: Some(leader_to_proto(leader)) }))
    }

    async fn leader(&self, request: Request<LeaderRequest>) -> Result<Response<LeaderResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("name", &request.name, &self.limits)?;
        let leader = self.elections.scoped(&namespace).leader(&request.name).await?;
        Ok(Response::new(LeaderResponse { leader: leader.map(leader_to_proto) }))
    }

    async fn resign(&self, request: Request<ResignRequest>) -> Result<Response<ResignResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        leases::lease_ref(&request.name, &request.lease_id, &self.limits)?;
        let resigned = self.elections.scoped(&namespace).resign(&request.name, &request.lease_id).await?;
        Ok(Response::new(ResignResponse { resigned }))
    }

    async fn observe(&self, request: Request<ObserveRequest>) -> Result<Response<Self::ObserveStream>, Status> {
        if self.draining.is_cancelled() {
            return Err(Error::ShuttingDown.into());
        }
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("name", &request.name, &self.limits)?;
        let observation = self.elections.scoped(&namespace).observe(&request.name).await?;
        let changes = futures::stream::unfold(observation, |mut observation| async move {
            let change = observation.next().await;
            Some((Ok(change_to_proto(&change)), observation))
        });
        Ok(Response::new(serve_until_drained(changes, self.draining.clone(), OBSERVE_BUFFER)))
    }

    async fn keep_alive(
        &self,
        request: Request<Streaming<ElectionServiceKeepAliveRequest>>,
    ) -> Result<Response<Self::KeepAliveStream>, Status> {
        let namespace = crate::auth::namespace(&request);
        let stream = leases::serve(
            self.elections.scoped(&namespace),
            request.into_inner(),
            &self.limits,
            self.draining.clone(),
            |first: ElectionServiceKeepAliveRequest| Opening {
                name: first.name,
                lease_id: first.lease_id,
                ttl: first.ttl,
            },
            Answers {
                heartbeat: |lease, renewed| ElectionServiceKeepAliveResponse {
                    lease: Some(lease_to_proto(lease)),
                    renewed,
                },
                release: None,
            },
        )
        .await?;
        Ok(Response::new(stream))
    }
}
