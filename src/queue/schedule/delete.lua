-- Deletes schedule ARGV[1].
--
-- KEYS[1] schedules   KEYS[2] state   KEYS[3] due
-- Returns {1, deleted (0|1), schedules left in the queue}.
local deleted = redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
return {1, deleted, redis.call('HLEN', KEYS[1])}
