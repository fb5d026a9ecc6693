-- Shared by every lock script (prepended at load time).
--
-- A lock `name` is three keys sharing the hash tag {name}:
--   KEYS[1] holders  sorted set: lease_id -> expiry, µs on Redis's clock
--   KEYS[2] leases   hash: lease_id -> "<fencing token>|<ttl µs>|r<n>|<request id><owner>",
--                    where n is the request id's length (0 without one); and, for a lease
--                    granted with a request id, "r:<request id>" -> lease_id, so that a
--                    retried Acquire gets its lease back. Both fields leave together.
--   KEYS[3] fence    the fencing counter (INCR), expiring after a long idle time
-- A lease is held while its expiry is in the future; expired entries are dropped lazily
-- by whichever script touches the lock next.

-- A lease's details -> token, ttl, owner, request id ('' without one). The owner may itself
-- contain '|'; a lease written before request ids moved here has no "r<n>|" part.
local function parse_lease(info)
  local token, ttl, rest = string.match(info, '^(%d+)|(%d+)|(.*)$')
  local length, tail = string.match(rest, '^r(%d+)|(.*)$')
  if not length then
    return tonumber(token), tonumber(ttl), rest, ''
  end
  length = tonumber(length)
  return tonumber(token), tonumber(ttl), string.sub(tail, length + 1), string.sub(tail, 1, length)
end

local function format_lease(token, ttl, owner, request)
  return int(token) .. '|' .. int(ttl) .. '|r' .. #request .. '|' .. request .. owner
end

-- The hash fields of leases `ids`: their details and their request ids' entries.
local function lease_fields(ids)
  local fields = {}
  local infos = redis.call('HMGET', KEYS[2], unpack(ids))
  for i, id in ipairs(ids) do
    fields[#fields + 1] = id
    if infos[i] then
      local _, _, _, request = parse_lease(infos[i])
      if request ~= '' then
        fields[#fields + 1] = 'r:' .. request
      end
    end
  end
  return fields
end

local function purge_expired()
  local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', int(now))
  if #expired > 0 then
    redis.call('HDEL', KEYS[2], unpack(lease_fields(expired)))
    redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', int(now))
  end
  return #expired
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
