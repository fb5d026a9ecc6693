-- Evaluates N rate limits atomically: either every limit admits the request and all
-- consume their cost, or nothing is consumed (the algorithms: limits.lua).
--
-- KEYS[i]  the counter of limit i (all KEYS share one hash tag).
-- ARGV[1]  "1" for a dry run (evaluate, write nothing), else "0".
-- ARGV[2 + 5*(i-1) .. 6 + 5*(i-1)], for limit i:
--          algorithm (see `evaluate`), limit, period in µs, burst (GCRA only), cost.
-- Returns {1, all_allowed, then per limit: allowed, remaining, reset_after_us, retry_after_us}.

local dry_run = ARGV[1] == '1'

local replies = {1, 0}
local writes = {}
local all_allowed = true

for i, key in ipairs(KEYS) do
  local base = 2 + (i - 1) * 5
  local allowed, remaining, reset_after, retry_after, write = evaluate(key, tonumber(ARGV[base]),
    tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4]), dry_run)
  if allowed then
    writes[#writes + 1] = write
  else
    all_allowed = false
  end
  replies[#replies + 1] = allowed and 1 or 0
  replies[#replies + 1] = remaining
  replies[#replies + 1] = math.ceil(reset_after)
  replies[#replies + 1] = math.ceil(retry_after)
end

if all_allowed then
  replies[2] = 1
  if not dry_run then
    for _, write in ipairs(writes) do
      consume(write)
    end
  end
end

return replies
