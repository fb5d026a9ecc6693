-- Grants a lease on lock KEYS[1..3] if fewer than `permits` leases are held.
--
-- KEYS[4]  waiters marker: present while some Acquire waits, so a release only publishes
--          when somebody listens
-- ARGV[1]  new lease id     ARGV[2] ttl µs     ARGV[3] permits
-- ARGV[4]  owner            ARGV[5] fence counter idle expiry, ms
-- ARGV[6]  the request id, or "" for none
-- ARGV[7]  how long a waiter sleeps at most before re-trying, ms ("0": the caller won't wait)
-- Returns {1, lease_id, token, expires_us, ttl_us} when granted (or re-granted), else
--         {0, 'BUSY', owner, token, expires_us, expires_in_us} of the lease expiring first.

local request = ARGV[6]
-- A free lock, the common case, has no holders to purge and no lease a retry could
-- already hold (two commands fewer).
local held = redis.call('ZCARD', KEYS[1])
if held > 0 then
  held = held - purge_expired()
end

if held > 0 and request ~= '' then
  local prior = redis.call('HGET', KEYS[2], 'r:' .. request)
  if prior then
    local expires = redis.call('ZSCORE', KEYS[1], prior)
    local info = redis.call('HGET', KEYS[2], prior)
    if expires and info then
      local token, ttl = parse_lease(info)
      return {1, prior, token, tonumber(expires), ttl}
    end
  end
end

local permits = tonumber(ARGV[3])
if held < permits then
  -- Every token is max(counter + 1, Redis's clock in µs), so tokens keep rising across
  -- an expired counter and across a Redis that lost recent writes (restarted from an
  -- older snapshot or AOF, or failed over to a lagging replica), as long as its clock
  -- has not stepped back past the lost grants (docs/locks.md).
  local token = math.max((tonumber(redis.call('GET', KEYS[3])) or 0) + 1, now)
  redis.call('SET', KEYS[3], int(token), 'PX', ARGV[5])
  local ttl = tonumber(ARGV[2])
  local expires = now + ttl
  redis.call('ZADD', KEYS[1], int(expires), ARGV[1])
  if request == '' then
    redis.call('HSET', KEYS[2], ARGV[1], format_lease(token, ttl, ARGV[4], request))
  else
    redis.call('HSET', KEYS[2], ARGV[1], format_lease(token, ttl, ARGV[4], request), 'r:' .. request, ARGV[1])
  end
  if held == 0 then
    expire_at(expires)
  else
    expire_with_latest()
  end
  return {1, ARGV[1], token, expires, ttl}
end

if ARGV[7] ~= '0' then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[7])
end
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local token, _, owner = parse_lease(redis.call('HGET', KEYS[2], first[1]) or '0|0|r0|')
return {0, 'BUSY', owner, token, tonumber(first[2]), tonumber(first[2]) - now}
