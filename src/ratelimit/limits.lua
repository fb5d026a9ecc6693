-- The rate limiter's algorithms, shared by check.lua and the queue's start limits.
--
-- Time is Redis's own clock, in microseconds, so every replica agrees.
--
-- State per algorithm:
--   fixed window  hash {s = window start µs, c = count}, expiring at the window's end
--                 (also for 4 and 5, whose windows start where now is a multiple of the
--                 period).
--   sliding log   sorted set, one member per admitted unit, scored by its time in µs;
--                 members older than one period are trimmed, so ZCARD is the usage.
--   GCRA          string: the theoretical arrival time (TAT) in µs, as "%.17g".

-- GCRA compares floating-point sums of period/limit; this slack (a hundredth of a µs)
-- keeps rounding from denying a request that lands exactly on its emission time.
local EPSILON = 0.01

-- When a fixed window's counter must be set to expire, ms: only on the window's first write
-- (`count` 0). Every later write in the window keeps its start, so the expiry that write set
-- still stands (one command fewer per request).
local function window_expiry(count, start, period)
  if count == 0 then
    return math.ceil((start + period) / 1000)
  end
  return nil
end

-- Applies a write `evaluate` returned (defined first: algorithm 5 writes its own count).
local function consume(write)
  local kind, key = write[1], write[2]
  if kind == 1 then
    redis.call('HSET', key, 's', int(write[3]), 'c', int(write[4]))
    if write[5] then
      redis.call('PEXPIREAT', key, int(write[5]))
    end
  elseif kind == 2 then
    -- Members are unique: at one instant ZCARD only grows, so (now, used + j) never repeats.
    local used, cost = write[3], write[4]
    local batch = {}
    for j = 1, cost do
      batch[#batch + 1] = int(now)
      batch[#batch + 1] = int(now) .. ':' .. int(used + j)
      if #batch >= 1000 or j == cost then
        redis.call('ZADD', key, unpack(batch))
        batch = {}
      end
    end
    redis.call('PEXPIRE', key, int(math.ceil(write[5] / 1000)))
  else
    redis.call('SET', key, string.format('%.17g', write[3]), 'PX', int(math.max(write[4], 1)))
  end
end

-- Evaluates one limit for `cost` units: algorithm (1 fixed window, 2 sliding log, 3 GCRA,
-- 4 fixed window on the clock's period boundaries, 5 the same counted the way
-- envoyproxy/ratelimit counts), limit, period µs, burst (GCRA only). Writes nothing but
-- algorithm 5's own count (unless `dry_run`); returns allowed, remaining, reset_after_us,
-- retry_after_us and, when allowed, the write that consumes the cost (for `consume`).
local function evaluate(key, algorithm, limit, period, burst, cost, dry_run)
  local allowed, remaining, reset_after, retry_after, write
  if algorithm == 1 or algorithm == 4 or algorithm == 5 then
    local state = redis.call('HMGET', key, 's', 'c')
    local start = tonumber(state[1])
    local count = tonumber(state[2]) or 0
    if algorithm == 1 then
      if start == nil or now >= start + period then
        start = now
        count = 0
      end
    else
      local aligned = now - now % period
      if start ~= aligned then
        start = aligned
        count = 0
      end
    end
    local window_left = start + period - now
    allowed = count + cost <= limit
    reset_after = window_left
    if algorithm == 5 then
      -- envoyproxy/ratelimit's counting: every hit counts, admitted or not, and on its
      -- own (never held back by another limit of the call).
      if not dry_run and cost > 0 then
        consume({1, key, start, count + cost, window_expiry(count, start, period)})
      end
      remaining = limit - count - cost
      retry_after = allowed and 0 or window_left
    elseif allowed then
      remaining = limit - count - cost
      retry_after = 0
      write = {1, key, start, count + cost, window_expiry(count, start, period)}
    else
      -- cost <= limit is validated, so the next window admits it.
      remaining = limit - count
      retry_after = window_left
    end
  elseif algorithm == 2 then
    -- A member counts while now - its time < period.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now - period))
    local used = redis.call('ZCARD', key)
    allowed = used + cost <= limit
    if allowed then
      remaining = limit - used - cost
      reset_after = period
      retry_after = 0
      write = {2, key, used, cost, period}
    else
      remaining = limit - used
      -- The request fits once the (used + cost - limit) oldest units have aged out.
      local freeing = redis.call('ZRANGE', key, int(used + cost - limit - 1), int(used + cost - limit - 1), 'WITHSCORES')
      local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
      retry_after = tonumber(freeing[2]) + period - now
      reset_after = tonumber(newest[2]) + period - now
    end
  else
    local interval = period / limit
    local capacity = burst * interval
    local tat = tonumber(redis.call('GET', key)) or now
    if tat < now then
      tat = now
    end
    local new_tat = tat + cost * interval
    local ahead = new_tat - now
    allowed = ahead <= capacity + EPSILON
    if allowed then
      remaining = math.floor((capacity - ahead) / interval + EPSILON)
      reset_after = ahead
      retry_after = 0
      write = {3, key, new_tat, math.ceil(ahead / 1000)}
    else
      remaining = math.floor((capacity - (tat - now)) / interval + EPSILON)
      reset_after = tat - now
      retry_after = ahead - capacity
    end
  end

  if remaining < 0 then
    remaining = 0
  end
  return allowed, remaining, reset_after, retry_after, write
end
