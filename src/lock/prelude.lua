-- Shared by every lock script (prepended at load time).
--
-- A lock `name` is three keys sharing the hash tag {name}:
--   KEYS[1] holders  sorted set: lease_id -> expiry, µs on Redis's clock
--   KEYS[2] leases   hash: lease_id -> "<fencing token>|<ttl µs>|<owner>"
--   KEYS[3] fence    the fencing counter (INCR), expiring after a long idle time
-- A lease is held while its expiry is in the future; expired entries are dropped lazily
-- by whichever script touches the lock next.

local function purge_expired()
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now))
  if #expired > 0 then
    redis.call('HDEL', KEYS[2], unpack(expired))
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
  end
  return #expired
end

-- "<token>|<ttl>|<owner>" -> token, ttl, owner (the owner may itself contain '|').
local function parse_lease(info)
  local token, ttl, owner = string.match(info, '^(%d+)|(%d+)|(.*)$')
  return tonumber(token), tonumber(ttl), owner
end

-- Both structures live exactly as long as the longest lease, which expires at `latest_us`.
local function expire_at(latest_us)
  local at = int(math.ceil(latest_us / 1000) + 1)
  redis.call('PEXPIREAT', KEYS[1], at)
  redis.call('PEXPIREAT', KEYS[2], at)
end

local function expire_with_latest()
  local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
  if #latest == 0 then
    redis.call('DEL', KEYS[1], KEYS[2])
  else
    expire_at(tonumber(latest[2]))
  end
end
