-- Shared by every queue script (prepended at load time).
--
-- A queue `q` is these keys, all sharing the hash tag {q}:
--   ready         sorted set: ungrouped job id -> rank (priority band, then the time it
--                 became due)
--   ready:<group> sorted set: a group's ready job id -> its enqueue sequence (FIFO)
--   ready_since   sorted set: every ready job id -> the time it became due, µs (the
--                 ready count and the oldest-ready age)
--   groups        sorted set: groups with ready jobs that may run one now -> their turn
--                 (round robin: a group served goes to the back)
--   gactive       hash: group -> its jobs ACTIVE (or, FIFO, holding it while they wait to
--                 retry)
--   config        hash: ConfigureQueue's rules (gc, fifo, lim_*), and the counters turn
--                 (round robin) and seq (enqueue order within groups)
--   scheduled     sorted set: job id -> run_at µs (delayed jobs and retries in backoff)
--   active        sorted set: job id -> lease deadline µs
--   dead          sorted set: job id -> when it died, µs
--   paused        string, present while the queue is paused
--   succeeded     sorted set: job id -> when it was acked, µs (the last ones kept)
--   watched       hash, present while somebody watches the queue: n = events recorded
--   events        stream of events (see `event`), only while watched
--   job:<id>      hash: the job (see decode_job in mod.rs for the fields, and parse_spec)
-- A job's `due` (when it last became ready, µs: a job handed back keeps its place) is absent
-- while it is its `created_at`.
-- Scripts that choose which job to touch (fetch, reap) build job keys from ARGV's prefix,
-- which is the queue's own `job:` prefix, so they stay in the queue's slot.

-- What a job is given at enqueue and never changes (priority, max_attempts, backoff) is one
-- field, `spec`: "priority max_attempts backoff_initial_us backoff_max_us multiplier". One
-- field rather than five, as each costs Redis again on every write and read of the job.
local function parse_spec(spec)
  local priority, max_attempts, initial, cap, multiplier =
    string.match(spec, '^(%S+) (%S+) (%S+) (%S+) (%S+)$')
  return {priority = tonumber(priority), max_attempts = tonumber(max_attempts),
    backoff_initial = tonumber(initial), backoff_max = tonumber(cap), multiplier = tonumber(multiplier)}
end

-- The priority alone, without parse_spec's table: enqueue and make_ready read only it, once
-- for every job made ready.
local function spec_priority(spec)
  return tonumber(string.match(spec, '^%S+'))
end

-- Appends field/value pairs to an HSET's arguments, leaving out empty values (the default
-- of every optional field).
local function add_fields(args, ...)
  local pairs_given = {...}
  for i = 1, #pairs_given, 2 do
    local value = pairs_given[i + 1]
    if value ~= '' then
      args[#args + 1] = pairs_given[i]
      args[#args + 1] = value
    end
  end
end

-- `now` formatted once: the scripts write it for each job they touch, and formatting is a
-- measurable part of a script's cost.
local now_int = int(now)

-- Higher priority first, then earlier due. Priorities are -1000..=1000 and due times are ms
-- since 2026-01-01 (2^41 ms = 69 years), so the rank stays an exact integer in a double.
local RANK_EPOCH_MS = 1767225600000
local function rank(priority, due_us)
  local due_ms = math.max(0, math.floor(due_us / 1000) - RANK_EPOCH_MS)
  return (1000 - priority) * 2199023255552 + due_ms
end

-- Groups: scripts that touch grouped jobs name the queue's group keys first.
local G = {}
local function use_groups(ready, groups, gactive, config)
  G = {ready = ready, groups = groups, active = gactive, config = config}
end

-- The queue's configuration (ConfigureQueue), read once per script.
local function queue_config()
  if not G.conf then
    G.conf = {}
    local flat = redis.call('HGETALL', G.config)
    for i = 1, #flat, 2 do
      G.conf[flat[i]] = flat[i + 1]
    end
  end
  return G.conf
end

-- Most active jobs per group; 0: no limit.
local function group_limit()
  local config = queue_config()
  if config.fifo == '1' then
    return 1
  end
  return tonumber(config.gc or 0)
end

local function group_ready(group)
  return G.ready .. ':' .. group
end

-- Puts a group at the back of the round robin if it has ready jobs and room for one more.
local function offer_group(group)
  -- Already in line: its place stands (and the turn counter is not spent on it).
  if redis.call('ZSCORE', G.groups, group) then
    return
  end
  local limit = group_limit()
  if limit > 0 and tonumber(redis.call('HGET', G.active, group) or 0) >= limit then
    return
  end
  if redis.call('EXISTS', group_ready(group)) == 1 then
    redis.call('ZADD', G.groups, 'NX', redis.call('HINCRBY', G.config, 'turn', 1), group)
  end
end

local function count_down(group)
  if redis.call('HINCRBY', G.active, group, -1) <= 0 then
    redis.call('HDEL', G.active, group)
  end
end

-- A job of `group` stopped being active: its group may run another.
local function release_group(group)
  if group and group ~= '' then
    count_down(group)
    offer_group(group)
  end
end

local function make_ready(ready, ready_since, id, job, due)
  local spec, group, seq, holds = unpack(redis.call('HMGET', job, 'spec', 'group', 'gseq', 'holds'))
  if group and group ~= '' then
    if holds then
      -- A FIFO job held its group while it waited to retry; it is at the group's head now.
      redis.call('HDEL', job, 'holds')
      count_down(group)
    end
    redis.call('ZADD', group_ready(group), seq, id)
    offer_group(group)
  else
    redis.call('ZADD', ready, int(rank(spec_priority(spec), due)), id)
  end
  local due_int = int(due)
  redis.call('ZADD', ready_since, due_int, id)
  redis.call('HSET', job, 'state', 'READY', 'due', due_int, 'lease', '')
end

-- `command key item...` for many items (ids, or score/id pairs) in as few calls as Lua's
-- stack allows for unpack.
local function in_bulk(command, key, items)
  for first = 1, #items, 1000 do
    redis.call(command, key, unpack(items, first, math.min(first + 999, #items)))
  end
end

-- Keeps the newest `keep` entries of a finished set (`succeeded`, `dead`), deleting the
-- jobs of older ones; `job` is any job key of the queue (its prefix makes the others).
-- Trimming waits until the set is over by 1/64 of `keep`, so a busy queue trims once per
-- that many finished jobs rather than in every script.
local function keep_newest(set, job, id, keep)
  keep = tonumber(keep)
  local over = redis.call('ZCARD', set) - keep
  if over > math.floor(keep / 64) then
    local prefix = string.sub(job, 1, #job - #id)
    local oldest = redis.call('ZRANGE', set, 0, over - 1)
    redis.call('ZREMRANGEBYRANK', set, 0, over - 1)
    for first = 1, #oldest, 500 do
      local keys = {}
      for i = first, math.min(first + 499, #oldest) do
        keys[#keys + 1] = prefix .. oldest[i]
      end
      redis.call('UNLINK', unpack(keys))
    end
  end
end

-- Queue events (WatchQueue, WatchJob) are recorded only while a watcher keeps `watched`
-- alive (watch.lua), so an unwatched queue pays one EXISTS per script for them.
local EVENTS_KEPT = 10000
-- A stream outlives its last watcher by this long, then goes.
local EVENTS_TTL_MS = 120000
local events = {on = false, any = false}

-- Makes this script record events in the queue's `watched` and `events`, announced on the
-- queue's channel plus ':events'.
local function record_events(watched, stream, queue_channel)
  events = {watched = watched, stream = stream, channel = queue_channel .. ':events', any = false,
    on = redis.call('EXISTS', watched) == 1}
end

-- Records one event: kind, job id, the job's state after it, its attempt count, then
-- optional field/value pairs (error, run_at, progress, detail, type).
local function event(kind, id, state, attempt, ...)
  if not events.on then
    return
  end
  local n = redis.call('HINCRBY', events.watched, 'n', 1)
  redis.call('XADD', events.stream, 'MAXLEN', '~', EVENTS_KEPT, '*', 'n', n, 'k', kind, 'id', id,
    's', state, 'a', attempt or 0, 'at', now_int, ...)
  events.any = true
end

-- Wakes the watchers once per script, after its events.
local function announce_events()
  if events.any then
    redis.call('PEXPIRE', events.stream, EVENTS_TTL_MS)
    redis.call('PUBLISH', events.channel, 'e')
  end
end

-- `limits`: {retention_ms, keep}: a dead job is kept at most this long, and only the
-- newest `keep` dead jobs of the queue.
local function make_dead(dead, id, job, limits, reason)
  redis.call('ZADD', dead, now_int, id)
  redis.call('HSET', job, 'state', 'DEAD', 'lease', '', 'finished_at', now_int)
  if reason then
    redis.call('HSET', job, 'last_error', reason)
  end
  redis.call('PEXPIRE', job, limits[1])
  keep_newest(dead, job, id, limits[2])
  if events.on then
    event('dead', id, 'DEAD', redis.call('HGET', job, 'attempts'), 'error',
      reason or redis.call('HGET', job, 'last_error'))
  end
end

-- Why `token` may not settle a job in `state` under `lease` until `deadline` (`cancelled`:
-- the lease it was cancelled under): nil when it is the job's current, unexpired lease,
-- 'JOB_CANCELLED' when the job was cancelled under it, else 'JOB_NOT_LEASED'. A lease past
-- its deadline settles nothing even before a fetch reclaims its job: its job is due to be
-- delivered again, and the stream that holds it must get its credit back.
local function refusal(state, lease, cancelled, token, deadline)
  if state == 'ACTIVE' and lease == token and tonumber(deadline or 0) > now then
    return nil
  end
  if state == 'CANCELLED' and cancelled == token then
    return 'JOB_CANCELLED'
  end
  return 'JOB_NOT_LEASED'
end

-- The same, read from the job's hash.
local function lease_refusal(job, token)
  local state, lease, cancelled, deadline =
    unpack(redis.call('HMGET', job, 'state', 'lease', 'cancelled_lease', 'lease_deadline'))
  return refusal(state, lease, cancelled, token, deadline)
end

-- Whether `token` is the current lease of an active job.
local function holds(job, token)
  local state, lease = unpack(redis.call('HMGET', job, 'state', 'lease'))
  return state == 'ACTIVE' and lease == token
end
