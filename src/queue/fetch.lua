-- Promotes due jobs, returns expired leases to the queue, and leases up to `count` ready
-- jobs to one consumer — one atomic step, so no job is ever in two places or none.
--
-- KEYS[1] ready  KEYS[2] ready_since  KEYS[3] scheduled  KEYS[4] active  KEYS[5] dead
-- KEYS[6] paused  KEYS[7] watched  KEYS[8] events
-- ARGV[1] job key prefix   ARGV[2] count   ARGV[3] visibility µs   ARGV[4] dead retention ms
-- ARGV[5] notify channel   ARGV[6] dead jobs kept   ARGV[7] number of type filters, then the
--         types, then `count` lease tokens
-- Returns {1, next_event_in_us (-1: nothing pending), leases reclaimed, then per delivery:
--          {job_id, attempt, lease_token, lease_deadline_us, HGETALL of the job}}.
local prefix = ARGV[1]
local count = tonumber(ARGV[2])
local visibility = tonumber(ARGV[3])
local type_count = tonumber(ARGV[7])
local wanted = {}
for i = 1, type_count do
  wanted[ARGV[7 + i]] = true
end
local tokens_at = 7 + type_count
local dead_limits = {ARGV[4], ARGV[6]}
record_events(KEYS[7], KEYS[8], ARGV[5])

-- Due delayed and retrying jobs become ready, ranked by when they became due.
local became_ready = false
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', int(now), 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  local id = due[i]
  redis.call('ZREM', KEYS[3], id)
  make_ready(KEYS[1], KEYS[2], id, prefix .. id, tonumber(due[i + 1]))
  became_ready = true
end

-- Leases past their deadline (a consumer or a whole baton died) go back, keeping their
-- place, or die once their attempts are spent.
local reclaimed = 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', int(now), 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  local job = prefix .. id
  redis.call('ZREM', KEYS[4], id)
  local attempts, max_attempts, was_due = unpack(redis.call('HMGET', job, 'attempts', 'max_attempts', 'due'))
  if tonumber(attempts) >= tonumber(max_attempts) then
    make_dead(KEYS[5], id, job, dead_limits, 'lease expired')
  else
    make_ready(KEYS[1], KEYS[2], id, job, tonumber(was_due))
    redis.call('HINCRBY', job, 'expired_leases', 1)
    reclaimed = reclaimed + 1
    became_ready = true
    event('stalled', id, 'READY', attempts, 'error', 'lease expired')
  end
end
if became_ready then
  redis.call('PUBLISH', ARGV[5], 'ready')
end
-- Dead jobs past their retention: their hashes have expired; drop the index entries too.
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', int(now - tonumber(ARGV[4]) * 1000))

local replies = {1, -1, reclaimed}
if count > 0 and redis.call('EXISTS', KEYS[6]) == 0 then
  -- With a type filter, look a bounded way down the queue (docs/queues.md).
  local window = count
  if type_count > 0 then
    window = 256
  end
  local candidates = redis.call('ZRANGE', KEYS[1], 0, window - 1)
  local delivered = 0
  local deadline = now + visibility
  -- Index moves are made at the end, one command per index for all deliveries.
  local taken, active = {}, {}
  for _, id in ipairs(candidates) do
    if delivered >= count then
      break
    end
    local job = prefix .. id
    if type_count == 0 or wanted[redis.call('HGET', job, 'type')] then
      delivered = delivered + 1
      local token = ARGV[tokens_at + delivered]
      table.insert(taken, id)
      table.insert(active, int(deadline))
      table.insert(active, id)
      local attempt = redis.call('HINCRBY', job, 'attempts', 1)
      redis.call('HSET', job, 'state', 'ACTIVE', 'lease', token, 'lease_deadline', int(deadline))
      replies[#replies + 1] = {id, attempt, token, int(deadline), redis.call('HGETALL', job)}
      event('active', id, 'ACTIVE', attempt)
    end
  end
  in_bulk('ZREM', KEYS[1], taken)
  in_bulk('ZREM', KEYS[2], taken)
  in_bulk('ZADD', KEYS[4], active)
end

-- When the next job falls due or the next lease expires: the consumer's timer.
local next_event = -1
for _, key in ipairs({KEYS[3], KEYS[4]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then
    local wait = math.max(0, tonumber(first[2]) - now)
    if next_event < 0 or wait < next_event then
      next_event = wait
    end
  end
end
replies[2] = next_event
announce_events()
return replies
