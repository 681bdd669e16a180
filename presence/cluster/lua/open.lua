-- A connection opens. ARGV: node, conn, uid, now, ttl, cap (0 or absent: none).
-- Returns the user's connection count with this one, or -1 if the user already has cap
-- connections: then nothing is registered and nothing changes. Opening a connection that
-- is already registered (a re-registration got there first) only counts it.
local node, conn, uid = ARGV[1], ARGV[2], ARGV[3]
local key = P .. 'uc:' .. uid
local cap = tonumber(ARGV[6] or '0') or 0
if redis.call('HEXISTS', key, conn) == 1 then return redis.call('HLEN', key) end
if cap > 0 and redis.call('HLEN', key) >= cap then return -1 end
redis.call('HSET', key, conn, 'online\t0\t{}')
redis.call('HSET', P .. 'nc:' .. node, conn, uid)
redis.call('HSETNX', P .. 'nodes', node, ARGV[4])
settle(uid, tonumber(ARGV[4]), ARGV[5], nil)
return redis.call('HLEN', key)
