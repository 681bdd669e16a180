-- A connection ends. ARGV: node, conn, uid, now, clean ('1'/'0'), grace, ttl.
local uid, conn = ARGV[3], ARGV[2]
if redis.call('HDEL', P .. 'uc:' .. uid, conn) == 0 then return 0 end
redis.call('HDEL', P .. 'nc:' .. ARGV[1], conn)
return settle(uid, tonumber(ARGV[4]), ARGV[7],
  {at = ARGV[4], clean = ARGV[5] == '1', grace = tonumber(ARGV[6])})
