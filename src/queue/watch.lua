-- Keeps a queue's events recorded for another while (a replica with watchers calls it at
-- start and then periodically) and says where its event stream stands.
--
-- KEYS[1] watched  KEYS[2] events   ARGV[1] how long to keep recording, ms
-- Returns {1, newest event id ('0-0' when none), events recorded so far}.
redis.call('HSETNX', KEYS[1], 'n', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[1])
local newest = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)[1]
return {1, newest and newest[1] or '0-0', tonumber(redis.call('HGET', KEYS[1], 'n'))}
