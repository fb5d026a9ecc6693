-- Creates a session unless one with this id hash exists.
-- KEYS[1] session
-- ARGV: subject, handle, idle_timeout µs, absolute_timeout µs, size, then n_data, data
--       key/value pairs, then n_attributes, attribute key/value pairs
-- Returns {1, the new session's packed HGETALL}, or {0, 'SESSION_EXISTS'} when the id is taken.
if redis.call('EXISTS', KEYS[1]) == 1 and live(KEYS[1]) then
  return {0, 'SESSION_EXISTS'}
end
redis.call('DEL', KEYS[1])
local idle_timeout, absolute = tonumber(ARGV[3]), tonumber(ARGV[4])
local abs_exp = now + absolute
local idle_exp = math.min(now + idle_timeout, abs_exp)
redis.call('HSET', KEYS[1], 'subject', ARGV[1], 'handle', ARGV[2], 'ver', 1, 'created', int(now),
  'last_seen', int(now), 'idle_timeout', int(idle_timeout), 'idle_exp', int(idle_exp),
  'abs_exp', int(abs_exp), 'size', ARGV[5])
local at = 6
for _, prefix in ipairs({'d:', 'a:'}) do
  local n = tonumber(ARGV[at])
  for i = 1, n do
    redis.call('HSET', KEYS[1], prefix .. ARGV[at + 2 * i - 1], ARGV[at + 2 * i])
  end
  at = at + 2 * n + 1
end
redis.call('PEXPIREAT', KEYS[1], int(math.ceil(idle_exp / 1000)))
return session_reply(KEYS[1])
