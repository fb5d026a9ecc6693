-- Promotes due jobs, returns expired leases to the queue, and leases up to `count` ready
-- jobs to one consumer — one atomic step, so no job is ever in two places or none.
--
-- KEYS[1] ready  KEYS[2] ready_since  KEYS[3] scheduled  KEYS[4] active  KEYS[5] dead
-- KEYS[6] paused  KEYS[7] watched  KEYS[8] events  KEYS[9] succeeded  KEYS[10] groups
-- KEYS[11] gactive  KEYS[12] config
-- ARGV[1] job key prefix   ARGV[2] count   ARGV[3] visibility µs   ARGV[4] dead retention ms
-- ARGV[5] notify channel   ARGV[6] dead jobs kept   ARGV[7] number of type filters, then the
--         types, then `count` lease tokens
-- Returns {1, next_event_in_us (-1: nothing pending), leases reclaimed, then per delivery:
--          {job_id, attempt, lease_token, lease_deadline_us, the job's HGETALL packed by
--          cmsgpack}}. Packed, a job is one value of the reply rather than two per field:
--          parsing a reply costs baton per value, and a delivery is read as a whole anyway.
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
use_groups(KEYS[1], KEYS[10], KEYS[11], KEYS[12])

-- Due delayed and retrying jobs become ready, ranked by when they became due.
local became_ready = false
local due = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now_int, 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  local id = due[i]
  redis.call('ZREM', KEYS[3], id)
  make_ready(KEYS[1], KEYS[2], id, prefix .. id, tonumber(due[i + 1]))
  became_ready = true
end

-- Leases past their deadline (a consumer or a whole baton died) go back, keeping their
-- place, or die once their attempts are spent.
local reclaimed = 0
local expired = redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now_int, 'LIMIT', 0, 1000)
for _, id in ipairs(expired) do
  local job = prefix .. id
  redis.call('ZREM', KEYS[4], id)
  local attempts, spec, was_due, created, group =
    unpack(redis.call('HMGET', job, 'attempts', 'spec', 'due', 'created_at', 'group'))
  release_group(group)
  if tonumber(attempts) >= parse_spec(spec).max_attempts then
    make_dead(KEYS[5], id, job, dead_limits, 'lease expired')
  else
    make_ready(KEYS[1], KEYS[2], id, job, tonumber(was_due or created))
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

-- When the next job falls due or the next lease expires: the consumer's timer; a start
-- limit that holds ready jobs back sets it too.
local next_event = -1
local function wake_in(wait)
  wait = math.max(0, math.ceil(wait))
  if next_event < 0 or wait < next_event then
    next_event = wait
  end
end

-- Start limits (ConfigureQueue): the rate limiter's algorithms (limits.lua) on a counter
-- per queue, or per group ('' for the ungrouped jobs).
local config = queue_config()
local limited = config.lim_alg ~= nil
local per_group = config.lim_per_group == '1'
local function limit_key(group)
  local key = KEYS[12] .. ':limit:' .. config.lim_key
  if per_group then
    key = key .. ':' .. group
  end
  return key
end
-- How many starts the limit admits now (at most `wanted_starts`).
local function starts_allowed(group, wanted_starts)
  local allowed, remaining, _, retry_after = evaluate(limit_key(group), tonumber(config.lim_alg),
    tonumber(config.lim_limit), tonumber(config.lim_period), tonumber(config.lim_burst), 1, true)
  if not allowed then
    wake_in(retry_after)
    return 0
  end
  return math.min(wanted_starts, remaining + 1)
end
local function count_starts(group, starts)
  local _, _, _, _, write = evaluate(limit_key(group), tonumber(config.lim_alg), tonumber(config.lim_limit),
    tonumber(config.lim_period), tonumber(config.lim_burst), starts, false)
  if write then
    consume(write)
  end
end

local replies = {1, -1, reclaimed}
local delivered = 0
local deadline = now + visibility
local deadline_int = int(deadline)
-- Ungrouped index moves are made at the end, one command per index for all deliveries.
local taken, active = {}, {}

local function lease(id, job)
  delivered = delivered + 1
  local token = ARGV[tokens_at + delivered]
  table.insert(active, deadline_int)
  table.insert(active, id)
  -- Read first and written once: the delivery carries the job as the write leaves it, its
  -- attempt counted and ACTIVE (the lease travels beside it), for one command fewer per job.
  local fields = redis.call('HGETALL', job)
  local attempt, attempts_at = 1, nil
  for i = 1, #fields, 2 do
    local name = fields[i]
    if name == 'attempts' then
      attempts_at = i + 1
      attempt = tonumber(fields[attempts_at]) + 1
    elseif name == 'state' then
      fields[i + 1] = 'ACTIVE'
    end
  end
  if attempts_at then
    fields[attempts_at] = tostring(attempt)
  else
    fields[#fields + 1] = 'attempts'
    fields[#fields + 1] = tostring(attempt)
  end
  redis.call('HSET', job, 'state', 'ACTIVE', 'attempts', attempt, 'lease', token, 'lease_deadline', deadline_int)
  replies[#replies + 1] = {id, attempt, token, deadline_int, cmsgpack.pack(fields)}
  event('active', id, 'ACTIVE', attempt)
end

if count > 0 and redis.call('EXISTS', KEYS[6]) == 0 then
  local budget = count
  if limited and not per_group then
    budget = starts_allowed('', count)
  end
  -- With a type filter, look a bounded way down the queue (docs/queues.md).
  local window = budget
  if type_count > 0 then
    window = 256
  end
  local candidates = {}
  if budget > 0 then
    candidates = redis.call('ZRANGE', KEYS[1], 0, window - 1)
  end
  local next_candidate = 1
  -- The next ungrouped job this consumer takes, or nil.
  local function ungrouped()
    while next_candidate <= #candidates do
      local id = candidates[next_candidate]
      next_candidate = next_candidate + 1
      if type_count == 0 or wanted[redis.call('HGET', prefix .. id, 'type')] then
        return id
      end
    end
    return nil
  end

  if redis.call('EXISTS', KEYS[10]) == 0 then
    -- No group waits: the ungrouped jobs in order.
    local ungrouped_budget = budget
    if limited and per_group then
      ungrouped_budget = starts_allowed('', budget)
    end
    while delivered < ungrouped_budget do
      local id = ungrouped()
      if not id then
        break
      end
      table.insert(taken, id)
      lease(id, prefix .. id)
    end
    if limited and per_group and delivered > 0 then
      count_starts('', delivered)
    end
  else
    -- Round robin: the ungrouped jobs take turns as one more group (their turn in
    -- config.uturn); a group served goes to the back of the line.
    local limit = group_limit()
    local skipped = 0
    local pending_ungrouped = ungrouped()
    local ungrouped_open = not (limited and per_group) or starts_allowed('', 1) > 0
    while delivered < budget and skipped < 256 do
      local head = redis.call('ZRANGE', KEYS[10], skipped, skipped, 'WITHSCORES')
      local uturn = tonumber(config.uturn or 0)
      if pending_ungrouped and ungrouped_open and (#head == 0 or uturn < tonumber(head[2])) then
        table.insert(taken, pending_ungrouped)
        lease(pending_ungrouped, prefix .. pending_ungrouped)
        config.uturn = redis.call('HINCRBY', KEYS[12], 'turn', 1)
        redis.call('HSET', KEYS[12], 'uturn', config.uturn)
        if limited and per_group then
          count_starts('', 1)
          ungrouped_open = starts_allowed('', 1) > 0
        end
        pending_ungrouped = ungrouped()
      elseif #head == 0 then
        break
      else
        local group = head[1]
        local ready_key = group_ready(group)
        local id = redis.call('ZRANGE', ready_key, 0, 0)[1]
        local running = tonumber(redis.call('HGET', KEYS[11], group) or 0)
        if not id or (limit > 0 and running >= limit) then
          -- Nothing to run, or no room (the limit was lowered): out of the line until a
          -- job of the group is enqueued or released.
          redis.call('ZREM', KEYS[10], group)
        elseif (type_count > 0 and not wanted[redis.call('HGET', prefix .. id, 'type')])
            or (limited and per_group and starts_allowed(group, 1) == 0) then
          skipped = skipped + 1
        else
          redis.call('ZREM', ready_key, id)
          redis.call('ZREM', KEYS[2], id)
          redis.call('HINCRBY', KEYS[11], group, 1)
          lease(id, prefix .. id)
          if limited and per_group then
            count_starts(group, 1)
          end
          if (limit > 0 and running + 1 >= limit) or redis.call('EXISTS', ready_key) == 0 then
            redis.call('ZREM', KEYS[10], group)
          else
            redis.call('ZADD', KEYS[10], redis.call('HINCRBY', KEYS[12], 'turn', 1), group)
          end
        end
      end
    end
  end
  if limited and not per_group and delivered > 0 then
    count_starts('', delivered)
  end
  in_bulk('ZREM', KEYS[1], taken)
  in_bulk('ZREM', KEYS[2], taken)
  in_bulk('ZADD', KEYS[4], active)
end

for _, key in ipairs({KEYS[3], KEYS[4]}) do
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #first > 0 then
    wake_in(tonumber(first[2]) - now)
  end
end
replies[2] = next_event
announce_events()
return replies
