-- Lingering memberships whose grace ran out: claim each (ZREM) and end it, exactly once.
-- ARGV: now, ttl, limit. Returns {how many ended, rooms with members, memberships}.
wh_decided(tonumber(ARGV[1]))
local due = redis.call('ZRANGEBYSCORE', RP .. 'rgrace', '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
local n = 0
for i = 1, #due do
  redis.call('ZREM', RP .. 'rgrace', due[i])
  local a = string.find(due[i], '\n', 1, true)
  local b = string.find(due[i], '\n', a + 1, true)
  local room, uid, conn = string.sub(due[i], 1, a - 1), string.sub(due[i], a + 1, b - 1),
    string.sub(due[i], b + 1)
  local key = RP .. 'rmc:' .. room .. '\n' .. uid
  local rec = redis.call('HGET', key, conn)
  if rec then
    local _, e = room_split(rec)
    if e ~= '' then
      redis.call('HDEL', key, conn)
      room_settle(room, uid, e, '', ARGV[2])
      n = n + 1
    end
  end
end
return {n, redis.call('SCARD', RP .. 'rooms'), tonumber(redis.call('GET', RP .. 'rmembers') or '0')}
