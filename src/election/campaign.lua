-- Makes ARGV[3] the leading lease of election KEYS[1..2] unless another lease leads.
--
-- ARGV[3] new lease id     ARGV[4] ttl µs     ARGV[5] value     ARGV[6] owner
-- ARGV[7] request id ('' for none)
-- Returns {1, lease_id, term, expires_us, ttl_us, since_us, value, owner} when elected (or
-- re-elected for the same request id), else {0, 'BUSY', term, value, owner, since_us,
-- expires_us, expires_in_us} of the current leader.
local s = reap(state())
if s.lease then
  if ARGV[7] ~= '' and s.req == ARGV[7] then
    return {1, s.lease, s.term, s.expires, s.ttl, s.since, s.value, s.owner}
  end
  return {0, 'BUSY', s.term, s.value, s.owner, s.since, s.expires, s.expires - now}
end

-- Terms rise across expired state and across a Redis that lost recent writes, as lock
-- fencing tokens do (docs/locks.md).
local term = math.max((s.term or 0) + 1, now)
local ttl = tonumber(ARGV[4])
s = { lease = ARGV[3], term = term, value = ARGV[5], owner = ARGV[6], since = now, expires = now + ttl, ttl = ttl,
  req = ARGV[7] }
redis.call('HSET', KEYS[1], 'lease', s.lease, 'term', int(term), 'value', s.value, 'owner', s.owner,
  'since', int(now), 'expires', int(s.expires), 'ttl', int(ttl), 'req', s.req)
record('elected', s)
return {1, s.lease, term, s.expires, ttl, now, s.value, s.owner}
