-- Shared by every session script (prepended at load time).
--
-- A session is one hash keyed by the SHA-256 of its id (the id itself is never stored):
--   subject, handle, ver, created, last_seen (µs), idle_timeout (µs), idle_exp, abs_exp (µs),
--   size (bytes of data keys and values), d:<key> (data), a:<key> (attributes)
-- The hash expires at its idle deadline, which never passes the absolute one. Every script
-- checks that the session exists and is in time before writing, so no write can bring
-- back a session that was deleted, rotated away, revoked or expired.

-- The session at `key` if it is alive, else nil (an expired one is deleted on sight, and
-- `expired_on_read` tells the caller so, for the metric).
local expired_on_read = false
local function live(key)
  local idle_exp, abs_exp = unpack(redis.call('HMGET', key, 'idle_exp', 'abs_exp'))
  if not idle_exp then
    return nil
  end
  if tonumber(idle_exp) <= now or tonumber(abs_exp) <= now then
    redis.call('DEL', key)
    expired_on_read = true
    return nil
  end
  return {idle_exp = tonumber(idle_exp), abs_exp = tonumber(abs_exp)}
end

-- Slides the idle deadline, coalescing: it is rewritten only when it would move by more
-- than 1% of the idle timeout, so hot sessions are not rewritten on every read.
local function touch(key, session)
  local idle_timeout = tonumber(redis.call('HGET', key, 'idle_timeout'))
  local idle_exp = math.min(now + idle_timeout, session.abs_exp)
  if idle_exp - session.idle_exp > idle_timeout / 100 then
    redis.call('HSET', key, 'idle_exp', int(idle_exp), 'last_seen', int(now))
    redis.call('PEXPIREAT', key, int(math.ceil(idle_exp / 1000)))
  end
end

-- The reply for a session: {1, its HGETALL packed by cmsgpack}. Packed, the session is one
-- value of the reply rather than two per field: parsing a reply costs baton per value.
local function session_reply(key)
  return {1, cmsgpack.pack(redis.call('HGETALL', key))}
end

-- Takes a live session away from `key`: its deadlines and its fields, or nil when it is
-- missing or expired. The key is gone afterwards.
local function take_live(key)
  local session = live(key)
  if not session then
    return nil
  end
  local fields = redis.call('HGETALL', key)
  redis.call('DEL', key)
  return session, fields
end
