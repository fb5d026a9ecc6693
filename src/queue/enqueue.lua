-- Adds a job, or returns the existing one for a repeated dedup key.
--
-- KEYS[1] job   KEYS[2] ready   KEYS[3] ready_since   KEYS[4] scheduled   KEYS[5] dedup
-- ARGV: job_id, type, payload, priority, max_attempts, backoff_initial_us, backoff_max_us,
--       backoff_multiplier, delay_us (or 0), run_at_us (or 0), dedup_key ('' = none),
--       dedup_ttl_ms, notify channel ('' when the caller announces a whole batch once)
-- Returns {job_id, duplicate (0|1)}.
local id = ARGV[1]
if ARGV[11] ~= '' then
  local existing = redis.call('GET', KEYS[5])
  if existing then
    return {existing, 1}
  end
  redis.call('SET', KEYS[5], id, 'PX', ARGV[12])
end

local run_at = now
if tonumber(ARGV[9]) > 0 then
  run_at = now + tonumber(ARGV[9])
elseif tonumber(ARGV[10]) > now then
  run_at = tonumber(ARGV[10])
end

redis.call('HSET', KEYS[1],
  'type', ARGV[2], 'payload', ARGV[3], 'priority', ARGV[4], 'attempts', 0,
  'max_attempts', ARGV[5], 'backoff_initial', ARGV[6], 'backoff_max', ARGV[7],
  'backoff_multiplier', ARGV[8], 'created_at', int(now), 'run_at', int(run_at),
  'dedup_key', ARGV[11], 'lease', '')
if run_at > now then
  redis.call('ZADD', KEYS[4], int(run_at), id)
  redis.call('HSET', KEYS[1], 'state', 'SCHEDULED')
else
  make_ready(KEYS[2], KEYS[3], id, KEYS[1], now)
end
-- Waiting consumers wake: to take a ready job, or to set their timer for a scheduled one.
if ARGV[13] ~= '' then
  redis.call('PUBLISH', ARGV[13], 'enqueued')
end
return {id, 0}
