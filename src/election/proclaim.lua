-- Replaces the value of the leading lease ARGV[3] with ARGV[4].
--
-- Returns {1, term, since_us, expires_us, owner}, or {0, 'LEASE_NOT_HELD'}.
local s = reap(state())
if not leads(s, ARGV[3]) then
  return {0, 'LEASE_NOT_HELD'}
end
s.value = ARGV[4]
redis.call('HSET', KEYS[1], 'value', s.value)
record('proclaimed', s)
return {1, s.term, s.since, s.expires, s.owner}
