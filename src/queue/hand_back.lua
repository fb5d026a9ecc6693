-- Returns the leases of a consumer that went away to the queue at once, each keeping its
-- place; a job whose attempts are spent dies instead (a job that kills its workers must
-- not loop forever).
--
-- KEYS[1] ready  KEYS[2] ready_since  KEYS[3] active  KEYS[4] dead, then the job keys
-- ARGV[1] dead retention ms  ARGV[2] notify channel, then per job key: job_id, token
-- Returns how many leases were handed back.
local handed_back = 0
for i = 5, #KEYS do
  local job = KEYS[i]
  local id, token = ARGV[3 + (i - 5) * 2], ARGV[4 + (i - 5) * 2]
  if holds(job, token) then
    redis.call('ZREM', KEYS[3], id)
    local attempts, max_attempts, due = unpack(redis.call('HMGET', job, 'attempts', 'max_attempts', 'due'))
    if tonumber(attempts) >= tonumber(max_attempts) then
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
return handed_back
