-- JOIN. ARGV: node, conn, uid, room, hasMetadata ('1'/'0'), metadata, now, cap (0: none),
-- ttl. Returns {1, the room's version}, or {-1, version} when the room has cap members and
-- the user is not one of them (nothing changed).
local node, conn, uid, room = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local key = RP .. 'rmc:' .. room .. '\n' .. uid
local rec = redis.call('HGET', key, conn)
if rec then
  local _, e = room_split(rec)
  if e ~= '' then rec = nil end
end
if not rec then
  local cap = tonumber(ARGV[8]) or 0
  local rkey = RP .. 'rm:' .. room
  if cap > 0 and redis.call('HEXISTS', rkey, uid) == 0 and redis.call('HLEN', rkey) >= cap then
    return {-1, room_version(room)}
  end
  rec = '0\t\t{}'
  redis.call('HSET', RP .. 'nm:' .. node, room .. '\n' .. conn, uid)
end
-- back within the grace: the user's lingering memberships of the room end unseen
local all = redis.call('HGETALL', key)
for i = 1, #all, 2 do
  local _, e = room_split(all[i + 1])
  if e ~= '' then
    redis.call('HDEL', key, all[i])
    redis.call('ZREM', RP .. 'rgrace', room .. '\n' .. uid .. '\n' .. all[i])
  end
end
local q, _, m = room_split(rec)
if ARGV[5] == '1' then
  q = redis.call('HINCRBY', RP .. 'r:' .. room, 'ms', 1)
  m = ARGV[6]
end
redis.call('HSET', key, conn, q .. '\t\t' .. m)
room_settle(room, uid, ARGV[7], conn, ARGV[9])
return {1, room_version(room)}
