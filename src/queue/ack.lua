-- Completes deliveries of one queue, each independently: the job becomes SUCCEEDED if
-- `token` is its current lease. Repeating an applied Ack answers done again.
--
-- KEYS[1] active, then one job key per delivery
-- ARGV[1] retention ms, then per delivery: job_id, token, result, the holding stream's
--         channel ('' when that stream lives in the calling process, which tells it
--         directly)
-- Returns {1, then per delivery 1 done, or the reason the lease may not settle it}.
local replies = {1}
local announced = {}
local settled = {}
for i = 2, #KEYS do
  local job, at = KEYS[i], 2 + (i - 2) * 4
  local id, token, channel = ARGV[at], ARGV[at + 1], ARGV[at + 3]
  local state, lease, cancelled, deadline =
    unpack(redis.call('HMGET', job, 'state', 'lease', 'cancelled_lease', 'lease_deadline'))
  if state == 'SUCCEEDED' and lease == token then
    replies[i] = 1
  else
    local refused = refusal(state, lease, cancelled, token, deadline)
    if refused then
      replies[i] = refused
    else
      table.insert(settled, id)
      redis.call('HSET', job, 'state', 'SUCCEEDED', 'result', ARGV[at + 2], 'finished_at', int(now))
      redis.call('PEXPIRE', job, ARGV[1])
      replies[i] = 1
      -- One wake-up per stream, however many of its leases this call settled.
      if channel ~= '' and not announced[channel] then
        announced[channel] = true
        redis.call('PUBLISH', channel, 'settled')
      end
    end
  end
end
in_bulk('ZREM', KEYS[1], settled)
return replies
