-- Writes a session taken by `take.lua` under its new id, keeping data, version and
-- deadlines. KEYS[1] new session; ARGV[1] new handle, then the taken field/value pairs.
-- Returns {1, the new session's packed HGETALL}, or {0, 'MISSING'} when its deadlines have passed
-- meanwhile.
local fields = {}
for i = 2, #ARGV, 2 do
  fields[ARGV[i]] = ARGV[i + 1]
end
local idle_exp, abs_exp = tonumber(fields['idle_exp']), tonumber(fields['abs_exp'])
if not idle_exp or not abs_exp or idle_exp <= now or abs_exp <= now then
  return {0, 'MISSING'}
end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
redis.call('HSET', KEYS[1], 'handle', ARGV[1])
redis.call('PEXPIREAT', KEYS[1], int(math.ceil(idle_exp / 1000)))
return session_reply(KEYS[1])
