-- Releases a lease if it is still held (compare-and-delete), and wakes waiters.
--
-- KEYS[4] the waiters marker (see acquire.lua)
-- ARGV[1] lease id    ARGV[2] the lock's notification channel
-- Returns {1, 1} when released, {1, 0} when the lease was not held.
local freed, released = 0, 0
local expires = tonumber(redis.call('ZSCORE', KEYS[1], ARGV[1]))
if expires and expires > now and redis.call('ZCARD', KEYS[1]) == 1 then
  -- The only holder, the common case: nothing else to purge or to outlive.
  redis.call('DEL', KEYS[1], KEYS[2])
  released = 1
else
  freed = purge_expired()
  released = redis.call('ZREM', KEYS[1], ARGV[1])
  if released == 1 then
    redis.call('HDEL', KEYS[2], unpack(lease_fields({ARGV[1]})))
    expire_with_latest()
  end
end
-- Uncontended locks, the common case, cost no message to every replica.
if (released == 1 or freed > 0) and redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('PUBLISH', ARGV[2], '1')
end
return {1, released}
