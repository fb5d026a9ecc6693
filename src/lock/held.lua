-- Whether a lease is held right now. KEYS as every lock script; ARGV[1] the lease id.
-- Returns {1, 1} or {1, 0}. Reads only.
local expires = redis.call('ZSCORE', KEYS[1], ARGV[1])
if expires and tonumber(expires) > now then
  return {1, 1}
end
return {1, 0}
