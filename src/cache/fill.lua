-- Stores a loader's value if its fill token is still the current one (no Set, Delete or
-- newer token since, lease not expired), or gives the token up. KEYS[1] entry.
-- ARGV: token, value, ttl µs, stale_ttl µs, tags, abandon (0|1), notify channel,
--       the newest generation of the value's tags (Redis clock µs of its last invalidation)
-- Returns {1, 1, version, exp_us} stored (the caller has the value), {1, 2} abandoned, or
-- {0, reason}:
-- 'FILL_TOKEN_STALE', or 'TAG_INVALIDATED' when one of the value's tags was invalidated
-- after the token was granted, so the loader may have read what the invalidation replaced
-- (the token is given up and waiters are woken to fetch again).
local entry = read_entry()
if entry.fill ~= ARGV[1] or entry.fill_exp < now then
  return {0, 'FILL_TOKEN_STALE'}
end
-- (A token granted by a Baton that did not record fill_at is judged by its stamps alone.)
local fill_at = tonumber(redis.call('HGET', KEYS[1], 'fill_at'))
if ARGV[6] == '1' or (fill_at and tonumber(ARGV[8]) >= fill_at) then
  redis.call('HDEL', KEYS[1], 'fill', 'fill_exp', 'fill_at')
  expire_entry()
  if ARGV[6] == '1' then
    return {1, 2}
  end
  redis.call('PUBLISH', ARGV[7], 'filled')
  return {0, 'TAG_INVALIDATED'}
end
local version, exp = write_value(entry, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5])
redis.call('PUBLISH', ARGV[7], 'filled')
return {1, 1, int(version), int(exp)}
