-- Deletes an entry (and with it any fill token). KEYS[1] entry.
-- ARGV: if_version (0 = none)
-- Returns {1, 1} deleted, {1, 0} absent, or {0, 'VERSION_MISMATCH'}.
local entry = read_entry()
local if_version = tonumber(ARGV[1])
if if_version > 0 and entry.value ~= nil and entry.version ~= if_version then
  return {0, 'VERSION_MISMATCH'}
end
return {1, redis.call('DEL', KEYS[1])}
