//! How patterns talk to Redis without naming it: Lua scripts built once with their source,
//! arguments borrowed as byte slices and integers (no payload copies), one reply shape with
//! one decoder, and typed commands and pipelines for the few reads that need no script.
//!
//! The reply shape: every script answers `{1, field, …}` when it did its work and
//! `{0, 'REASON', field, …}` when it refused; [`Reply::outcome`] tells them apart and
//! [`Fields`] reads the fields by position.

use redis::{FromRedisValue, RedisWrite, ToRedisArgs, Value};

use super::StoreError;

/// The clock and integer helpers every script starts with (`prelude.lua`).
const SCRIPT_PRELUDE: &str = include_str!("prelude.lua");

/// A Lua script with its source and SHA-1, built once (from a `LazyLock`). The source
/// travels with it so a `NOSCRIPT` is answered with an `EVAL` on the very node that lacks
/// the script (a Cluster node, a master promoted by Sentinel), instead of a `SCRIPT LOAD`
/// that the cluster connection would send to every node.
pub struct Script {
    /// Names the script in metrics (`baton_redis_command_duration_seconds{op}`).
    op: &'static str,
    sha: String,
    source: String,
}

impl Script {
    /// The common prelude, then `parts` in order (a pattern's own prelude, the script).
    pub fn new(op: &'static str, parts: &[&str]) -> Self {
        let mut source = String::from(SCRIPT_PRELUDE);
        for part in parts {
            source.push('\n');
            source.push_str(part);
        }
        let sha = redis::Script::new(&source).get_hash().to_owned();
        Self { op, sha, source }
    }

    pub fn op(&self) -> &'static str {
        self.op
    }

    /// `EVALSHA` (or, with `use_source`, `EVAL`) with these keys and arguments.
    pub(super) fn command(&self, use_source: bool, keys: &[String], args: &[Arg<'_>]) -> redis::Cmd {
        let mut cmd = if use_source {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(self.source.as_bytes());
            cmd
        } else {
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(self.sha.as_bytes());
            cmd
        };
        cmd.arg(keys.len()).arg(keys).arg(args);
        cmd
    }
}

/// One argument of a script or command, borrowed: payloads are written to the socket
/// buffer straight from the request.
#[derive(Debug, Clone, Copy)]
pub enum Arg<'a> {
    Bytes(&'a [u8]),
    Int(i64),
    UInt(u64),
}

impl ToRedisArgs for Arg<'_> {
    fn write_redis_args<W: ?Sized + RedisWrite>(&self, out: &mut W) {
        match self {
            Self::Bytes(bytes) => out.write_arg(bytes),
            Self::Int(value) => value.write_redis_args(out),
            Self::UInt(value) => value.write_redis_args(out),
        }
    }
}

impl<'a, T: AsRef<[u8]> + ?Sized> From<&'a T> for Arg<'a> {
    fn from(value: &'a T) -> Self {
        Self::Bytes(value.as_ref())
    }
}

impl From<i64> for Arg<'_> {
    fn from(value: i64) -> Self {
        Self::Int(value)
    }
}

impl From<u64> for Arg<'_> {
    fn from(value: u64) -> Self {
        Self::UInt(value)
    }
}

impl From<u32> for Arg<'_> {
    fn from(value: u32) -> Self {
        Self::UInt(value.into())
    }
}

impl From<usize> for Arg<'_> {
    fn from(value: usize) -> Self {
        Self::UInt(value as u64)
    }
}

/// Flags travel as `1` and `0`, as the scripts test them.
impl From<bool> for Arg<'_> {
    fn from(value: bool) -> Self {
        Self::UInt(value.into())
    }
}

/// A script's reply, undecoded.
#[derive(Debug)]
pub struct Reply(Value);

impl FromRedisValue for Reply {
    fn from_redis_value(value: Value) -> Result<Self, redis::ParsingError> {
        Ok(Self(value))
    }
}

/// What a script did.
#[derive(Debug)]
pub enum Outcome {
    /// `{1, fields…}`.
    Done(Fields),
    /// `{0, 'REASON', fields…}`.
    Refused { reason: String, fields: Fields },
}

impl Reply {
    pub fn outcome(self) -> Result<Outcome, StoreError> {
        let mut fields = self.fields()?;
        let status = fields.int(0)?;
        match status {
            1 => {
                fields.values.remove(0);
                Ok(Outcome::Done(fields))
            }
            0 => {
                let reason = fields.string(1)?;
                fields.values.drain(..2);
                Ok(Outcome::Refused { reason, fields })
            }
            other => Err(unexpected(format!("script status {other}"))),
        }
    }

    /// The fields of a `{1, …}` reply; a refusal is an unexpected reply here.
    pub fn done(self) -> Result<Fields, StoreError> {
        match self.outcome()? {
            Outcome::Done(fields) => Ok(fields),
            Outcome::Refused { reason, .. } => Err(unexpected(format!("script refused: {reason}"))),
        }
    }

    fn fields(self) -> Result<Fields, StoreError> {
        match self.0 {
            Value::Array(values) => Ok(Fields { values }),
            other => Err(unexpected(format!("expected an array, got {other:?}"))),
        }
    }
}

/// A flat array reply, read by position. Readers that move a value out (`take_*`) leave
/// nil behind, so payloads are never copied.
#[derive(Debug, Default)]
pub struct Fields {
    values: Vec<Value>,
}

impl Fields {
    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn int(&self, index: usize) -> Result<i64, StoreError> {
        match self.values.get(index) {
            Some(Value::Int(value)) => Ok(*value),
            // Lua numbers above 2^53 travel as decimal strings (see prelude.lua's `int`).
            Some(Value::BulkString(bytes)) => std::str::from_utf8(bytes)
                .ok()
                .and_then(|text| text.parse().ok())
                .ok_or_else(|| unexpected(format!("field {index}: {bytes:?} is not an integer"))),
            other => Err(unexpected(format!("field {index}: expected an integer, got {other:?}"))),
        }
    }

    pub fn uint(&self, index: usize) -> Result<u64, StoreError> {
        u64::try_from(self.int(index)?).map_err(|_| unexpected(format!("field {index} is negative")))
    }

    /// A string field (lossy: Baton only writes UTF-8 where it reads strings back).
    pub fn string(&self, index: usize) -> Result<String, StoreError> {
        match self.values.get(index) {
            Some(Value::BulkString(bytes)) => Ok(String::from_utf8_lossy(bytes).into_owned()),
            Some(Value::SimpleString(text)) => Ok(text.clone()),
            Some(Value::Int(value)) => Ok(value.to_string()),
            other => Err(unexpected(format!("field {index}: expected a string, got {other:?}"))),
        }
    }

    /// A byte-string field, moved out.
    pub fn take_bytes(&mut self, index: usize) -> Result<Vec<u8>, StoreError> {
        match self.values.get_mut(index).map(|value| std::mem::replace(value, Value::Nil)) {
            Some(Value::BulkString(bytes)) => Ok(bytes),
            Some(Value::SimpleString(text)) => Ok(text.into_bytes()),
            other => Err(unexpected(format!("field {index}: expected bytes, got {other:?}"))),
        }
    }

    /// A nested array field, moved out.
    pub fn take_fields(&mut self, index: usize) -> Result<Fields, StoreError> {
        match self.values.get_mut(index).map(|value| std::mem::replace(value, Value::Nil)) {
            Some(Value::Array(values)) => Ok(Fields { values }),
            other => Err(unexpected(format!("field {index}: expected an array, got {other:?}"))),
        }
    }

    /// Fields from `start` on as name/value pairs (an `HGETALL` flattened into the reply).
    pub fn take_pairs(&mut self, start: usize) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let rest = self.values.split_off(start.min(self.values.len()));
        let mut pairs = Vec::with_capacity(rest.len() / 2);
        let mut rest = rest.into_iter();
        while let Some(name) = rest.next() {
            match (name, rest.next()) {
                (Value::BulkString(name), Some(Value::BulkString(value))) => {
                    pairs.push((String::from_utf8_lossy(&name).into_owned(), value));
                }
                (name, value) => {
                    return Err(unexpected(format!("expected a name/value pair, got {name:?}, {value:?}")));
                }
            }
        }
        Ok(pairs)
    }

    /// The name/value pairs of a hash that a script packed as
    /// `cmsgpack.pack(redis.call('HGETALL', key))`, borrowed from the reply.
    pub fn packed_pairs(&self, index: usize) -> Result<Vec<Pair<'_>>, StoreError> {
        let mut packed = match self.values.get(index) {
            Some(Value::BulkString(bytes)) => bytes.as_slice(),
            other => return Err(unexpected(format!("field {index}: expected a packed hash, got {other:?}"))),
        };
        let malformed = |what: &str| unexpected(format!("field {index}: packed hash: {what}"));
        let count = rmp::decode::read_array_len(&mut packed).map_err(|_| malformed("expected an array"))?;
        if count % 2 != 0 {
            return Err(malformed("an odd number of values"));
        }
        // Each value takes a byte at least: a count beyond that is a malformed reply, not an
        // allocation to make.
        let mut pairs = Vec::with_capacity((count as usize / 2).min(packed.len() / 2));
        for _ in 0..count / 2 {
            let name = packed_string(&mut packed).ok_or_else(|| malformed("expected a string"))?;
            let value = packed_string(&mut packed).ok_or_else(|| malformed("expected a string"))?;
            pairs.push((name, value));
        }
        Ok(pairs)
    }
}

/// A hash field's name and value, borrowed from a reply.
pub type Pair<'a> = (&'a [u8], &'a [u8]);

/// The next msgpack string of `packed`, which moves past it.
fn packed_string<'a>(packed: &mut &'a [u8]) -> Option<&'a [u8]> {
    let len = rmp::decode::read_str_len(packed).ok()? as usize;
    let value = packed.get(..len)?;
    *packed = &packed[len..];
    Some(value)
}

fn unexpected(what: String) -> StoreError {
    StoreError::Unexpected(format!("script reply: {what}"))
}

/// A Redis command, built from borrowed arguments.
pub struct Command(redis::Cmd);

impl Command {
    pub fn new(name: &str) -> Self {
        Self(redis::cmd(name))
    }

    pub fn arg<'a>(mut self, arg: impl Into<Arg<'a>>) -> Self {
        self.0.arg(arg.into());
        self
    }

    pub fn args<'a, A: Into<Arg<'a>>>(mut self, args: impl IntoIterator<Item = A>) -> Self {
        for arg in args {
            self.0.arg(arg.into());
        }
        self
    }

    pub(super) fn as_redis(&self) -> &redis::Cmd {
        &self.0
    }
}

/// Commands sent in one round trip. Replies of commands added with [`Pipeline::ignored`]
/// are dropped.
#[derive(Default)]
pub struct Pipeline(redis::Pipeline);

impl Pipeline {
    pub fn new() -> Self {
        Self(redis::pipe())
    }

    pub fn add(&mut self, command: Command) -> &mut Self {
        self.0.add_command(command.0);
        self
    }

    /// Adds a command whose reply nobody reads.
    pub fn ignored(&mut self, command: Command) -> &mut Self {
        self.0.add_command(command.0).ignore();
        self
    }

    pub fn is_empty(&self) -> bool {
        self.0.cmd_iter().next().is_none()
    }

    pub(super) fn as_redis(&self) -> &redis::Pipeline {
        &self.0
    }
}

/// A type a command's reply decodes into (integers, strings, vectors and tuples of them).
pub trait Decode: FromRedisValue {}

impl<T: FromRedisValue> Decode for T {}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(values: Vec<Value>) -> Reply {
        Reply(Value::Array(values))
    }

    #[test]
    fn done_and_refused_replies_decode() {
        let Outcome::Done(fields) =
            reply(vec![Value::Int(1), Value::Int(7), Value::BulkString(b"x".to_vec())]).outcome().unwrap()
        else {
            panic!("expected done");
        };
        assert_eq!((fields.int(0).unwrap(), fields.string(1).unwrap()), (7, "x".to_owned()));
        let Outcome::Refused { reason, fields } =
            reply(vec![Value::Int(0), Value::BulkString(b"BUSY".to_vec()), Value::Int(3)]).outcome().unwrap()
        else {
            panic!("expected refused");
        };
        assert_eq!((reason.as_str(), fields.uint(0).unwrap()), ("BUSY", 3));
        assert!(reply(vec![Value::Int(2)]).outcome().is_err());
        assert!(Reply(Value::Int(1)).outcome().is_err());
    }

    #[test]
    fn pairs_and_taken_values_move_out() {
        let mut fields = Fields {
            values: vec![
                Value::BulkString(b"payload".to_vec()),
                Value::BulkString(b"a".to_vec()),
                Value::BulkString(b"1".to_vec()),
            ],
        };
        assert_eq!(fields.take_bytes(0).unwrap(), b"payload");
        assert!(fields.take_bytes(0).is_err(), "taken once");
        assert_eq!(fields.take_pairs(1).unwrap(), vec![("a".to_owned(), b"1".to_vec())]);
        assert!(fields.take_pairs(0).is_err(), "a nil where a name belongs");
    }

    #[test]
    fn packed_hashes_decode_and_malformed_ones_are_errors() {
        // What cmsgpack.pack({'a', <40 x>, 'b', ''}) answers: a fixarray, a fixstr, a str8.
        let mut packed = vec![0x94, 0xa1, b'a', 0xd9, 40];
        packed.extend([b'x'; 40]);
        packed.extend([0xa1, b'b', 0xa0]);
        let fields = Fields { values: vec![Value::BulkString(packed.clone()), Value::Int(1)] };
        assert_eq!(fields.packed_pairs(0).unwrap(), vec![(&b"a"[..], &[b'x'; 40][..]), (&b"b"[..], &b""[..])]);
        let malformed = [
            packed[..packed.len() - 1].to_vec(),      // the last string missing
            vec![0x93, 0xa1, b'a', 0xa1, b'b', 0xa0], // an odd count
            vec![0xdd, 0xff, 0xff, 0xff, 0xff, 0xa0], // a count far beyond the bytes
            vec![0x92, 0x01, 0xa0],                   // a number where a name belongs
            vec![0xdb, 0xff, 0xff, 0xff, 0xff],       // not an array
            Vec::new(),
        ];
        for bytes in malformed {
            let fields = Fields { values: vec![Value::BulkString(bytes.clone())] };
            assert!(fields.packed_pairs(0).is_err(), "{bytes:?}");
        }
        assert!(fields.packed_pairs(1).is_err(), "an integer is not a packed hash");
    }

    #[test]
    fn large_integers_read_from_strings() {
        let fields = Fields { values: vec![Value::BulkString(b"9007199254740993".to_vec())] };
        assert_eq!(fields.uint(0).unwrap(), 9_007_199_254_740_993);
    }
}
