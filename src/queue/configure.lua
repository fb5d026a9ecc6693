-- Replaces a queue's configuration, keeping its round-robin counters, and wakes its
-- consumers (a raised limit may let jobs go at once).
--
-- KEYS[1] config
-- ARGV[1] the queue's channel, then field/value pairs (gc, fifo, lim_*)
-- Returns {1}.
local keep = {turn = true, uturn = true, seq = true}
for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not keep[field] then
    redis.call('HDEL', KEYS[1], field)
  end
end
if #ARGV > 1 then
  redis.call('HSET', KEYS[1], unpack(ARGV, 2))
end
redis.call('PUBLISH', ARGV[1], 'ready')
return {1}
