-- Records a held job's progress.
--
-- KEYS[1] job  KEYS[2] watched  KEYS[3] events
-- ARGV: job_id, token, value, detail, the queue's channel
-- Returns {1, reported_at_us} or {0, reason}.
local refused = lease_refusal(KEYS[1], ARGV[2])
if refused then
  return {0, refused}
end
redis.call('HSET', KEYS[1], 'progress', ARGV[3], 'progress_detail', ARGV[4], 'progress_at', now_int)
record_events(KEYS[2], KEYS[3], ARGV[5])
event('progress', ARGV[1], 'ACTIVE', redis.call('HGET', KEYS[1], 'attempts'), 'progress', ARGV[3], 'detail', ARGV[4])
announce_events()
return {1, now}
