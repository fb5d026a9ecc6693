-- Moves a held lease's deadline to now + visibility.
--
-- KEYS[1] job   KEYS[2] active
-- ARGV: job_id, token, visibility µs
-- Returns {1, deadline_us} or {0, reason}.
local refusal = lease_refusal(KEYS[1], ARGV[2])
if refusal then
  return {0, refusal}
end
local deadline = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[2], 'XX', int(deadline), ARGV[1])
redis.call('HSET', KEYS[1], 'lease_deadline', int(deadline))
return {1, deadline}
