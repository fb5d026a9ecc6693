-- Takes a live session away from its id, for a rotation across Cluster slots: the first
-- of two steps (`put.lua` writes it under the new id). A crash between them loses the
-- session (its user signs in again) but can never leave two live ids.
-- KEYS[1] old session
-- Returns {1, HGETALL of the session as it was}, or {0, 'MISSING'} when it is missing or
-- expired.
local session, fields = take_live(KEYS[1])
if not session then
  return {0, 'MISSING'}
end
table.insert(fields, 1, 1)
return fields
