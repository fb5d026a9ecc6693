-- Redrives dead jobs: each becomes ready with fresh attempts.
--
-- KEYS[1] ready  KEYS[2] ready_since  KEYS[3] dead  KEYS[4] watched  KEYS[5] events
-- KEYS[6] groups  KEYS[7] gactive  KEYS[8] config, then job keys; ARGV: job ids, then the
-- notify channel last.
-- Returns {1, how many were redriven}.
local retried = 0
record_events(KEYS[4], KEYS[5], ARGV[#ARGV])
use_groups(KEYS[1], KEYS[6], KEYS[7], KEYS[8])
for i = 9, #KEYS do
  local id = ARGV[i - 8]
  if redis.call('ZREM', KEYS[3], id) == 1 and redis.call('HGET', KEYS[i], 'state') == 'DEAD' then
    redis.call('PERSIST', KEYS[i])
    redis.call('HSET', KEYS[i], 'attempts', 0, 'finished_at', '')
    make_ready(KEYS[1], KEYS[2], id, KEYS[i], now)
    retried = retried + 1
    event('redriven', id, 'READY', 0)
  end
end
if retried > 0 then
  redis.call('PUBLISH', ARGV[#ARGV], 'ready')
end
announce_events()
return {1, retried}
