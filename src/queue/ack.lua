-- Completes deliveries of one queue, each independently: the job becomes SUCCEEDED if
-- `token` is its current lease. Repeating an applied Ack answers done again.
--
-- KEYS[1] active  KEYS[2] succeeded  KEYS[3] watched  KEYS[4] events  KEYS[5] ready
-- KEYS[6] groups  KEYS[7] gactive  KEYS[8] config, then one job key per delivery
-- ARGV[1] retention ms  ARGV[2] succeeded jobs kept  ARGV[3] the queue's channel, then per
--         delivery: job_id, token, result, the holding stream's channel ('' when that
--         stream lives in the calling process, which tells it directly)
-- Returns {1, then per delivery 1 done, or the reason the lease may not settle it}.
record_events(KEYS[3], KEYS[4], ARGV[3])
use_groups(KEYS[5], KEYS[6], KEYS[7], KEYS[8])
local replies = {1}
local announced = {}
local settled, finished = {}, {}
for i = 9, #KEYS do
  local job, at = KEYS[i], 4 + (i - 9) * 4
  local id, token, channel = ARGV[at], ARGV[at + 1], ARGV[at + 3]
  local state, lease, cancelled, deadline, attempts, group =
    unpack(redis.call('HMGET', job, 'state', 'lease', 'cancelled_lease', 'lease_deadline', 'attempts', 'group'))
  if state == 'SUCCEEDED' and lease == token then
    replies[i - 7] = 1
  else
    local refused = refusal(state, lease, cancelled, token, deadline)
    if refused then
      replies[i - 7] = refused
    else
      table.insert(settled, id)
      table.insert(finished, now_int)
      table.insert(finished, id)
      -- Most handlers return nothing: an empty result is no field (decode_job's default).
      if ARGV[at + 2] == '' then
        redis.call('HSET', job, 'state', 'SUCCEEDED', 'finished_at', now_int)
      else
        redis.call('HSET', job, 'state', 'SUCCEEDED', 'result', ARGV[at + 2], 'finished_at', now_int)
      end
      redis.call('PEXPIRE', job, ARGV[1])
      replies[i - 7] = 1
      release_group(group)
      event('succeeded', id, 'SUCCEEDED', attempts)
      -- One wake-up per stream, however many of its leases this call settled.
      if channel ~= '' and not announced[channel] then
        announced[channel] = true
        redis.call('PUBLISH', channel, 'settled')
      end
    end
  end
end
in_bulk('ZREM', KEYS[1], settled)
if #settled > 0 then
  in_bulk('ZADD', KEYS[2], finished)
  -- Past retention their hashes have expired: drop them from the index too.
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', int(now - tonumber(ARGV[1]) * 1000))
  keep_newest(KEYS[2], KEYS[9], ARGV[4], ARGV[2])
end
announce_events()
return replies
