-- Offline grace deadlines that passed: claim each (ZREM) and send the offline, exactly once.
-- ARGV: now, ttl, limit. Returns how many users went offline.
local due = redis.call('ZRANGEBYSCORE', P .. 'grace', '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local n = 0
for i = 1, #due do
  local uid = due[i]
  redis.call('ZREM', P .. 'grace', uid)
  local ukey = P .. 'u:' .. uid
  if redis.call('HLEN', P .. 'uc:' .. uid) == 0 and redis.call('HGET', ukey, 'g') then
    local at = redis.call('HGET', ukey, 'ea') or ARGV[1]
    redis.call('HSET', ukey, 'st', 'offline', 'md', '{}', 'ls', at, 'lc', 0)
    redis.call('HDEL', ukey, 'g', 'ea')
    redis.call('SREM', P .. 'present', uid)
    redis.call('EXPIRE', ukey, ARGV[2])
    publish(uid, redis.call('HINCRBY', ukey, 'v', 1), 'offline', 0, at, '{}')
    n = n + 1
  end
end
return n
