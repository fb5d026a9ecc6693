-- Shared by every election script (prepended at load time).
--
-- An election `name` is two keys sharing the hash tag {name}:
--   KEYS[1] state    hash: lease (id of the leading lease, absent when nobody leads),
--                    term, value, owner, since, expires, ttl (µs on Redis's clock), req
--                    (the leading Campaign's request id); `term` outlives leaderships
--   KEYS[2] history  stream of changes: kind, term, value, owner, since, expires
-- Both expire after the long idle time of ARGV[1] (ms) from their latest change, like a
-- lock's fencing counter. ARGV[2] is the channel announcing each change to waiting
-- candidates and observers.
local HISTORY_KEPT = 128

local function state()
  local s = redis.call('HMGET', KEYS[1], 'lease', 'term', 'value', 'owner', 'since', 'expires', 'ttl', 'req')
  return {
    lease = s[1], term = tonumber(s[2]), value = s[3] or '', owner = s[4] or '',
    since = tonumber(s[5]), expires = tonumber(s[6]), ttl = tonumber(s[7]), req = s[8] or '',
  }
end

-- Appends one change to the history and announces it.
local function record(kind, s)
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', HISTORY_KEPT, '*', 'kind', kind, 'term', int(s.term),
    'value', s.value, 'owner', s.owner, 'since', int(s.since), 'expires', int(s.expires))
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
  redis.call('PEXPIRE', KEYS[2], ARGV[1])
  redis.call('PUBLISH', ARGV[2], kind)
end

-- A leader whose lease ran out is recorded as expired by whichever script sees it first.
local function reap(s)
  if s.lease and s.expires <= now then
    redis.call('HDEL', KEYS[1], 'lease', 'req')
    record('expired', s)
    s.lease = nil
  end
  return s
end

local function leads(s, lease)
  return s.lease == lease and s.expires > now
end
