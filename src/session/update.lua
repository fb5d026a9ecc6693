-- Merges data into a live session and removes keys, atomically; counts as activity. May
-- also give the session new timeouts.
-- KEYS[1] session
-- ARGV: if_version (0 = none), max data bytes, new idle timeout µs (0 = keep), new absolute
--       timeout µs from creation (0 = keep), n_set, key/value pairs, n_remove, keys
-- Returns {1, its packed HGETALL}, {0, 'MISSING'} when missing or expired, {0, 'VERSION_MISMATCH'} /
-- {0, 'TOO_LARGE'}, or
-- {0, 'ENDED', subject} when the new absolute deadline had already passed (session deleted).
local session = live(KEYS[1])
if not session then
  return {0, 'MISSING'}
end
local version = tonumber(redis.call('HGET', KEYS[1], 'ver'))
local if_version = tonumber(ARGV[1])
if if_version > 0 and version ~= if_version then
  return {0, 'VERSION_MISMATCH'}
end
local new_idle, new_absolute = tonumber(ARGV[3]), tonumber(ARGV[4])
local size = tonumber(redis.call('HGET', KEYS[1], 'size'))
local n_set = tonumber(ARGV[5])
local remove_at = 6 + 2 * n_set
local n_remove = tonumber(ARGV[remove_at])
-- The size after the change, replaying it in order (removals, then sets) over each key's
-- length as it stands at that point: a key named twice, or both removed and set, is
-- counted once for what it finally holds.
local lengths = {}
local function length_of(key)
  if lengths[key] == nil then
    local field = 'd:' .. key
    lengths[key] = redis.call('HEXISTS', KEYS[1], field) == 1 and redis.call('HSTRLEN', KEYS[1], field) or false
  end
  return lengths[key]
end
for i = 1, n_remove do
  local key = ARGV[remove_at + i]
  local old = length_of(key)
  if old then
    size = size - #key - old
    lengths[key] = false
  end
end
for i = 1, n_set do
  local key, value = ARGV[4 + 2 * i], ARGV[5 + 2 * i]
  local old = length_of(key)
  if old then
    size = size - #key - old
  end
  size = size + #key + #value
  lengths[key] = #value
end
if size > tonumber(ARGV[2]) then
  return {0, 'TOO_LARGE'}
end
if new_absolute > 0 then
  session.abs_exp = tonumber(redis.call('HGET', KEYS[1], 'created')) + new_absolute
  if session.abs_exp <= now then
    local subject = redis.call('HGET', KEYS[1], 'subject')
    redis.call('DEL', KEYS[1])
    return {0, 'ENDED', subject}
  end
end
for i = 1, n_remove do
  redis.call('HDEL', KEYS[1], 'd:' .. ARGV[remove_at + i])
end
for i = 1, n_set do
  redis.call('HSET', KEYS[1], 'd:' .. ARGV[4 + 2 * i], ARGV[5 + 2 * i])
end
redis.call('HSET', KEYS[1], 'ver', version + 1, 'size', int(size))
if new_idle > 0 or new_absolute > 0 then
  -- New timeouts move the idle deadline either way, so no coalescing here.
  if new_idle > 0 then
    redis.call('HSET', KEYS[1], 'idle_timeout', int(new_idle))
  end
  local idle_timeout = tonumber(redis.call('HGET', KEYS[1], 'idle_timeout'))
  local idle_exp = math.min(now + idle_timeout, session.abs_exp)
  redis.call('HSET', KEYS[1], 'abs_exp', int(session.abs_exp), 'idle_exp', int(idle_exp), 'last_seen', int(now))
  redis.call('PEXPIREAT', KEYS[1], int(math.ceil(idle_exp / 1000)))
else
  touch(KEYS[1], session)
end
return session_reply(KEYS[1])
