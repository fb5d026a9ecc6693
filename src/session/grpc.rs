//! `baton.v1.SessionStoreService`: validation and proto mapping.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tonic::{Request, Response, Status};

use crate::error::Error;
use crate::proto::v1::session_store_service_server::SessionStoreService;
use crate::proto::v1::{
    self as pb, ClearSessionsRequest, ClearSessionsResponse, CountSessionsRequest, CountSessionsResponse,
    CreateSessionRequest, CreateSessionResponse, DeleteSessionRequest, DeleteSessionResponse, GetSessionRequest,
    GetSessionResponse, ListSessionsRequest, ListSessionsResponse, RevokeSessionsRequest, RevokeSessionsResponse,
    RotateSessionRequest, RotateSessionResponse, UpdateSessionRequest, UpdateSessionResponse,
};
use crate::proto::{duration_from_proto, timestamp_from_micros};
use crate::session::{NewSession, Session, SessionChange, SessionManager, is_well_formed_id};
use crate::validate;
use crate::validate::Limits;

const MIN_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_DATA_KEYS: usize = 1000;
const MAX_DATA_KEY_BYTES: usize = 256;
const MAX_ATTRIBUTES: usize = 32;
const MAX_ATTRIBUTE_KEY_BYTES: usize = 64;
const MAX_ATTRIBUTE_VALUE_BYTES: usize = 1024;
const MAX_HANDLES: usize = 1000;

pub struct SessionGrpc {
    sessions: SessionManager,
    limits: Limits,
}

impl SessionGrpc {
    pub fn new(sessions: SessionManager, limits: Limits) -> Self {
        Self { sessions, limits }
    }

    fn timeout(
        &self,
        field: &str,
        value: Option<&prost_types::Duration>,
        default: Duration,
    ) -> Result<Duration, Error> {
        Ok(self.new_timeout(field, value)?.unwrap_or(default))
    }

    /// A timeout the caller set, checked; `None` when unset (or zero).
    fn new_timeout(&self, field: &str, value: Option<&prost_types::Duration>) -> Result<Option<Duration>, Error> {
        let Some(timeout) = duration_from_proto(field, value)? else {
            return Ok(None);
        };
        if !(MIN_TIMEOUT..=self.limits.max_ttl).contains(&timeout) {
            return Err(Error::invalid(
                field,
                format!("must be between {MIN_TIMEOUT:?} and {:?}", self.limits.max_ttl),
            ));
        }
        Ok(Some(timeout))
    }

    fn data(&self, field: &str, data: &HashMap<String, Vec<u8>>) -> Result<BTreeMap<String, Vec<u8>>, Error> {
        if data.len() > MAX_DATA_KEYS {
            return Err(Error::invalid(field, format!("must hold at most {MAX_DATA_KEYS} keys")));
        }
        for key in data.keys() {
            if key.is_empty() || key.len() > MAX_DATA_KEY_BYTES {
                return Err(Error::invalid(field, format!("keys must be 1 to {MAX_DATA_KEY_BYTES} bytes")));
            }
        }
        let size: usize = data.iter().map(|(k, v)| k.len() + v.len()).sum();
        if size > self.sessions.settings().max_data_bytes {
            return Err(Error::invalid(
                field,
                format!("must be at most {} bytes", self.sessions.settings().max_data_bytes),
            ));
        }
        Ok(data.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    fn subject(&self, field: &str, subject: &str, required: bool) -> Result<(), Error> {
        if subject.is_empty() && !required {
            return Ok(());
        }
        validate::key(field, subject, &self.limits)
    }
}

fn session_id(id: &str) -> Result<&str, Error> {
    if is_well_formed_id(id) {
        Ok(id)
    } else {
        Err(Error::invalid("session_id", "must be 22 to 256 characters of [A-Za-z0-9_-]"))
    }
}

fn not_found() -> Error {
    Error::SessionNotFound
}

fn session_to_proto(session: Session) -> pb::Session {
    pb::Session {
        handle: session.handle,
        subject: session.subject,
        data: session.data.into_iter().collect(),
        attributes: session.attributes.into_iter().collect(),
        version: session.version,
        created_at: Some(timestamp_from_micros(session.created_at_micros)),
        last_seen_at: Some(timestamp_from_micros(session.last_seen_at_micros)),
        idle_expires_at: Some(timestamp_from_micros(session.idle_expires_at_micros)),
        absolute_expires_at: Some(timestamp_from_micros(session.absolute_expires_at_micros)),
    }
}

#[tonic::async_trait]
impl SessionStoreService for SessionGrpc {
    async fn create_session(
        &self,
        request: Request<CreateSessionRequest>,
    ) -> Result<Response<CreateSessionResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        let chosen_id = match r.session_id.as_str() {
            "" => None,
            id => Some(session_id(id)?.to_owned()),
        };
        self.subject("subject", &r.subject, false)?;
        let data = self.data("data", &r.data)?;
        if r.attributes.len() > MAX_ATTRIBUTES
            || r.attributes
                .iter()
                .any(|(k, v)| k.is_empty() || k.len() > MAX_ATTRIBUTE_KEY_BYTES || v.len() > MAX_ATTRIBUTE_VALUE_BYTES)
        {
            return Err(Error::invalid(
                "attributes",
                format!(
                    "at most {MAX_ATTRIBUTES} entries, keys 1 to {MAX_ATTRIBUTE_KEY_BYTES} bytes, values up to {MAX_ATTRIBUTE_VALUE_BYTES}"
                ),
            )
            .into());
        }
        let idle_timeout =
            self.timeout("idle_timeout", r.idle_timeout.as_ref(), self.sessions.settings().idle_timeout)?;
        let absolute_timeout =
            self.timeout("absolute_timeout", r.absolute_timeout.as_ref(), self.sessions.settings().absolute_timeout)?;
        let new = NewSession {
            session_id: chosen_id,
            subject: r.subject,
            data,
            attributes: r.attributes.into_iter().collect(),
            // An idle timeout longer than the absolute one would never apply.
            idle_timeout: idle_timeout.min(absolute_timeout),
            absolute_timeout,
        };
        match self.sessions.scoped(&namespace).create(&new).await? {
            Some((session_id, session)) => {
                Ok(Response::new(CreateSessionResponse { session_id, session: Some(session_to_proto(session)) }))
            }
            None => Err(Error::SessionExists.into()),
        }
    }

    async fn get_session(&self, request: Request<GetSessionRequest>) -> Result<Response<GetSessionResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        let session = self
            .sessions
            .scoped(&namespace)
            .get(session_id(&r.session_id)?, !r.no_touch)
            .await?
            .ok_or_else(not_found)?;
        Ok(Response::new(GetSessionResponse { session: Some(session_to_proto(session)) }))
    }

    async fn update_session(
        &self,
        request: Request<UpdateSessionRequest>,
    ) -> Result<Response<UpdateSessionResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        let id = session_id(&r.session_id)?;
        let set = self.data("set", &r.set)?;
        if r.remove.len() > MAX_DATA_KEYS {
            return Err(Error::invalid("remove", format!("must hold at most {MAX_DATA_KEYS} keys")).into());
        }
        if let Some(index) = r.remove.iter().position(|key| set.contains_key(key)) {
            return Err(Error::invalid(format!("remove[{index}]"), "is also in set: a key is set or removed").into());
        }
        let change = SessionChange {
            idle_timeout: self.new_timeout("idle_timeout", r.idle_timeout.as_ref())?,
            absolute_timeout: self.new_timeout("absolute_timeout", r.absolute_timeout.as_ref())?,
            set,
            remove: r.remove,
            if_version: r.if_version,
        };
        let session = self.sessions.scoped(&namespace).update(id, &change).await?.ok_or_else(not_found)?;
        Ok(Response::new(UpdateSessionResponse { session: Some(session_to_proto(session)) }))
    }

    async fn rotate_session(
        &self,
        request: Request<RotateSessionRequest>,
    ) -> Result<Response<RotateSessionResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        let (session_id, session) =
            self.sessions.scoped(&namespace).rotate(session_id(&r.session_id)?).await?.ok_or_else(not_found)?;
        Ok(Response::new(RotateSessionResponse { session_id, session: Some(session_to_proto(session)) }))
    }

    async fn delete_session(
        &self,
        request: Request<DeleteSessionRequest>,
    ) -> Result<Response<DeleteSessionResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        let deleted = self.sessions.scoped(&namespace).delete(session_id(&r.session_id)?).await?;
        Ok(Response::new(DeleteSessionResponse { deleted }))
    }

    async fn list_sessions(
        &self,
        request: Request<ListSessionsRequest>,
    ) -> Result<Response<ListSessionsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        self.subject("subject", &r.subject, true)?;
        let sessions = self.sessions.scoped(&namespace).list(&r.subject).await?;
        Ok(Response::new(ListSessionsResponse { sessions: sessions.into_iter().map(session_to_proto).collect() }))
    }

    async fn revoke_sessions(
        &self,
        request: Request<RevokeSessionsRequest>,
    ) -> Result<Response<RevokeSessionsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        self.subject("subject", &r.subject, true)?;
        if r.handles.len() > MAX_HANDLES {
            return Err(Error::invalid("handles", format!("must hold at most {MAX_HANDLES}")).into());
        }
        let revoked = self.sessions.scoped(&namespace).revoke(&r.subject, &r.handles, &r.except_handle).await?;
        Ok(Response::new(RevokeSessionsResponse { revoked }))
    }

    async fn count_sessions(
        &self,
        request: Request<CountSessionsRequest>,
    ) -> Result<Response<CountSessionsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let live = self.sessions.scoped(&namespace).count().await?;
        Ok(Response::new(CountSessionsResponse { live }))
    }

    async fn clear_sessions(
        &self,
        request: Request<ClearSessionsRequest>,
    ) -> Result<Response<ClearSessionsResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let cleared = self.sessions.scoped(&namespace).clear().await?;
        Ok(Response::new(ClearSessionsResponse { cleared }))
    }
}
