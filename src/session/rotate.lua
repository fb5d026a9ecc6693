-- Moves a live session to a new id: same data, version and deadlines; the old id is dead
-- in the same step.
-- KEYS[1] old session  KEYS[2] new session;  ARGV[1] new handle
-- Returns {1, the new session's packed HGETALL}, or {0, 'MISSING'} when the old one is missing or
-- expired.
-- (Both keys in one script: on a single Redis or Sentinel. On a Redis Cluster the two keys
-- are in different slots, and take.lua then put.lua do the same in two steps.)
local session, fields = take_live(KEYS[1])
if not session then
  return {0, 'MISSING'}
end
redis.call('DEL', KEYS[2])
redis.call('HSET', KEYS[2], unpack(fields))
redis.call('HSET', KEYS[2], 'handle', ARGV[1])
redis.call('PEXPIREAT', KEYS[2], int(math.ceil(session.idle_exp / 1000)))
return session_reply(KEYS[2])
