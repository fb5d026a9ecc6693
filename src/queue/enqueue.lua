-- Adds jobs to one queue, each independently: a repeated dedup key returns the existing
-- job instead (also within the call).
--
-- KEYS[1] ready   KEYS[2] ready_since   KEYS[3] scheduled   KEYS[4] watched   KEYS[5] events
-- KEYS[6] groups  KEYS[7] gactive  KEYS[8] config  KEYS[9] enqueued (per-minute counts),
-- then per job: its key, its dedup key
-- ARGV[1] notify channel, then per job 10 values: job_id, type, payload, spec (see
--         parse_spec), delay_us (or 0), run_at_us (or 0), dedup_key ('' = none),
--         dedup_ttl_ms, traceparent ('' = none), group ('' = none)
-- Returns {1, then per job {job_id, duplicate (0|1)}}. `job_count` is set before this body
-- (by the line Enqueue prepends, or by schedule/tick.lua).
record_events(KEYS[4], KEYS[5], ARGV[1])
use_groups(KEYS[1], KEYS[6], KEYS[7], KEYS[8])
local replies = {1}
local added = 0
-- Index entries are added at the end, one command per index for the whole call.
local ranked, since, scheduled = {}, {}, {}
for j = 0, job_count - 1 do
  local job, dedup, a = KEYS[10 + 2 * j], KEYS[11 + 2 * j], 1 + 10 * j
  local group = ARGV[a + 10]
  local id, job_type, spec, dedup_key = ARGV[a + 1], ARGV[a + 2], ARGV[a + 4], ARGV[a + 7]
  local existing = dedup_key ~= '' and redis.call('GET', dedup) or nil
  if existing then
    replies[j + 2] = {existing, 1}
  else
    if dedup_key ~= '' then
      redis.call('SET', dedup, id, 'PX', ARGV[a + 8])
    end
    local run_at = now
    if tonumber(ARGV[a + 5]) > 0 then
      run_at = now + tonumber(ARGV[a + 5])
    elseif tonumber(ARGV[a + 6]) > 0 then
      -- A past instant is ready now, and keeps its time as the one it was due at (a
      -- schedule's tick, say).
      run_at = tonumber(ARGV[a + 6])
    end
    -- One HSET for the whole record, of only the fields that say something: each field
    -- costs Redis again on every write and read of the job (decode_job has the defaults).
    local state = 'READY'
    if run_at > now then
      state = 'SCHEDULED'
      table.insert(scheduled, int(run_at))
      table.insert(scheduled, id)
    else
      if group == '' then
        table.insert(ranked, int(rank(spec_priority(spec), now)))
        table.insert(ranked, id)
      end
      table.insert(since, now_int)
      table.insert(since, id)
    end
    local record = {'payload', ARGV[a + 3], 'spec', spec, 'created_at', now_int, 'state', state}
    if run_at ~= now then
      add_fields(record, 'run_at', int(run_at))
    end
    add_fields(record, 'type', job_type, 'dedup_key', dedup_key, 'trace', ARGV[a + 9])
    local seq
    if group ~= '' then
      seq = redis.call('HINCRBY', KEYS[8], 'seq', 1)
      add_fields(record, 'group', group, 'gseq', seq)
    end
    redis.call('HSET', job, unpack(record))
    if group ~= '' and state == 'READY' then
      redis.call('ZADD', group_ready(group), seq, id)
      offer_group(group)
    end
    replies[j + 2] = {id, 0}
    added = added + 1
    if events.on then
      if state == 'SCHEDULED' then
        event('enqueued', id, state, 0, 'type', job_type, 'run_at', int(run_at))
      else
        event('enqueued', id, state, 0, 'type', job_type)
      end
    end
  end
end
in_bulk('ZADD', KEYS[1], ranked)
in_bulk('ZADD', KEYS[2], since)
in_bulk('ZADD', KEYS[3], scheduled)
-- Waiting consumers wake, once per call: to take a ready job, or to set their timer for a
-- scheduled one.
if added > 0 then
  redis.call('PUBLISH', ARGV[1], 'enqueued')
  -- The dashboard's enqueue rate: a count per minute, the minute before last dropped when a
  -- minute's count starts (so a busy queue pays one HINCRBY per call).
  local minute = math.floor(now / 60000000)
  if redis.call('HINCRBY', KEYS[9], minute, added) == added then
    redis.call('HDEL', KEYS[9], minute - 2)
    redis.call('PEXPIRE', KEYS[9], 180000)
  end
end
announce_events()
return replies
