-- Reads one schedule (ARGV[1] = 'one', ARGV[2] = id) or a page of them by id (ARGV[1] =
-- 'page', ARGV[2] = the last id of the previous page or '', ARGV[3] = page size).
--
-- KEYS[1] schedules   KEYS[2] state   KEYS[3] due
-- Returns {1, more (0|1), then per schedule: id, definition, state, next tick µs or -1}.
local ids
local more = 0
if ARGV[1] == 'one' then
  ids = {ARGV[2]}
else
  -- A queue holds at most the configured number of schedules, so sorting them all is bounded.
  local all = redis.call('HKEYS', KEYS[1])
  table.sort(all)
  ids = {}
  local size = tonumber(ARGV[3])
  for _, id in ipairs(all) do
    if id > ARGV[2] then
      if #ids == size then
        more = 1
        break
      end
      table.insert(ids, id)
    end
  end
end
local reply = {1, more}
for _, id in ipairs(ids) do
  local definition = redis.call('HGET', KEYS[1], id)
  if definition then
    local due = redis.call('ZSCORE', KEYS[3], id)
    table.insert(reply, id)
    table.insert(reply, definition)
    table.insert(reply, redis.call('HGET', KEYS[2], id) or '0|0|0|0')
    table.insert(reply, due and tonumber(due) or -1)
  end
end
return reply
