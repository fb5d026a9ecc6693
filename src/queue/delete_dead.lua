-- Deletes dead jobs for good (the dashboard's "delete"): a job no longer dead (redriven
-- meanwhile) is left alone.
--
-- KEYS[1] dead, then job keys; ARGV: job ids.
-- Returns {1, how many were deleted}.
local deleted = 0
for i = 2, #KEYS do
  local id = ARGV[i - 1]
  if redis.call('HGET', KEYS[i], 'state') == 'DEAD' and redis.call('ZREM', KEYS[1], id) == 1 then
    redis.call('DEL', KEYS[i])
    deleted = deleted + 1
  end
end
return {1, deleted}
