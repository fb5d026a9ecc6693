-- Cancels a job: a waiting one is removed; an active one ends CANCELLED at once, its
-- holder's Ack is refused and its stream is told (it finds `cancelled_lease`).
--
-- KEYS[1] job  KEYS[2] ready  KEYS[3] ready_since  KEYS[4] scheduled  KEYS[5] active
-- KEYS[6] watched  KEYS[7] events  KEYS[8] groups  KEYS[9] gactive  KEYS[10] config
-- ARGV: job_id, retention ms, the queue's channel (a stream's is it plus ':' and the
--       first 16 hex digits of its lease tokens)
-- Returns {1, cancelled (0|1), state after}.
local state, lease, group, holds = unpack(redis.call('HMGET', KEYS[1], 'state', 'lease', 'group', 'holds'))
if not state then
  return {1, 0, 'MISSING'}
end
if state ~= 'READY' and state ~= 'SCHEDULED' and state ~= 'FAILED' and state ~= 'ACTIVE' then
  return {1, 0, state}
end
for i = 2, 5 do
  redis.call('ZREM', KEYS[i], ARGV[1])
end
use_groups(KEYS[2], KEYS[8], KEYS[9], KEYS[10])
if group and group ~= '' then
  redis.call('ZREM', group_ready(group), ARGV[1])
  if state == 'ACTIVE' or holds then
    redis.call('HDEL', KEYS[1], 'holds')
    release_group(group)
  end
end
redis.call('HSET', KEYS[1], 'state', 'CANCELLED', 'lease', '', 'finished_at', now_int)
if state == 'ACTIVE' then
  redis.call('HSET', KEYS[1], 'cancelled_lease', lease)
  redis.call('PUBLISH', ARGV[3] .. ':' .. string.sub(lease, 1, 16), 'cancelled')
end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
record_events(KEYS[6], KEYS[7], ARGV[3])
event('cancelled', ARGV[1], 'CANCELLED', redis.call('HGET', KEYS[1], 'attempts'))
announce_events()
return {1, 1, 'CANCELLED'}
