-- A node (re-)registers everything it holds: on start, after a Redis outage, after being
-- ended by another node. Its connections in Redis become exactly the live ones given here.
-- ARGV: node, now, ttl, grace, ttlMs, n, then n times (conn, uid, status, metadata or ''),
-- then quads (conn, uid, endedAt, clean '1'/'0') for connections that ended while Redis was
-- away. Returns {n, 1 if Redis had no presence data (first start, or it lost its data)}.
local node, now, ttl, grace = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
local nkey = P .. 'nc:' .. node
local live, touched, endings = {}, {}, {}
local n = tonumber(ARGV[6])
local i = 7
for _ = 1, n do
  local conn, uid, st, md = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  i = i + 4
  live[conn] = true
  touched[uid] = true
  local key = P .. 'uc:' .. uid
  local q = 0
  if md ~= '' then
    local rec = redis.call('HGET', key, conn)
    if rec then
      local _, oq, om = split3(rec)
      if om == md then q = oq end
    end
    if q == 0 then q = redis.call('HINCRBY', P .. 'u:' .. uid, 'ms', 1) end
  else
    md = '{}'
  end
  redis.call('HSET', key, conn, join3(st, q, md))
  redis.call('HSET', nkey, conn, uid)
end
local ended = {}
while i <= #ARGV do
  ended[ARGV[i]] = {uid = ARGV[i + 1], at = ARGV[i + 2], clean = ARGV[i + 3] == '1', grace = grace}
  i = i + 4
end
local old = redis.call('HGETALL', nkey)
for j = 1, #old, 2 do
  local conn, uid = old[j], old[j + 1]
  if not live[conn] then
    redis.call('HDEL', P .. 'uc:' .. uid, conn)
    redis.call('HDEL', nkey, conn)
    endings[uid] = ended[conn] or {at = ARGV[2], clean = false, grace = grace}
    touched[uid] = true
    ended[conn] = nil
  end
end
-- Ended meanwhile and the user unknown to Redis (it lost its data): keep their lastSeen.
-- (A user Redis still knows was already ended, e.g. by the node clean-up: nothing to add.)
for _, e in pairs(ended) do
  local ukey = P .. 'u:' .. e.uid
  if redis.call('EXISTS', ukey) == 0 and redis.call('HLEN', P .. 'uc:' .. e.uid) == 0 then
    go_offline(e.uid, e.at, ttl)
  end
end
local fresh = redis.call('SETNX', P .. 'epoch', ARGV[2])
redis.call('SET', P .. 'alive:' .. node, ARGV[2], 'PX', ARGV[5])
redis.call('HSET', P .. 'nodes', node, ARGV[2])
redis.call('DEL', P .. 'reaped:' .. node)
for uid in pairs(touched) do settle(uid, now, ttl, endings[uid]) end
return {n, fresh}
