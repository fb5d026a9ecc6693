-- Pauses (ARGV[2] = "1") or resumes (ARGV[2] = "0", from tick ARGV[3], '' when none)
-- schedule ARGV[1]. Resuming a running schedule, or pausing a paused one, changes nothing.
--
-- KEYS[1] schedules   KEYS[2] state   KEYS[3] due   ARGV[4] schedules channel
-- Returns {1} or {0, 'SCHEDULE_NOT_FOUND'}.
local state = redis.call('HGET', KEYS[2], ARGV[1])
if not state or redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then
  return {0, 'SCHEDULE_NOT_FOUND'}
end
local created, last, fired, paused = parse_state(state)
local pause = ARGV[2] == '1'
if pause == paused then
  return {1}
end
redis.call('HSET', KEYS[2], ARGV[1], format_state(created, last, fired, pause))
if pause then
  redis.call('ZREM', KEYS[3], ARGV[1])
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[3], ARGV[3], ARGV[1])
  redis.call('PUBLISH', ARGV[4], 'resumed')
end
return {1}
