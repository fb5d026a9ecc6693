-- Reads a session, sliding its idle deadline unless ARGV[1] is "0".
-- KEYS[1] session.  Returns its HGETALL, 0 when missing, or -1 when it had just expired
-- (deleted now).
local session = live(KEYS[1])
if not session then
  return expired_on_read and -1 or 0
end
if ARGV[1] == '1' then
  touch(KEYS[1], session)
end
return redis.call('HGETALL', KEYS[1])
