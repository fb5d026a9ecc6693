-- Moves a held lease's deadline to now + visibility.
--
-- KEYS[1] job   KEYS[2] active
-- ARGV: job_id, token, visibility µs
-- Returns {1, deadline_us} or {0, reason}.
local state, lease, cancelled = unpack(redis.call('HMGET', KEYS[1], 'state', 'lease', 'cancelled_lease'))
if state == 'CANCELLED' and cancelled == ARGV[2] then
  return {0, 'JOB_CANCELLED'}
end
if state ~= 'ACTIVE' or lease ~= ARGV[2] then
  return {0, 'JOB_NOT_LEASED'}
end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', int(deadline), ARGV[1])
redis.call('HSET', KEYS[1], 'lease_deadline', int(deadline))
return {1, deadline}
