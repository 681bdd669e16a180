-- Shared by every presence script (prepended when the script is loaded).
--
-- Keys (P = 'presence:'):
--   P..'u:'..uid      hash: st status, md metadata JSON, ls lastSeen ('' while present),
--                     lc connections, v version (bumped on every visible change),
--                     ms metadata sequence, g '1' while in offline grace, ea when it ended
--   P..'uc:'..uid     hash: connId -> status \t metadataSeq \t metadataJSON
--   P..'nc:'..node    hash: connId -> uid (the node's connections)
--   P..'nodes'        hash: node -> its last heartbeat time
--   P..'alive:'..node string with a TTL of --node-timeout, renewed by the node
--   P..'reaped:'..node marker: the node's connections were ended by another node
--   P..'grace'        zset: uid -> grace deadline
--   P..'present'      set: users anyone sees as present (offline grace included)
-- Channel P..'ch:'..uid carries "version\nstatus\nconnections\nlastSeen\nmetadata".
local P = 'presence:'

-- A connection's record (P..'uc:'..uid): status, metadata sequence, metadata JSON.
local function split3(rec)
  local a = string.find(rec, '\t', 1, true)
  local b = string.find(rec, '\t', a + 1, true)
  return string.sub(rec, 1, a - 1), tonumber(string.sub(rec, a + 1, b - 1)), string.sub(rec, b + 1)
end

local function join3(st, q, md)
  return st .. '\t' .. q .. '\t' .. md
end

local function stamp(x)
  return string.format('%.3f', x)
end

local function publish(uid, v, st, lc, ls, md)
  redis.call('PUBLISH', P .. 'ch:' .. uid,
    v .. '\n' .. st .. '\n' .. lc .. '\n' .. ls .. '\n' .. md)
end

-- A user's presence ends: offline, no metadata, lastSeen at (a time string), no longer
-- present or in the grace; the record stays for the lastSeen TTL. Bumps the version and
-- publishes the offline. Returns the new version.
local function go_offline(uid, at, ttl)
  local ukey = P .. 'u:' .. uid
  redis.call('HSET', ukey, 'st', 'offline', 'md', '{}', 'ls', at, 'lc', 0)
  redis.call('HDEL', ukey, 'g', 'ea')
  redis.call('SREM', P .. 'present', uid)
  online_remove(uid)
  redis.call('EXPIRE', ukey, ttl)
  local v = redis.call('HINCRBY', ukey, 'v', 1)
  publish(uid, v, 'offline', 0, at, '{}')
  wh_user('user.offline', uid, at, 'offline', '{}', at, 0)
  rooms_user_changed(uid, 'offline')
  return v
end

-- Recompute a user's aggregate after their connections changed, atomically.
-- ending: nil, or {at = 'time string', clean = bool, grace = seconds} when a connection ended.
-- Publishes (and bumps the version) only when what a watcher sees changed. Returns 1 if so.
local function settle(uid, now, ttl, ending)
  wh_decided(now)
  local ukey = P .. 'u:' .. uid
  local recs = redis.call('HVALS', P .. 'uc:' .. uid)
  local old = redis.call('HMGET', ukey, 'st', 'md', 'ls', 'g')
  local ost, omd, ols, og = old[1] or 'offline', old[2] or '{}', old[3] or '', old[4]
  if #recs == 0 then
    if ost == 'offline' or og then return 0 end
    local at = ending and ending.at or stamp(now)
    if ending and not ending.clean and ending.grace > 0 and tonumber(at) + ending.grace > now then
      redis.call('HSET', ukey, 'lc', 0, 'g', '1', 'ea', at)
      redis.call('ZADD', P .. 'grace', stamp(tonumber(at) + ending.grace), uid)
      return 0
    end
    go_offline(uid, at, ttl)  -- visible: the user was not offline
    return 1
  end
  local busy, online, best, md = false, false, 0, '{}'
  for i = 1, #recs do
    local s, q, m = split3(recs[i])
    if s == 'busy' then busy = true elseif s == 'online' then online = true end
    if q > best then best = q; md = m end
  end
  local st, lc = busy and 'busy' or (online and 'online' or 'away'), #recs
  if og then redis.call('ZREM', P .. 'grace', uid) end  -- back within the grace
  redis.call('HSET', ukey, 'st', st, 'md', md, 'ls', '', 'lc', lc)
  redis.call('HDEL', ukey, 'g', 'ea')
  redis.call('PERSIST', ukey)
  if redis.call('SADD', P .. 'present', uid) == 1 then online_add(uid) end  -- newly present
  if st == ost and md == omd and ols == '' then return 0 end
  publish(uid, redis.call('HINCRBY', ukey, 'v', 1), st, lc, '', md)
  wh_user(ost == 'offline' and 'user.online' or 'user.updated', uid, stamp(now), st, md, '', lc)
  rooms_user_changed(uid, st)
  return 1
end

-- End every connection of a node (its death, or its own graceful stop). Returns how many.
local function reap(node, now, ttl, grace, at)
  rooms_reap(node, now, ttl, grace, at)
  local nkey = P .. 'nc:' .. node
  local conns = redis.call('HGETALL', nkey)
  local users = {}
  for i = 1, #conns, 2 do
    redis.call('HDEL', P .. 'uc:' .. conns[i + 1], conns[i])
    users[conns[i + 1]] = true
  end
  redis.call('DEL', nkey, P .. 'alive:' .. node)
  redis.call('HDEL', P .. 'nodes', node)
  local ending = {at = at, clean = false, grace = grace}
  for uid in pairs(users) do settle(uid, now, ttl, ending) end
  return #conns / 2
end
