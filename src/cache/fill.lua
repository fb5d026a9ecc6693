-- Stores a loader's value if its fill token is still the current one (no Set, Delete or
-- newer token since, lease not expired), or gives the token up. KEYS[1] entry.
-- ARGV: token, value, ttl µs, stale_ttl µs, tags, abandon (0|1), notify channel
-- Returns {1, value, version, exp_us, tags}, {2} abandoned, or {0, 'FILL_TOKEN_STALE'}.
local entry = read_entry()
if entry.fill ~= ARGV[1] or entry.fill_exp < now then
  return {0, 'FILL_TOKEN_STALE'}
end
if ARGV[6] == '1' then
  redis.call('HDEL', KEYS[1], 'fill', 'fill_exp')
  expire_entry()
  return {2}
end
local version, exp = write_value(entry, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
redis.call('PUBLISH', ARGV[7], 'filled')
return {1, ARGV[2], int(version), int(exp), ARGV[5]}
