-- Tells a consumer which of its leases are still its own: the credit check that works
-- whichever replica the Acks went through.
--
-- KEYS: job keys; ARGV: the matching lease tokens.
-- Returns {1, then one code per job: 1 still held, 2 cancelled while held, 0 finished or lost}.
local codes = {1}
for i, job in ipairs(KEYS) do
  local refusal = lease_refusal(job, ARGV[i])
  if refusal == nil then
    codes[i + 1] = 1
  elseif refusal == 'JOB_CANCELLED' then
    codes[i + 1] = 2
  else
    codes[i + 1] = 0
  end
end
return codes
