-- Offline grace deadlines that passed: claim each (ZREM) and send the offline, exactly once.
-- ARGV: now, ttl, limit. Returns how many users went offline.
wh_decided(tonumber(ARGV[1]))
local due = redis.call('ZRANGEBYSCORE', P .. 'grace', '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local n = 0
for i = 1, #due do
  local uid = due[i]
  redis.call('ZREM', P .. 'grace', uid)
  local ukey = P .. 'u:' .. uid
  if redis.call('HLEN', P .. 'uc:' .. uid) == 0 and redis.call('HGET', ukey, 'g') then
    go_offline(uid, redis.call('HGET', ukey, 'ea') or ARGV[1], ARGV[2])
    n = n + 1
  end
end
return n
