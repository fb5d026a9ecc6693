-- Whether lease ARGV[3] leads election KEYS[1..2] right now (recording an expired leader).
--
-- Returns {1, 1} or {1, 0}.
local s = reap(state())
if leads(s, ARGV[3]) then
  return {1, 1}
end
return {1, 0}
