-- Shared by every schedule script (prepended at load time, after the queue prelude).
--
-- A queue's schedules are three keys sharing the queue's hash tag:
--   schedules  hash: schedule id -> its definition (a baton.v1.Schedule, opaque here)
--   state      hash: schedule id -> "<created µs>|<last tick µs or 0>|<ticks fired>|<paused 0|1>";
--              `created` is the schedule's generation: replacing it starts a new one
--   due        sorted set: schedule id -> its next tick, µs on Redis's clock; absent while
--              paused (or when no tick is left)
-- Every change that moves a tick earlier publishes on the schedules channel, so that every
-- replica's scheduler looks again.

local function parse_state(state)
  local created, last, fired, paused = string.match(state, '^(%d+)|(%d+)|(%d+)|(%d)$')
  return tonumber(created), tonumber(last), tonumber(fired), paused == '1'
end

local function format_state(created, last, fired, paused)
  return int(created) .. '|' .. int(last) .. '|' .. int(fired) .. '|' .. (paused and '1' or '0')
end
