-- Returns leases to the queue at once, each keeping its place: those of a consumer that
-- went away (its attempt stays charged: the job may have run, and a job whose attempts are
-- spent dies instead, so a job that kills its workers cannot loop forever), or those a
-- draining worker never started (the attempt is given back).
--
-- KEYS[1] ready  KEYS[2] ready_since  KEYS[3] active  KEYS[4] dead, then the job keys
-- ARGV[1] dead retention ms  ARGV[2] notify channel  ARGV[3] "1" when never started,
-- then per job key: job_id, token
-- Returns {1, how many leases were handed back}.
local unstarted = ARGV[3] == '1'
local handed_back = 0
for i = 5, #KEYS do
  local job = KEYS[i]
  local id, token = ARGV[4 + (i - 5) * 2], ARGV[5 + (i - 5) * 2]
  if holds(job, token) then
    redis.call('ZREM', KEYS[3], id)
    local attempts, max_attempts, due = unpack(redis.call('HMGET', job, 'attempts', 'max_attempts', 'due'))
    if unstarted then
      redis.call('HSET', job, 'attempts', math.max(0, tonumber(attempts) - 1))
    end
    if not unstarted and tonumber(attempts) >= tonumber(max_attempts) then
      make_dead(KEYS[4], id, job, ARGV[1], 'consumer disconnected')
    else
      make_ready(KEYS[1], KEYS[2], id, job, tonumber(due))
      redis.call('HINCRBY', job, 'handed_back', 1)
      handed_back = handed_back + 1
    end
  end
end
if handed_back > 0 then
  redis.call('PUBLISH', ARGV[2], 'ready')
end
return {1, handed_back}
