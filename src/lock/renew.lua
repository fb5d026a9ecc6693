-- Extends a held lease to now + ttl; the fencing token stays.
--
-- ARGV[1] lease id    ARGV[2] ttl µs, or "0" for the lease's current ttl
-- Returns {1, token, expires_us, ttl_us}, or {0, 'LEASE_NOT_HELD'} when the lease expired,
-- was released, or never existed.
purge_expired()
local info = redis.call('HGET', KEYS[2], ARGV[1])
if not info then
  return {0, 'LEASE_NOT_HELD'}
end
local token, current_ttl, owner, request = parse_lease(info)
local ttl = tonumber(ARGV[2])
if ttl == 0 then
  ttl = current_ttl
end
local expires = now + ttl
redis.call('ZADD', KEYS[1], 'XX', int(expires), ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], format_lease(token, ttl, owner, request))
expire_with_latest()
return {1, token, expires, ttl}
