-- Extends the leading lease ARGV[3] to now + ttl; the term stays.
--
-- ARGV[4] ttl µs, or "0" for the lease's current ttl
-- Returns {1, term, expires_us, ttl_us}, or {0, 'LEASE_NOT_HELD'} when ARGV[3] does not lead.
local s = reap(state())
if not leads(s, ARGV[3]) then
  return {0, 'LEASE_NOT_HELD'}
end
local ttl = tonumber(ARGV[4])
if ttl == 0 then
  ttl = s.ttl
end
local expires = now + ttl
redis.call('HSET', KEYS[1], 'expires', int(expires), 'ttl', int(ttl))
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return {1, s.term, expires, ttl}
