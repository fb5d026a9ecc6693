-- Returns leases to the queue at once, each keeping its place: those of a consumer that
-- went away (its attempt stays charged: the job may have run, and a job whose attempts are
-- spent dies instead, so a job that kills its workers cannot loop forever), or those a
-- draining worker never started (the attempt is given back).
--
-- KEYS[1] ready  KEYS[2] ready_since  KEYS[3] active  KEYS[4] dead  KEYS[5] watched
-- KEYS[6] events  KEYS[7] groups  KEYS[8] gactive  KEYS[9] config, then the job keys
-- ARGV[1] dead retention ms  ARGV[2] notify channel  ARGV[3] "1" when never started,
-- ARGV[4] dead jobs kept, then per job key: job_id, token
-- Returns {1, how many leases were handed back}.
local unstarted = ARGV[3] == '1'
local handed_back = 0
record_events(KEYS[5], KEYS[6], ARGV[2])
use_groups(KEYS[1], KEYS[7], KEYS[8], KEYS[9])
for i = 10, #KEYS do
  local job = KEYS[i]
  local id, token = ARGV[5 + (i - 10) * 2], ARGV[6 + (i - 10) * 2]
  if holds(job, token) then
    redis.call('ZREM', KEYS[3], id)
    local attempts, spec, due, created, group =
      unpack(redis.call('HMGET', job, 'attempts', 'spec', 'due', 'created_at', 'group'))
    release_group(group)
    if unstarted then
      attempts = math.max(0, tonumber(attempts) - 1)
      redis.call('HSET', job, 'attempts', attempts)
    end
    if not unstarted and tonumber(attempts) >= parse_spec(spec).max_attempts then
      make_dead(KEYS[4], id, job, {ARGV[1], ARGV[4]}, 'consumer disconnected')
    else
      make_ready(KEYS[1], KEYS[2], id, job, tonumber(due or created))
      redis.call('HINCRBY', job, 'handed_back', 1)
      handed_back = handed_back + 1
      if unstarted then
        event('returned', id, 'READY', attempts)
      else
        event('stalled', id, 'READY', attempts, 'error', 'consumer disconnected')
      end
    end
  end
end
if handed_back > 0 then
  redis.call('PUBLISH', ARGV[2], 'ready')
end
announce_events()
return {1, handed_back}
