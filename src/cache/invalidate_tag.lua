-- Bumps a tag's generation. KEYS[1] the tag's generation; ARGV[1] its ttl, ms.
-- The generation is max(previous + 1, Redis clock µs): it still only rises, so stamps
-- written before it no longer match, and it also says when the tag was last invalidated,
-- which Fill compares with when its token was granted.
local generation = math.max((tonumber(redis.call('GET', KEYS[1])) or 0) + 1, now)
redis.call('SET', KEYS[1], int(generation), 'PX', ARGV[1])
return {1, int(generation)}
