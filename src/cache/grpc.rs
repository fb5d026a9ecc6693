//! `baton.v1.CacheService`: validation and proto mapping.

use std::time::Duration;
use tokio_util::sync::CancellationToken;

use tonic::{Request, Response, Status};

use crate::cache::{CacheManager, Entry, FetchOutcome, Write, WriteRefused};
use crate::error::Error;
use crate::proto::v1::cache_service_server::CacheService;
use crate::proto::v1::{
    BatchGetEntry, BatchGetRequest, BatchGetResponse, BatchSetRequest, BatchSetResponse, BatchSetResult,
    BatchSetStatus, CacheEntry, DeleteRequest, DeleteResponse, FetchRequest, FetchResponse, FillRequest, FillResponse,
    GetRequest, GetResponse, InvalidateTagRequest, InvalidateTagResponse, SetRequest, SetResponse,
};
use crate::proto::{duration_from_proto, timestamp_from_micros};
use crate::validate::Limits;
use crate::{deadline, validate};

const MAX_TAGS: usize = 32;
const MAX_TAG_BYTES: usize = 256;
const DEFAULT_LEASE_TTL: Duration = Duration::from_secs(10);
const MIN_LEASE_TTL: Duration = Duration::from_millis(100);
const MAX_LEASE_TTL: Duration = Duration::from_secs(600);
const MAX_WAIT: Duration = Duration::from_secs(600);
/// Answer a waiting Fetch this long before the caller's deadline, with `found = false`.
const DEADLINE_MARGIN: Duration = Duration::from_millis(50);
/// Per-entry framing allowance when sizing a batch response against the message limit.
const ENTRY_OVERHEAD_BYTES: usize = 64;

pub struct CacheGrpc {
    cache: CacheManager,
    limits: Limits,
    /// Cancelled when this replica starts draining: Fetch waits go elsewhere.
    draining: CancellationToken,
}

impl CacheGrpc {
    pub fn new(cache: CacheManager, limits: Limits, draining: CancellationToken) -> Self {
        Self { cache, limits, draining }
    }

    /// Validates one write; `at` prefixes field names ("entries[3]." or "").
    #[allow(clippy::too_many_arguments)]
    fn write(
        &self,
        at: &str,
        key: String,
        value: Vec<u8>,
        ttl: Option<&prost_types::Duration>,
        stale_ttl: Option<&prost_types::Duration>,
        tags: Vec<String>,
        if_version: u64,
        if_absent: bool,
    ) -> Result<Write, Error> {
        validate::key(&format!("{at}key"), &key, &self.limits)?;
        if value.len() > self.limits.max_value_bytes {
            return Err(Error::invalid(
                format!("{at}value"),
                format!("must be at most {} bytes", self.limits.max_value_bytes),
            ));
        }
        let ttl = duration_from_proto(&format!("{at}ttl"), ttl)?
            .ok_or_else(|| Error::invalid(format!("{at}ttl"), "is required"))?;
        if ttl > self.limits.max_ttl {
            return Err(Error::invalid(format!("{at}ttl"), format!("must be at most {:?}", self.limits.max_ttl)));
        }
        let stale_ttl = duration_from_proto(&format!("{at}stale_ttl"), stale_ttl)?.unwrap_or_default();
        if stale_ttl > self.limits.max_ttl {
            return Err(Error::invalid(format!("{at}stale_ttl"), format!("must be at most {:?}", self.limits.max_ttl)));
        }
        self.tags(&format!("{at}tags"), &tags)?;
        if if_version > 0 && if_absent {
            return Err(Error::invalid(format!("{at}if_absent"), "cannot be combined with if_version"));
        }
        Ok(Write { key, value, ttl, stale_ttl, tags, if_version, if_absent })
    }

    fn tags(&self, field: &str, tags: &[String]) -> Result<(), Error> {
        if tags.len() > MAX_TAGS {
            return Err(Error::invalid(field, format!("must hold at most {MAX_TAGS} tags")));
        }
        for (index, tag) in tags.iter().enumerate() {
            self.tag(&format!("{field}[{index}]"), tag)?;
        }
        Ok(())
    }

    fn tag(&self, field: &str, tag: &str) -> Result<(), Error> {
        if tag.is_empty() || tag.len() > MAX_TAG_BYTES || tag.contains('\0') {
            return Err(Error::invalid(field, format!("must be 1 to {MAX_TAG_BYTES} bytes without NUL")));
        }
        Ok(())
    }

    fn batch_len(&self, field: &str, len: usize) -> Result<(), Error> {
        if len == 0 || len > self.limits.max_batch_keys {
            return Err(Error::invalid(field, format!("must hold 1 to {} keys", self.limits.max_batch_keys)));
        }
        Ok(())
    }
}

fn entry_to_proto(entry: Entry) -> CacheEntry {
    CacheEntry {
        value: entry.value,
        version: entry.version,
        expires_at: Some(timestamp_from_micros(entry.expires_at_micros)),
        stale: entry.stale,
    }
}

fn refused(refusal: WriteRefused) -> Error {
    match refusal {
        WriteRefused::VersionMismatch => Error::VersionMismatch { what: "entry" },
        WriteRefused::AlreadyExists => Error::EntryExists,
    }
}

#[tonic::async_trait]
impl CacheService for CacheGrpc {
    async fn get(&self, request: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let key = request.into_inner().key;
        validate::key("key", &key, &self.limits)?;
        let entry = self.cache.scoped(&namespace).get(&key).await?;
        crate::traces::record_outcome(if entry.is_some() { "hit" } else { "miss" });
        Ok(Response::new(GetResponse { found: entry.is_some(), entry: entry.map(entry_to_proto) }))
    }

    async fn set(&self, request: Request<SetRequest>) -> Result<Response<SetResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        let write =
            self.write("", r.key, r.value, r.ttl.as_ref(), r.stale_ttl.as_ref(), r.tags, r.if_version, r.if_absent)?;
        let stored = self.cache.scoped(&namespace).set(&write).await?.map_err(refused)?;
        Ok(Response::new(SetResponse { entry: Some(entry_to_proto(stored.entry(write.value))) }))
    }

    async fn delete(&self, request: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let request = request.into_inner();
        validate::key("key", &request.key, &self.limits)?;
        let deleted = self.cache.scoped(&namespace).delete(&request.key, request.if_version).await?.map_err(refused)?;
        Ok(Response::new(DeleteResponse { deleted }))
    }

    async fn batch_get(&self, request: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let keys = request.into_inner().keys;
        self.batch_len("keys", keys.len())?;
        for (index, key) in keys.iter().enumerate() {
            validate::key(&format!("keys[{index}]"), key, &self.limits)?;
        }
        let entries = self.cache.scoped(&namespace).batch_get(&keys).await?;
        let size: usize = keys.iter().map(|k| k.len() + ENTRY_OVERHEAD_BYTES).sum::<usize>()
            + entries.iter().flatten().map(|e| e.value.len()).sum::<usize>();
        if size > self.limits.max_message_bytes {
            return Err(Error::ResponseTooLarge { limit: self.limits.max_message_bytes }.into());
        }
        Ok(Response::new(BatchGetResponse {
            entries: keys
                .into_iter()
                .zip(entries)
                .map(|(key, entry)| BatchGetEntry { key, found: entry.is_some(), entry: entry.map(entry_to_proto) })
                .collect(),
        }))
    }

    async fn batch_set(&self, request: Request<BatchSetRequest>) -> Result<Response<BatchSetResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let items = request.into_inner().entries;
        self.batch_len("entries", items.len())?;
        // The whole batch is validated before anything is written.
        let writes = items
            .into_iter()
            .enumerate()
            .map(|(index, e)| {
                self.write(
                    &format!("entries[{index}]."),
                    e.key,
                    e.value,
                    e.ttl.as_ref(),
                    e.stale_ttl.as_ref(),
                    e.tags,
                    e.if_version,
                    e.if_absent,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let outcomes = self.cache.scoped(&namespace).batch_set(&writes).await?;
        let results = writes
            .into_iter()
            .zip(outcomes)
            .map(|(write, outcome)| match outcome {
                Ok(stored) => BatchSetResult {
                    key: write.key,
                    status: BatchSetStatus::Stored as i32,
                    entry: Some(entry_to_proto(stored.entry(write.value))),
                },
                Err(refusal) => BatchSetResult {
                    key: write.key,
                    status: match refusal {
                        WriteRefused::VersionMismatch => BatchSetStatus::VersionMismatch,
                        WriteRefused::AlreadyExists => BatchSetStatus::AlreadyExists,
                    } as i32,
                    entry: None,
                },
            })
            .collect();
        Ok(Response::new(BatchSetResponse { results }))
    }

    async fn invalidate_tag(
        &self,
        request: Request<InvalidateTagRequest>,
    ) -> Result<Response<InvalidateTagResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let tag = request.into_inner().tag;
        self.tag("tag", &tag)?;
        self.cache.scoped(&namespace).invalidate_tag(&tag).await?;
        Ok(Response::new(InvalidateTagResponse { invalidated: true }))
    }

    async fn fetch(&self, request: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let caller_deadline = deadline::remaining(request.metadata());
        let request = request.into_inner();
        validate::key("key", &request.key, &self.limits)?;
        let lease_ttl = duration_from_proto("lease_ttl", request.lease_ttl.as_ref())?.unwrap_or(DEFAULT_LEASE_TTL);
        if !(MIN_LEASE_TTL..=MAX_LEASE_TTL).contains(&lease_ttl) {
            return Err(Error::invalid(
                "lease_ttl",
                format!("must be between {MIN_LEASE_TTL:?} and {MAX_LEASE_TTL:?}"),
            )
            .into());
        }
        let mut wait = duration_from_proto("wait_timeout", request.wait_timeout.as_ref())?.unwrap_or_default();
        if wait > MAX_WAIT {
            return Err(Error::invalid("wait_timeout", format!("must be at most {MAX_WAIT:?}")).into());
        }
        if let Some(left) = caller_deadline {
            wait = wait.min(left.saturating_sub(DEADLINE_MARGIN));
        }
        let outcome = self.cache.scoped(&namespace).fetch(&request.key, lease_ttl, wait, &self.draining).await?;
        crate::traces::record_outcome(match &outcome {
            FetchOutcome::Hit(_) => "hit",
            FetchOutcome::Stale(..) => "stale",
            FetchOutcome::Fill(_) => "fill",
            FetchOutcome::TimedOut => "timed_out",
        });
        let response = match outcome {
            FetchOutcome::Hit(entry) => {
                FetchResponse { found: true, entry: Some(entry_to_proto(entry)), fill_token: String::new() }
            }
            FetchOutcome::Stale(entry, token) => {
                FetchResponse { found: true, entry: Some(entry_to_proto(entry)), fill_token: token.unwrap_or_default() }
            }
            FetchOutcome::Fill(token) => FetchResponse { found: false, entry: None, fill_token: token },
            FetchOutcome::TimedOut => FetchResponse::default(),
        };
        Ok(Response::new(response))
    }

    async fn fill(&self, request: Request<FillRequest>) -> Result<Response<FillResponse>, Status> {
        let namespace = crate::auth::namespace(&request);
        let r = request.into_inner();
        if r.fill_token.is_empty() || r.fill_token.len() > 64 {
            return Err(Error::invalid("fill_token", "is not a token Fetch returned").into());
        }
        let write = if r.abandon {
            validate::key("key", &r.key, &self.limits)?;
            Write {
                key: r.key,
                value: Vec::new(),
                ttl: Duration::ZERO,
                stale_ttl: Duration::ZERO,
                tags: Vec::new(),
                if_version: 0,
                if_absent: false,
            }
        } else {
            self.write("", r.key, r.value, r.ttl.as_ref(), r.stale_ttl.as_ref(), r.tags, 0, false)?
        };
        let stored = self.cache.scoped(&namespace).fill(&write, &r.fill_token, r.abandon).await?;
        Ok(Response::new(FillResponse { entry: stored.map(|stored| entry_to_proto(stored.entry(write.value))) }))
    }
}
