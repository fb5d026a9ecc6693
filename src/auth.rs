//! API keys: who may call, as which tenant, and which RPCs.
//!
//! Keys are configured as SHA-256 hashes (the file never holds a key). A request presents
//! its key as `authorization: Bearer <key>` (or `x-api-key: <key>`); Baton hashes it and
//! compares the hash with every configured hash in constant time — every byte of every
//! entry is compared, with no early exit — so response timing reveals nothing about how
//! close a guess was. A matched key gives the request its tenant namespace (every Redis key
//! it touches is under `baton:<namespace>:`) and the RPCs it may call.

use std::sync::{Arc, LazyLock};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use tower_http::validate_request::{ValidateRequest, ValidateRequestHeaderLayer};

use crate::error::{Reason, refusal};
use crate::store::keys::DEFAULT_NAMESPACE;

/// `[[api_keys]]` in the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyFile {
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: String,
    /// The tenant namespace this key acts in.
    pub tenant: String,
    /// Services (`baton.v1.JobQueueService`) or RPCs (`baton.v1.JobQueueService/Ack`) this
    /// key may call; empty = all.
    #[serde(default)]
    pub allow: Vec<String>,
    /// Who holds the key, for the logs of dashboard actions; the hash's first 8 digits when
    /// unset.
    #[serde(default)]
    pub name: Option<String>,
    /// `admin` lets the key act on the dashboard (pause queues, retry jobs, revoke
    /// sessions); any other key there only reads.
    #[serde(default)]
    pub role: Option<Role>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Admin,
}

#[derive(Debug, Clone)]
struct ApiKey {
    hash: [u8; 32],
    tenant: Arc<str>,
    allow: Vec<String>,
    name: Arc<str>,
    role: Option<Role>,
}

/// Who presented a key: what the dashboard shows and logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub name: Arc<str>,
    pub tenant: Arc<str>,
    pub admin: bool,
}

/// The tenant a request acts for, set by [`auth_layer`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub Arc<str>);

static DEFAULT_TENANT: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from(DEFAULT_NAMESPACE));

/// The namespace of a request: its API key's tenant, or the default one when auth is off.
/// Shared, not copied: every request of a tenant holds the same string.
/// Every handler asks for it first, so it also names the tenant on the RPC's trace span.
pub fn namespace<T>(request: &tonic::Request<T>) -> Arc<str> {
    let namespace = request.extensions().get::<Tenant>().map_or_else(|| DEFAULT_TENANT.clone(), |t| t.0.clone());
    crate::traces::record_tenant(&namespace);
    namespace
}

/// The validated key set; empty means authentication is off.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
}

impl ApiKeys {
    pub fn from_file(entries: Vec<ApiKeyFile>) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (index, entry) in entries.into_iter().enumerate() {
            let bytes = decode_hex(&entry.sha256)
                .ok_or_else(|| format!("api_keys[{index}].sha256 must be 64 hex digits (a SHA-256)"))?;
            let tenant_ok = !entry.tenant.is_empty()
                && entry.tenant.len() <= 64
                && entry.tenant.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if !tenant_ok {
                return Err(format!("api_keys[{index}].tenant must be 1 to 64 characters of [A-Za-z0-9_-]"));
            }
            let name = entry.name.unwrap_or_else(|| entry.sha256[..8].to_ascii_lowercase());
            if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
                return Err(format!("api_keys[{index}].name must be 1 to 64 printable characters"));
            }
            keys.push(ApiKey {
                hash: bytes,
                tenant: entry.tenant.into(),
                allow: entry.allow,
                name: name.into(),
                role: entry.role,
            });
        }
        Ok(Self { keys })
    }

    pub fn is_enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The holder of `presented`, if it is a configured key, and the key's hash.
    pub fn identify(&self, presented: &str) -> Option<(Identity, [u8; 32])> {
        let hash: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        self.identify_hash(&hash).map(|identity| (identity, hash))
    }

    /// The holder of the key whose SHA-256 is `hash`, while that key is configured.
    pub fn identify_hash(&self, hash: &[u8; 32]) -> Option<Identity> {
        self.find_hash(hash).map(|key| Identity {
            name: key.name.clone(),
            tenant: key.tenant.clone(),
            admin: key.role == Some(Role::Admin),
        })
    }

    fn find(&self, presented: &str) -> Option<&ApiKey> {
        self.find_hash(&Sha256::digest(presented.as_bytes()).into())
    }

    fn find_hash(&self, hash: &[u8; 32]) -> Option<&ApiKey> {
        let mut found = None;
        for key in &self.keys {
            // Constant time per entry, and every entry is visited.
            let difference = key.hash.iter().zip(hash.iter()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if difference == 0 {
                found = Some(key);
            }
        }
        found
    }
}

pub fn decode_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut bytes = [0u8; 32];
    for (index, chunk) in text.as_bytes().chunks(2).enumerate() {
        bytes[index] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(bytes)
}

/// Paths that stay open: probes must work without keys, and so must reflection (grpcurl).
fn is_open(path: &str) -> bool {
    path.starts_with("/grpc.health.v1.Health/") || path.starts_with("/grpc.reflection.")
}

fn allowed(key: &ApiKey, path: &str) -> bool {
    let rpc = path.trim_start_matches('/');
    let service = rpc.split('/').next().unwrap_or_default();
    key.allow.is_empty() || key.allow.iter().any(|allow| allow == rpc || allow == service)
}

fn presented_key(headers: &http::HeaderMap) -> Option<&str> {
    if let Some(value) = headers.get("authorization").and_then(|v| v.to_str().ok()) {
        return value.strip_prefix("Bearer ").map(str::trim);
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

/// Checks API keys before any handler runs: a refused request is answered here, an
/// accepted one carries its [`Tenant`].
pub fn auth_layer(keys: ApiKeys) -> ValidateRequestHeaderLayer<ApiKeyCheck> {
    ValidateRequestHeaderLayer::custom(ApiKeyCheck { keys: Arc::new(keys) })
}

#[derive(Debug, Clone)]
pub struct ApiKeyCheck {
    keys: Arc<ApiKeys>,
}

impl<B> ValidateRequest<B> for ApiKeyCheck {
    type ResponseBody = tonic::body::Body;

    fn validate(&mut self, request: &mut http::Request<B>) -> Result<(), http::Response<tonic::body::Body>> {
        if !self.keys.is_enabled() || is_open(request.uri().path()) {
            return Ok(());
        }
        match presented_key(request.headers()).and_then(|key| self.keys.find(key)) {
            None => Err(refusal(
                tonic::Code::Unauthenticated,
                Reason::ApiKeyInvalid,
                "a valid API key is required (authorization: Bearer <key>)",
            )
            .into_http()),
            Some(key) if !allowed(key, request.uri().path()) => {
                Err(refusal(tonic::Code::PermissionDenied, Reason::RpcNotAllowed, "this API key may not call this RPC")
                    .into_http())
            }
            Some(key) => {
                request.extensions_mut().insert(Tenant(key.tenant.clone()));
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        let hash = |key: &str| Sha256::digest(key.as_bytes()).iter().map(|b| format!("{b:02x}")).collect::<String>();
        ApiKeys::from_file(vec![
            ApiKeyFile {
                sha256: hash("admin-key"),
                tenant: "acme".into(),
                allow: vec![],
                name: Some("ops".into()),
                role: Some(Role::Admin),
            },
            ApiKeyFile {
                sha256: hash("worker-key"),
                tenant: "acme".into(),
                allow: vec!["baton.v1.JobQueueService/Consume".into(), "baton.v1.JobQueueService/Ack".into()],
                name: None,
                role: None,
            },
        ])
        .unwrap()
    }

    #[test]
    fn finds_keys_by_hash_and_checks_permissions() {
        let keys = keys();
        assert!(keys.find("wrong").is_none());
        let admin = keys.find("admin-key").unwrap();
        assert!(allowed(admin, "/baton.v1.LockService/Acquire"));
        let worker = keys.find("worker-key").unwrap();
        assert!(allowed(worker, "/baton.v1.JobQueueService/Ack"));
        assert!(!allowed(worker, "/baton.v1.JobQueueService/Enqueue"));
        assert!(!allowed(worker, "/baton.v1.LockService/Acquire"));
        let (ops, _) = keys.identify("admin-key").unwrap();
        assert!(ops.admin && &*ops.name == "ops" && &*ops.tenant == "acme");
        let (worker, hash) = keys.identify("worker-key").unwrap();
        assert_eq!(keys.identify_hash(&hash), Some(worker.clone()));
        assert!(!worker.admin);
        assert_eq!(worker.name.len(), 8, "unnamed keys go by their hash's first digits");
    }

    fn entry() -> ApiKeyFile {
        ApiKeyFile { sha256: "0".repeat(64), tenant: "t".into(), allow: vec![], name: None, role: None }
    }

    #[test]
    fn rejects_malformed_entries() {
        let bad = ApiKeys::from_file(vec![ApiKeyFile { sha256: "abc".into(), tenant: "t".into(), ..entry() }]);
        assert!(bad.unwrap_err().contains("sha256"));
        let bad = ApiKeys::from_file(vec![ApiKeyFile { tenant: "a b".into(), ..entry() }]);
        assert!(bad.unwrap_err().contains("tenant"));
        let bad = ApiKeys::from_file(vec![ApiKeyFile { name: Some("a\nb".into()), ..entry() }]);
        assert!(bad.unwrap_err().contains("name"));
    }

    #[test]
    fn reads_bearer_and_x_api_key() {
        let mut headers = http::HeaderMap::new();
        headers.insert("authorization", "Bearer abc".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("abc"));
        let mut headers = http::HeaderMap::new();
        headers.insert("x-api-key", "xyz".parse().unwrap());
        assert_eq!(presented_key(&headers), Some("xyz"));
    }
}
