-- A node is alive. ARGV: node, now, ttl in ms.
-- Returns 1 if another node ended this node's connections meanwhile (it must re-register).
redis.call('SET', P .. 'alive:' .. ARGV[1], ARGV[2], 'PX', ARGV[3])
redis.call('HSET', P .. 'nodes', ARGV[1], ARGV[2])
return redis.call('DEL', P .. 'reaped:' .. ARGV[1])
