//! Job and lease ids, self-contained like SQS receipt handles: a job id carries its queue,
//! a lease id carries its job id, so any replica can act on them alone.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

const LEASE_TOKEN_BYTES: usize = 16;
pub(super) const STREAM_ID_BYTES: usize = 8;

/// A lease id, decoded: `<token>.<job id>`, the job id being `<uuid v7>.<queue, base64url>`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LeaseRef {
    pub queue: String,
    pub job_id: String,
    pub token: String,
}

impl LeaseRef {
    pub fn parse(lease_id: &str) -> Option<Self> {
        let (token, job_id) = lease_id.split_once('.')?;
        if !crate::secret::is_hex(token, LEASE_TOKEN_BYTES) {
            return None;
        }
        let queue = queue_of_job(job_id)?;
        Some(Self { queue, job_id: job_id.to_owned(), token: token.to_owned() })
    }

    pub fn lease_id(&self) -> String {
        format!("{}.{}", self.token, self.job_id)
    }
}

/// A new, time-sortable job id carrying its queue.
pub fn new_job_id(queue: &str) -> String {
    format!("{}.{}", uuid::Uuid::now_v7(), URL_SAFE_NO_PAD.encode(queue))
}

/// The queue a job id belongs to, if the id is well formed.
pub fn queue_of_job(job_id: &str) -> Option<String> {
    let (uuid, queue) = job_id.split_once('.')?;
    uuid::Uuid::try_parse(uuid).ok().filter(|id| id.get_version_num() == 7)?;
    let queue = String::from_utf8(URL_SAFE_NO_PAD.decode(queue).ok()?).ok()?;
    (!queue.is_empty()).then_some(queue)
}

/// A consumer stream's id: the first half of every lease token it is given, so that a
/// settlement (through any replica) can wake exactly the stream that held the lease.
pub fn new_stream_id() -> String {
    crate::secret::random_hex(STREAM_ID_BYTES)
}

/// `count` lease tokens: each the stream's id, then 64 random bits of its own. Both halves
/// come from the OS CSPRNG, so a whole token is 128 unguessable bits. One read of it serves
/// them all: a read per token was most of baton's system calls under a busy queue.
pub(super) fn new_lease_tokens(stream_id: &str, count: usize) -> Vec<String> {
    let own = LEASE_TOKEN_BYTES - STREAM_ID_BYTES;
    crate::secret::random_bytes(count * own)
        .chunks(own)
        .map(|bytes| format!("{stream_id}{}", crate::secret::hex(bytes)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_and_lease_ids_carry_their_queue() {
        let job_id = new_job_id("emails:high");
        assert_eq!(queue_of_job(&job_id).as_deref(), Some("emails:high"));
        let stream_id = new_stream_id();
        let tokens = new_lease_tokens(&stream_id, 3);
        assert_eq!(tokens.len(), 3);
        assert!(tokens.iter().all(|token| token.starts_with(&stream_id)));
        assert!(tokens[0] != tokens[1] && tokens[1] != tokens[2], "{tokens:?}");
        let lease = LeaseRef { queue: "emails:high".into(), job_id: job_id.clone(), token: tokens[0].clone() };
        assert_eq!(LeaseRef::parse(&lease.lease_id()), Some(lease));
    }

    #[test]
    fn malformed_ids_are_refused() {
        assert_eq!(queue_of_job("nope"), None);
        assert_eq!(queue_of_job(&format!("{}.cQ", uuid::Uuid::new_v4())), None, "not a v7 uuid");
        assert_eq!(LeaseRef::parse("abc.def"), None);
        let job_id = new_job_id("q");
        assert_eq!(LeaseRef::parse(&format!("XYZ.{job_id}")), None);
    }

    #[test]
    fn job_ids_sort_by_creation() {
        let first = new_job_id("q");
        let second = new_job_id("q");
        assert!(first < second);
    }
}
