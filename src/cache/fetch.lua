-- Reads an entry with stampede protection. KEYS[1] entry.
-- ARGV: new fill token, lease_ttl µs, may grant (0|1: a waiter re-checking only wants the
--       value), invalidated version (-1 = none)
-- Returns {1, kind, …}, one of
--   {1, 1, value, version, exp_us, tags}              fresh hit
--   {1, 2, value, version, exp_us, tags, token|''}    stale hit; a token for one refresher
--   {1, 3, token}                                     miss: this caller fills
--   {1, 4, lease_left_us}                             miss: someone else is filling; wait
local entry = read_entry()
local invalidated = tonumber(ARGV[4])
if fresh(entry, invalidated) then
  return reply(1, entry)
end
local filling = entry.fill ~= nil and entry.fill_exp > now
local grant = ARGV[3] == '1' and not filling
if grant then
  redis.call('HSET', KEYS[1], 'fill', ARGV[1], 'fill_exp', int(now + tonumber(ARGV[2])), 'fill_at', int(now))
  expire_entry()
end
if entry.value ~= nil and now < entry.stale and entry.version ~= invalidated then
  local stale_reply = reply(2, entry)
  stale_reply[7] = grant and ARGV[1] or ''
  return stale_reply
end
if grant then
  return {1, 3, ARGV[1]}
end
if filling then
  return {1, 4, int(entry.fill_exp - now)}
end
return {1, 4, 0}
