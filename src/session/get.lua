-- Reads a session, sliding its idle deadline unless ARGV[1] is "0".
-- KEYS[1] session.  Returns {1, its packed HGETALL}, {0, 'MISSING'}, or {0, 'EXPIRED'} when it had just expired
-- (deleted now).
local session = live(KEYS[1])
if not session then
  return {0, expired_on_read and 'EXPIRED' or 'MISSING'}
end
if ARGV[1] == '1' then
  touch(KEYS[1], session)
end
return session_reply(KEYS[1])
