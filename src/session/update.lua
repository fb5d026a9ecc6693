-- Merges data into a live session and removes keys, atomically; counts as activity.
-- KEYS[1] session
-- ARGV: if_version (0 = none), max data bytes, n_set, key/value pairs, n_remove, keys
-- Returns the HGETALL, 0 when missing or expired, or {'VERSION_MISMATCH'} / {'TOO_LARGE'}.
local session = live(KEYS[1])
if not session then
  return 0
end
local version = tonumber(redis.call('HGET', KEYS[1], 'ver'))
local if_version = tonumber(ARGV[1])
if if_version > 0 and version ~= if_version then
  return {'VERSION_MISMATCH'}
end
local size = tonumber(redis.call('HGET', KEYS[1], 'size'))
local n_set = tonumber(ARGV[3])
local remove_at = 4 + 2 * n_set
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
  local key, value = ARGV[2 + 2 * i], ARGV[3 + 2 * i]
  local old = length_of(key)
  if old then
    size = size - #key - old
  end
  size = size + #key + #value
  lengths[key] = #value
end
if size > tonumber(ARGV[2]) then
  return {'TOO_LARGE'}
end
for i = 1, n_remove do
  redis.call('HDEL', KEYS[1], 'd:' .. ARGV[remove_at + i])
end
for i = 1, n_set do
  redis.call('HSET', KEYS[1], 'd:' .. ARGV[2 + 2 * i], ARGV[3 + 2 * i])
end
redis.call('HSET', KEYS[1], 'ver', version + 1, 'size', int(size))
touch(KEYS[1], session)
return redis.call('HGETALL', KEYS[1])
