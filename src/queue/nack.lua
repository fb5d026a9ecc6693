-- Fails one delivery: schedules a retry after the backoff (or `retry_after`), or moves the
-- job to the dead set when asked or when its attempts are spent.
--
-- KEYS[1] job   KEYS[2] active   KEYS[3] scheduled   KEYS[4] dead   KEYS[5] watched
-- KEYS[6] events  KEYS[7] ready  KEYS[8] groups  KEYS[9] gactive  KEYS[10] config
-- ARGV: job_id, token, error, retry_after_us (0: the job's backoff), dead_letter (0|1),
--       jitter in [0, 1), dead retention ms, the holding stream's channel ('' when that
--       stream lives in the calling process), the queue's channel, dead jobs kept
-- Returns {1, state, run_at_us} or {0, reason}.
local refusal = lease_refusal(KEYS[1], ARGV[2])
if refusal then
  return {0, refusal}
end
record_events(KEYS[5], KEYS[6], ARGV[9])
use_groups(KEYS[7], KEYS[8], KEYS[9], KEYS[10])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HSET', KEYS[1], 'last_error', ARGV[3])
if ARGV[8] ~= '' then
  redis.call('PUBLISH', ARGV[8], 'settled')
end
local attempts, spec_field, group = unpack(redis.call('HMGET', KEYS[1], 'attempts', 'spec', 'group'))
local spec = parse_spec(spec_field)
if ARGV[5] == '1' or tonumber(attempts) >= spec.max_attempts then
  release_group(group)
  make_dead(KEYS[4], ARGV[1], KEYS[1], {ARGV[7], ARGV[10]}, nil)
  announce_events()
  return {1, 'DEAD', 0}
end
local delay = tonumber(ARGV[4])
if delay == 0 then
  delay = math.min(spec.backoff_max, spec.backoff_initial * spec.multiplier ^ (tonumber(attempts) - 1))
  -- Exponential backoff spreads retries ("equal jitter"); a fixed one stays exact.
  if spec.multiplier > 1 then
    delay = delay / 2 + delay / 2 * tonumber(ARGV[6])
  end
end
local run_at = now + math.floor(delay)
redis.call('ZADD', KEYS[3], int(run_at), ARGV[1])
redis.call('HSET', KEYS[1], 'state', 'FAILED', 'lease', '', 'run_at', int(run_at))
if group and group ~= '' and queue_config().fifo == '1' then
  -- Strict FIFO: the group waits for this job's retry (make_ready lets go).
  redis.call('HSET', KEYS[1], 'holds', 1)
else
  release_group(group)
end
-- Waiting consumers set their timers for the retry.
redis.call('PUBLISH', ARGV[9], 'scheduled')
event('failed', ARGV[1], 'FAILED', attempts, 'error', ARGV[3], 'run_at', int(run_at))
announce_events()
return {1, 'FAILED', run_at}
