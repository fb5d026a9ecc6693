-- Reads a session, sliding its idle deadline unless ARGV[1] is "0".
-- KEYS[1] session.  Returns its HGETALL, or 0 when missing or expired.
local session = live(KEYS[1])
if not session then
  return 0
end
if ARGV[1] == '1' then
  touch(KEYS[1], session)
end
return redis.call('HGETALL', KEYS[1])
