-- A joined connection ends (run before close.lua): it leaves its rooms, at once when clean,
-- else after the grace. ARGV: node, conn, uid, now, clean ('1'/'0'), grace, ttl, rooms...
local node, conn, uid, now = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local nkey = RP .. 'nm:' .. node
for i = 8, #ARGV do
  redis.call('HDEL', nkey, ARGV[i] .. '\n' .. conn)
  room_end(ARGV[i], uid, conn, now, ARGV[5] == '1', tonumber(ARGV[6]), tonumber(now), ARGV[7])
end
return 1
