-- Reads election KEYS[1..2]: the current leader (recording an expired one first) and the
-- changes after history entry ARGV[3] ('' reads none).
--
-- ARGV[4] at most this many changes
-- Returns {1, last_id, gap, now_us, leading, term, value, owner, since_us, expires_us,
-- changes}:
-- last_id is the newest history entry ('0-0' when none), gap is 1 when changes after
-- ARGV[3] were already trimmed, leading is 1 when somebody leads, and changes is a flat
-- list of (id, kind, term, value, owner, since_us, expires_us, at_ms).
local s = reap(state())

local function older(a, b)
  local a_ms, a_seq = string.match(a, '^(%d+)-(%d+)$')
  local b_ms, b_seq = string.match(b, '^(%d+)-(%d+)$')
  a_ms, b_ms = tonumber(a_ms), tonumber(b_ms)
  return a_ms < b_ms or (a_ms == b_ms and tonumber(a_seq) < tonumber(b_seq))
end

local changes, gap = {}, 0
if ARGV[3] ~= '' then
  local entries = redis.call('XRANGE', KEYS[2], '(' .. ARGV[3], '+', 'COUNT', ARGV[4])
  if #entries > 0 and ARGV[3] ~= '0-0' then
    -- The entry after ARGV[3] is gone when the oldest kept entry is newer than it and
    -- ARGV[3] itself is no longer kept.
    local oldest = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)[1][1]
    if older(ARGV[3], oldest) then
      gap = 1
    end
  end
  for _, entry in ipairs(entries) do
    local f = {}
    for i = 1, #entry[2], 2 do
      f[entry[2][i]] = entry[2][i + 1]
    end
    local at = string.match(entry[1], '^(%d+)-')
    table.insert(changes, entry[1])
    table.insert(changes, f.kind)
    table.insert(changes, tonumber(f.term))
    table.insert(changes, f.value)
    table.insert(changes, f.owner)
    table.insert(changes, tonumber(f.since))
    table.insert(changes, tonumber(f.expires))
    table.insert(changes, tonumber(at))
  end
end

local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
local last_id = last and last[1] or '0-0'
if s.lease then
  return {1, last_id, gap, now, 1, s.term, s.value, s.owner, s.since, s.expires, changes}
end
return {1, last_id, gap, now, 0, s.term or 0, '', '', 0, 0, changes}
