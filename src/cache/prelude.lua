-- Shared by every cache-entry script (prepended at load time).
--
-- An entry is one hash, KEYS[1], under the hash tag {key}:
--   v          the value (absent while only a fill lease exists)
--   ver        version: max(previous + 1, Redis clock µs), so it changes on every write
--              and never repeats, even across a Delete
--   exp        expiry, µs;  stale: until when the value may still be served stale, µs
--   tags       "tag\0generation\0…" as stamped at write time (checked on read)
--   fill, fill_exp, fill_at   the current fill token, its lease deadline and when it was
--              granted, µs
-- The hash itself expires at max(stale, fill_exp).

local function read_entry()
  local v, ver, exp, stale, tags, fill, fill_exp =
    unpack(redis.call('HMGET', KEYS[1], 'v', 'ver', 'exp', 'stale', 'tags', 'fill', 'fill_exp'))
  return {
    value = v, version = tonumber(ver) or 0, exp = tonumber(exp) or 0, stale = tonumber(stale) or 0,
    tags = tags or '', fill = fill, fill_exp = tonumber(fill_exp) or 0,
  }
end

-- The hash lives as long as its value may be served or its fill lease runs.
local function expire_entry()
  local stale, fill_exp = unpack(redis.call('HMGET', KEYS[1], 'stale', 'fill_exp'))
  local until_us = math.max(tonumber(stale) or 0, tonumber(fill_exp) or 0)
  if until_us > now then
    redis.call('PEXPIREAT', KEYS[1], int(math.ceil(until_us / 1000)))
  else
    redis.call('DEL', KEYS[1])
  end
end

-- Writes a value; voids any fill token. Returns the new version and expiry.
local function write_value(entry, value, ttl, stale_ttl, tags)
  local version = math.max(entry.version + 1, now)
  local exp = now + ttl
  redis.call('HSET', KEYS[1], 'v', value, 'ver', int(version), 'exp', int(exp),
    'stale', int(exp + stale_ttl), 'tags', tags)
  redis.call('HDEL', KEYS[1], 'fill', 'fill_exp', 'fill_at')
  expire_entry()
  return version, exp
end

-- Whether the entry has a value that is fresh, or `invalidated` (the version Baton found
-- hidden by a tag invalidation) says it is gone.
local function fresh(entry, invalidated)
  return entry.value ~= nil and now < entry.exp and entry.version ~= invalidated
end

-- Reply shape for an entry: {1, kind, value, version, exp_us, tags}.
local function reply(kind, entry)
  return {1, kind, entry.value or '', int(entry.version), int(entry.exp), entry.tags}
end
