-- Lists the current holders without changing anything (lease ids stay secret).
--
-- Returns {1, owner, token, expires_us, …}: each live lease, soonest expiry first.
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. int(now), '+inf', 'WITHSCORES')
local holders = {1}
for i = 1, #live, 2 do
  local info = redis.call('HGET', KEYS[2], live[i])
  if info then
    local token, _, owner = parse_lease(info)
    holders[#holders + 1] = owner
    holders[#holders + 1] = token
    holders[#holders + 1] = tonumber(live[i + 1])
  end
end
return holders
