-- Prepended to every Baton script: Redis's clock, and integer formatting.
--
-- All expiry, window and lease arithmetic uses Redis's clock (TIME), never a replica's, so
-- every Baton replica agrees.
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000000 + tonumber(clock[2])

-- Numbers handed to redis.call are formatted with 14 significant digits, too few for µs
-- timestamps (16 digits): format every integer argument explicitly.
local function int(x)
  return string.format('%d', x)
end
