-- Moves one schedule on from the tick it was due at and enqueues that tick's jobs, in one
-- script: of every replica that noticed the tick, exactly one gets here first with the
-- schedule still due at it; the others find it moved on and enqueue nothing.
--
-- KEYS: enqueue.lua's (ready, ready_since, scheduled, watched, events, groups, gactive,
--       config, enqueued, then a job and a dedup key per job),
--       then schedules, state, due
-- ARGV: enqueue.lua's (channel, then 10 values per job), then schedule id, the due tick
--       it was read at (µs), its generation (created µs), its next tick (µs, '' when none),
--       the latest tick enqueued (µs, 0 when none)
-- Returns enqueue.lua's reply, or {0, 'STALE'} when the schedule moved on or was replaced.
local schedules, state_key, due_key = KEYS[#KEYS - 2], KEYS[#KEYS - 1], KEYS[#KEYS]
local id, was_due, generation = ARGV[#ARGV - 4], tonumber(ARGV[#ARGV - 3]), tonumber(ARGV[#ARGV - 2])
local next_tick, last_tick = ARGV[#ARGV - 1], tonumber(ARGV[#ARGV])
local due = redis.call('ZSCORE', due_key, id)
local state = redis.call('HGET', state_key, id)
if not due or tonumber(due) ~= was_due or not state or redis.call('HEXISTS', schedules, id) == 0 then
  return {0, 'STALE'}
end
local created, last, fired, paused = parse_state(state)
if created ~= generation then
  return {0, 'STALE'}
end
local job_count = (#KEYS - 12) / 2
if next_tick == '' then
  redis.call('ZREM', due_key, id)
else
  redis.call('ZADD', due_key, next_tick, id)
end
if job_count > 0 then
  last = last_tick
end
redis.call('HSET', state_key, id, format_state(created, last, fired + job_count, paused))
