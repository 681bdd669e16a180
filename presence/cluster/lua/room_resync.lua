-- Right after resync.lua: the node's joined memberships in Redis become exactly the live
-- ones given. ARGV: node, now, grace, ttl, n, then n times (conn, uid, room, metadata or
-- ''), then quads (room, conn, endedAt, clean '1'/'0') for memberships that ended while
-- Redis was away. One Redis has that is given neither ended now, uncleanly.
local node, now, grace, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
local nkey = RP .. 'nm:' .. node
local live = {}
local n = tonumber(ARGV[5])
local i = 6
for _ = 1, n do
  local conn, uid, room, md = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  live[room .. '\n' .. conn] = true
  local key = RP .. 'rmc:' .. room .. '\n' .. uid
  local rec = redis.call('HGET', key, conn)
  local q, e, m = 0, '', '{}'
  if rec then q, e, m = room_split(rec) end
  if not rec or e ~= '' then
    local all = redis.call('HGETALL', key)
    for j = 1, #all, 2 do
      local _, le = room_split(all[j + 1])
      if le ~= '' then
        redis.call('HDEL', key, all[j])
        redis.call('ZREM', RP .. 'rgrace', room .. '\n' .. uid .. '\n' .. all[j])
      end
    end
    q, m = 0, '{}'
  end
  if md ~= '' and md ~= m then
    q = redis.call('HINCRBY', RP .. 'r:' .. room, 'ms', 1)
    m = md
  end
  redis.call('HSET', key, conn, q .. '\t\t' .. m)
  redis.call('HSET', nkey, room .. '\n' .. conn, uid)
  room_settle(room, uid, ARGV[2], '', ttl)
end
local ended = {}
while i <= #ARGV do
  ended[ARGV[i] .. '\n' .. ARGV[i + 1]] = {at = ARGV[i + 2], clean = ARGV[i + 3] == '1'}
  i = i + 4
end
local old = redis.call('HGETALL', nkey)
for j = 1, #old, 2 do
  local f, uid = old[j], old[j + 1]
  if not live[f] then
    redis.call('HDEL', nkey, f)
    local nl = string.find(f, '\n', 1, true)
    local e = ended[f] or {at = ARGV[2], clean = false}
    room_end(string.sub(f, 1, nl - 1), uid, string.sub(f, nl + 1), e.at, e.clean, grace, now,
      ttl)
  end
end
return n
