-- Creates (or with ARGV[4] = "1" replaces) schedule ARGV[1] of one queue.
--
-- KEYS[1] schedules   KEYS[2] state   KEYS[3] due
-- ARGV[1] id   ARGV[2] definition   ARGV[3] created µs (the generation; Redis's clock, read
-- by the caller to compute the first tick)   ARGV[4] replace   ARGV[5] most schedules per
-- queue   ARGV[6] first tick µs ('' when none)
-- The caller announces the schedule once it is in the index (not here: a scheduler woken
-- now could look before it is).
-- Returns {1}, {0, 'SCHEDULE_EXISTS'} or {0, 'TOO_MANY_SCHEDULES'}.
local exists = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if exists and ARGV[4] ~= '1' then
  return {0, 'SCHEDULE_EXISTS'}
end
if not exists and redis.call('HLEN', KEYS[1]) >= tonumber(ARGV[5]) then
  return {0, 'TOO_MANY_SCHEDULES'}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], format_state(tonumber(ARGV[3]), 0, 0, false))
if ARGV[6] == '' then
  redis.call('ZREM', KEYS[3], ARGV[1])
else
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[1])
end
return {1}
