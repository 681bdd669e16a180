-- PRESENCE_UPDATE. ARGV: node, conn, uid, status, hasMetadata ('1'/'0'), metadata, now, ttl.
-- Returns 1 if a diff was published, 0 if not, -1 if Redis does not know the connection.
local uid, conn = ARGV[3], ARGV[2]
local key = P .. 'uc:' .. uid
local rec = redis.call('HGET', key, conn)
if not rec then return -1 end
local _, q, m = split3(rec)
if ARGV[5] == '1' then
  q = redis.call('HINCRBY', P .. 'u:' .. uid, 'ms', 1)
  m = ARGV[6]
end
redis.call('HSET', key, conn, join3(ARGV[4], q, m))
return settle(uid, tonumber(ARGV[7]), ARGV[8], nil)
