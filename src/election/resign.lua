-- Ends the leadership of lease ARGV[3], if it still leads.
--
-- Returns {1, 1} when it resigned, {1, 0} when it no longer led.
local s = reap(state())
if not leads(s, ARGV[3]) then
  return {1, 0}
end
redis.call('HDEL', KEYS[1], 'lease', 'req')
s.expires = now
record('resigned', s)
return {1, 1}
