-- LEAVE. ARGV: node, conn, uid, room, now, ttl. Returns the version published, or 0.
local conn, uid, room = ARGV[2], ARGV[3], ARGV[4]
redis.call('HDEL', RP .. 'nm:' .. ARGV[1], room .. '\n' .. conn)
return room_end(room, uid, conn, ARGV[5], true, 0, tonumber(ARGV[5]), ARGV[6])
