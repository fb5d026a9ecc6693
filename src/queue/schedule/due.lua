-- The schedules of one queue whose next tick has come, by Redis's clock.
--
-- KEYS[1] schedules   KEYS[2] state   KEYS[3] due   ARGV[1] at most this many
-- Returns {1, now µs, the soonest tick not yet due (µs, or -1), then per due schedule: id,
-- definition, state, due tick µs}.
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_int, 'WITHSCORES', 'LIMIT', 0, tonumber(ARGV[1]))
local later = redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now_int, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
local reply = {1, now, later[2] and tonumber(later[2]) or -1}
for i = 1, #due, 2 do
  local id = due[i]
  local definition = redis.call('HGET', KEYS[1], id)
  local state = redis.call('HGET', KEYS[2], id)
  if definition and state then
    table.insert(reply, id)
    table.insert(reply, definition)
    table.insert(reply, state)
    table.insert(reply, tonumber(due[i + 1]))
  else
    -- Left behind by a delete racing a tick: nothing to fire.
    redis.call('ZREM', KEYS[3], id)
  end
end
return reply
