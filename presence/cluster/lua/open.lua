-- A connection opens. ARGV: node, conn, uid, now, ttl. Returns the user's connection count.
local node, conn, uid = ARGV[1], ARGV[2], ARGV[3]
redis.call('HSET', P .. 'uc:' .. uid, conn, 'online\t0\t{}')
redis.call('HSET', P .. 'nc:' .. node, conn, uid)
redis.call('HSETNX', P .. 'nodes', node, ARGV[4])
settle(uid, tonumber(ARGV[4]), ARGV[5], nil)
return redis.call('HLEN', P .. 'uc:' .. uid)
