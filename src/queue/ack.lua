-- Completes a job held under `token`. Repeating an applied Ack answers OK.
--
-- KEYS[1] job   KEYS[2] active
-- ARGV: job_id, token, result, retention ms, the holding stream's channel ('' when that
--       stream lives in the calling process, which tells it directly)
-- Returns 1 done, or {0, reason} when the lease is not the current one.
local state, lease = unpack(redis.call('HMGET', KEYS[1], 'state', 'lease'))
if state == 'SUCCEEDED' and lease == ARGV[2] then
  return 1
end
local refusal = lease_refusal(KEYS[1], ARGV[2])
if refusal then
  return {0, refusal}
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'SUCCEEDED', 'result', ARGV[3], 'finished_at', int(now))
redis.call('PEXPIRE', KEYS[1], ARGV[4])
if ARGV[5] ~= '' then
  redis.call('PUBLISH', ARGV[5], 'settled')
end
return 1
