-- A node (re-)registers everything it holds: on start, after a Redis outage, after being
-- ended by another node. Its connections in Redis become exactly the live ones given here.
-- ARGV: node, now, ttl, grace, ttlMs, n, then n times (conn, uid, status, metadata or ''),
-- then quads (conn, uid, endedAt, clean '1'/'0') for connections that ended while Redis was
-- away, in the order they ended. Returns {n, 1 if Redis had no presence data (first start,
-- or it lost its data)}.
local node, now, ttl, grace = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
wh_decided(now)
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
-- A user whose connections here are gone ended with the one that ended last (ones Redis
-- never knew, opened while it was away, included): the latest endedAt, of equal ones the
-- one given last. A connection Redis has that is given neither live nor ended (its close
-- never reached Redis) ended now, uncleanly.
local ended, k = {}, 0
while i <= #ARGV do
  k = k + 1
  ended[ARGV[i]] = {uid = ARGV[i + 1], at = ARGV[i + 2], clean = ARGV[i + 3] == '1',
    grace = grace, k = k}
  i = i + 4
end
local vanished = {at = ARGV[2], clean = false, grace = grace, k = math.huge}
local function last(a, b)
  if not b then return a end
  local ta, tb = tonumber(a.at), tonumber(b.at)
  if ta > tb or (ta == tb and a.k > b.k) then return a end
  return b
end
local old = redis.call('HGETALL', nkey)
for j = 1, #old, 2 do
  local conn, uid = old[j], old[j + 1]
  if not live[conn] then
    redis.call('HDEL', P .. 'uc:' .. uid, conn)
    redis.call('HDEL', nkey, conn)
    touched[uid] = true
    if not ended[conn] then endings[uid] = last(vanished, endings[uid]) end
  end
end
local unknown = {}
for _, e in pairs(ended) do
  if touched[e.uid] then
    endings[e.uid] = last(e, endings[e.uid])
  else
    unknown[e.uid] = last(e, unknown[e.uid])
  end
end
-- Ended meanwhile and the user unknown to Redis (it lost its data): keep their lastSeen.
-- (A user Redis still knows was already ended, e.g. by the node clean-up: nothing to add.)
for uid, e in pairs(unknown) do
  local ukey = P .. 'u:' .. uid
  if redis.call('EXISTS', ukey) == 0 and redis.call('HLEN', P .. 'uc:' .. uid) == 0 then
    go_offline(uid, e.at, ttl)
  end
end
local fresh = redis.call('SETNX', P .. 'epoch', ARGV[2])
redis.call('SET', P .. 'alive:' .. node, ARGV[2], 'PX', ARGV[5])
redis.call('HSET', P .. 'nodes', node, ARGV[2])
redis.call('DEL', P .. 'reaped:' .. node)
for uid in pairs(touched) do settle(uid, now, ttl, endings[uid]) end
return {n, fresh}
