-- Writes an entry, optionally conditionally. KEYS[1] entry.
-- ARGV: value, ttl µs, stale_ttl µs, tags, if_version (0 = none), if_absent (0|1),
--       invalidated version (-1 = none), notify channel
-- Returns {1, version, exp_us} (the caller has the value), or
-- {0, 'VERSION_MISMATCH' | 'ALREADY_EXISTS'}.
local entry = read_entry()
local present = fresh(entry, tonumber(ARGV[7]))
local if_version = tonumber(ARGV[5])
if if_version > 0 and (not present or entry.version ~= if_version) then
  return {0, 'VERSION_MISMATCH'}
end
if ARGV[6] == '1' and present then
  return {0, 'ALREADY_EXISTS'}
end
local version, exp = write_value(entry, ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4])
redis.call('PUBLISH', ARGV[8], 'set')
return {1, int(version), int(exp)}
