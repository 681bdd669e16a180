-- ROOM_UPDATE. ARGV: conn, uid, room, metadata, now, ttl. Returns {1, the room's version},
-- or {-1, version} if Redis does not know the membership.
local conn, uid, room = ARGV[1], ARGV[2], ARGV[3]
local key = RP .. 'rmc:' .. room .. '\n' .. uid
local rec = redis.call('HGET', key, conn)
if not rec or select(2, room_split(rec)) ~= '' then return {-1, room_version(room)} end
local q = redis.call('HINCRBY', RP .. 'r:' .. room, 'ms', 1)
redis.call('HSET', key, conn, q .. '\t\t' .. ARGV[4])
room_settle(room, uid, ARGV[5], '', ARGV[6])
return {1, room_version(room)}
