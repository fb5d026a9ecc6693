-- Reads an entry. KEYS[1] entry.
-- Returns {1, 1, value, version, exp_us, tags} when fresh, else {1, 0}.
local entry = read_entry()
if fresh(entry, -1) then
  return reply(1, entry)
end
return {1, 0}
