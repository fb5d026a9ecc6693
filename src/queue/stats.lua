-- Counts per state, and how long the oldest ready job has waited; also drops dead and
-- succeeded entries whose job hash has expired (retention).
--
-- KEYS[1] ready  KEYS[2] ready_since  KEYS[3] scheduled  KEYS[4] active  KEYS[5] dead
-- KEYS[6] paused  KEYS[7] watched  KEYS[8] events  KEYS[9] succeeded
-- ARGV[1] dead retention µs  ARGV[2] retention µs
-- Returns {1, ready, scheduled, active, dead, paused, oldest_ready_age_us, succeeded}.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', int(now - tonumber(ARGV[1])))
redis.call('ZREMRANGEBYSCORE', KEYS[9], '-inf', int(now - tonumber(ARGV[2])))
local oldest = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
local age = 0
if #oldest > 0 then
  age = math.max(0, now - tonumber(oldest[2]))
end
return {
  1, redis.call('ZCARD', KEYS[2]), redis.call('ZCARD', KEYS[3]), redis.call('ZCARD', KEYS[4]),
  redis.call('ZCARD', KEYS[5]), redis.call('EXISTS', KEYS[6]), age, redis.call('ZCARD', KEYS[9]),
}
