//! How Baton reaches Redis: one server, a Redis Cluster, or a Sentinel-managed master, and
//! the URL lists the last two are given as.

pub use redis::cluster_routing::Slot;

/// The shape of the Redis deployment behind one URL (list).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Topology {
    /// One server (or a proxy that always reaches the master).
    #[default]
    Standalone,
    /// A Redis Cluster: the URL lists seed nodes; slots are discovered and followed.
    Cluster,
    /// A master found through Sentinel: the URL lists the sentinels.
    Sentinel(SentinelSettings),
}

/// What Baton needs to ask the sentinels for the master.
#[derive(Clone, PartialEq, Eq)]
pub struct SentinelSettings {
    /// The name the sentinels monitor the master under (`sentinel monitor <name> …`).
    pub master_name: String,
    /// Credentials for the sentinels themselves (their own `requirepass`/ACL), which are
    /// often not the data nodes'.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for SentinelSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentinelSettings")
            .field("master_name", &self.master_name)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// A URL split into the parts shared by every host of a list and the hosts themselves:
/// `redis://user:pass@h1:7000,h2:7001/0` has two hosts and one set of credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UrlList {
    /// `redis`, `rediss`, …
    scheme: String,
    /// `user:pass` (without the `@`), or empty.
    userinfo: String,
    /// `host:port` of each node, in the given order.
    pub hosts: Vec<String>,
    /// Everything after the host list: `/0?protocol=resp3`, or empty.
    rest: String,
}

impl UrlList {
    /// Parses `scheme://[userinfo@]host[:port][,host[:port]…][/db][?query]`; a list of
    /// whole URLs (`redis://a:1,redis://b:2`) is accepted too when they share everything
    /// but the host.
    pub fn parse(list: &str) -> Result<Self, String> {
        let pieces: Vec<&str> = list.split(',').map(str::trim).filter(|piece| !piece.is_empty()).collect();
        if pieces.len() > 1 && pieces.iter().all(|piece| piece.contains("://")) {
            let parsed: Vec<UrlList> = pieces.iter().map(|piece| Self::parse_one(piece)).collect::<Result<_, _>>()?;
            let first = &parsed[0];
            if parsed
                .iter()
                .any(|url| url.scheme != first.scheme || url.userinfo != first.userinfo || url.rest != first.rest)
            {
                return Err("every URL of a list must share scheme, credentials and database".into());
            }
            return Ok(Self { hosts: parsed.iter().flat_map(|url| url.hosts.clone()).collect(), ..first.clone() });
        }
        Self::parse_one(list.trim())
    }

    fn parse_one(url: &str) -> Result<Self, String> {
        let (scheme, after) = url.split_once("://").ok_or("a Redis URL starts with redis:// or rediss://")?;
        let (authority, rest) = match after.find(['/', '?']) {
            Some(at) => after.split_at(at),
            None => (after, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((userinfo, hosts)) => (userinfo, hosts),
            None => ("", authority),
        };
        let hosts: Vec<String> =
            hosts.split(',').map(str::trim).filter(|host| !host.is_empty()).map(str::to_owned).collect();
        if hosts.is_empty() {
            return Err("the URL names no host".into());
        }
        Ok(Self { scheme: scheme.to_owned(), userinfo: userinfo.to_owned(), hosts, rest: rest.to_owned() })
    }

    /// The single-host URL for `host` (`host:port`), with the list's credentials and options.
    pub fn url_for(&self, host: &str) -> String {
        let at = if self.userinfo.is_empty() { String::new() } else { format!("{}@", self.userinfo) };
        format!("{}://{at}{host}{}", self.scheme, self.rest)
    }

    /// One single-host URL per listed host.
    pub fn urls(&self) -> Vec<String> {
        self.hosts.iter().map(|host| self.url_for(host)).collect()
    }
}

/// The Redis Cluster slot of `key` (the CRC16 of its hash tag, or of the whole key).
pub fn slot_of(key: &str) -> Slot {
    Slot::for_key(key)
}

/// `slot_of` as a number, for traces (redis-rs keeps its slot's number to itself).
pub fn slot_number(key: &str) -> u16 {
    let key = key.as_bytes();
    // The first `{…}` with something inside it, as the Cluster specification defines.
    let tag = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            rest.iter().position(|&b| b == b'}').filter(|&close| close > 0).map(|close| &rest[..close])
        })
        .unwrap_or(key);
    crc16::State::<crc16::XMODEM>::calculate(tag) % 16384
}

/// The `host:port` of every node in a `CLUSTER NODES` reply, masters first.
pub fn cluster_node_hosts(nodes: &str) -> Vec<String> {
    let mut masters = Vec::new();
    let mut others = Vec::new();
    for line in nodes.lines() {
        let mut fields = line.split_whitespace();
        let (Some(_id), Some(address), Some(flags)) = (fields.next(), fields.next(), fields.next()) else {
            continue;
        };
        if flags.split(',').any(|flag| matches!(flag, "fail" | "noaddr" | "handshake")) {
            continue;
        }
        // `ip:port@cport[,hostname]`
        let host = address.split(['@', ',']).next().unwrap_or_default();
        if host.is_empty() || host.starts_with(':') {
            continue;
        }
        if flags.split(',').any(|flag| flag == "master") {
            masters.push(host.to_owned())
        } else {
            others.push(host.to_owned())
        }
    }
    masters.extend(others);
    masters
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_host_lists_sharing_credentials() {
        let list = UrlList::parse("redis://u:p@h1:7000,h2:7001/0").unwrap();
        assert_eq!(list.hosts, vec!["h1:7000", "h2:7001"]);
        assert_eq!(list.urls(), vec!["redis://u:p@h1:7000/0", "redis://u:p@h2:7001/0"]);
        let list = UrlList::parse("rediss://a:1, rediss://b:2").unwrap();
        assert_eq!(list.urls(), vec!["rediss://a:1", "rediss://b:2"]);
        assert_eq!(UrlList::parse("redis://h").unwrap().urls(), vec!["redis://h"]);
        assert!(UrlList::parse("redis://u:p@a:1,redis://b:2").is_err());
        assert!(UrlList::parse("h1:7000").is_err());
    }

    #[test]
    fn slots_follow_the_first_hash_tag() {
        // Values from the Redis Cluster specification's reference implementation.
        assert_eq!(Some(slot_of("123456789")), Slot::new(0x31C3));
        assert_eq!(slot_of("{user1000}.following"), slot_of("{user1000}.followers"));
        assert_eq!(slot_of("baton:d:rl:{{t}:a}:x"), slot_of("baton:d:rl:{{t}:b}:y"));
        for key in ["123456789", "{user1000}.following", "a{}b", "{}{x}", "x{y", "baton:d:rl:{{t}:a}:x", "", "{a}{b}"] {
            assert_eq!(Slot::new(slot_number(key)), Some(slot_of(key)), "{key}");
        }
    }

    #[test]
    fn reads_node_addresses() {
        let nodes = "07c3 127.0.0.1:30004@31004 slave e7d1 0 1 4 connected\n\
                     67ed 127.0.0.1:30002@31002,host master - 0 1 2 connected 5461-10922\n\
                     e7d1 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5460\n\
                     dead 127.0.0.1:30003@31003 master,fail - 0 1 3 disconnected\n";
        assert_eq!(cluster_node_hosts(nodes), vec!["127.0.0.1:30002", "127.0.0.1:30001", "127.0.0.1:30004"]);
    }
}
