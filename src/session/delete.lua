-- Deletes a session. KEYS[1] session.
-- Returns {1, 1, subject} when it existed (live or not), else {1, 0, ''}.
local subject = redis.call('HGET', KEYS[1], 'subject')
if not subject then
  return {1, 0, ''}
end
redis.call('DEL', KEYS[1])
return {1, 1, subject}
