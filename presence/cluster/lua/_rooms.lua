-- Rooms: prepended to every script before _common.lua (whose settle, go_offline and reap
-- call into it). A room name and a userId hold no whitespace, so '\n' separates them.
--
-- Keys (RP = 'presence:'):
--   RP..'r:'..room               hash: v version of the room's diff stream, ms metadata
--                                sequence (expires --last-seen-ttl after the room empties)
--   RP..'rm:'..room              hash: uid -> joined connections \t metadata JSON (members)
--   RP..'rmc:'..room..'\n'..uid  hash: connId -> metadataSeq \t endedAt ('' while joined)
--                                \t metadata JSON (a lingering one ended within the grace)
--   RP..'ur:'..uid               set: the rooms the user is a member of
--   RP..'nm:'..node              hash: room \n connId -> uid (the node's joined memberships)
--   RP..'rgrace'                 zset: room \n uid \n connId -> its grace deadline
--   RP..'rooms'                  set: rooms with members
--   RP..'rmembers'               string: how many (user, room) memberships there are
-- Channel RP..'rch:'..room carries
-- "version\nconnId\nuid\nkind\nstatus\nconnections\nat\nmetadata": kind 'm' the member as
-- they are now (connId: the joining connection, told nothing of its own join, or ''), 'f'
-- the same as an update (the user's own presence changed), 'l' they left at `at`.
local RP = 'presence:'

local function room_split(rec)
  local a = string.find(rec, '\t', 1, true)
  local b = string.find(rec, '\t', a + 1, true)
  return tonumber(string.sub(rec, 1, a - 1)), string.sub(rec, a + 1, b - 1), string.sub(rec, b + 1)
end

local function room_version(room)
  return tonumber(redis.call('HGET', RP .. 'r:' .. room, 'v') or '0')
end

local function room_publish(room, conn, uid, kind, st, lc, at, md)
  local v = redis.call('HINCRBY', RP .. 'r:' .. room, 'v', 1)
  redis.call('PUBLISH', RP .. 'rch:' .. room, v .. '\n' .. conn .. '\n' .. uid .. '\n' .. kind
    .. '\n' .. st .. '\n' .. lc .. '\n' .. at .. '\n' .. md)
  return v
end

-- Recompute a user's membership of a room from their records and publish it if it changed.
-- at: when (a leave's lastSeen); origin: the joining connection, or ''.
local function room_settle(room, uid, at, origin, ttl)
  local recs = redis.call('HVALS', RP .. 'rmc:' .. room .. '\n' .. uid)
  local rkey = RP .. 'rm:' .. room
  local old = redis.call('HGET', rkey, uid)
  if #recs == 0 then
    if not old then return 0 end
    redis.call('HDEL', rkey, uid)
    redis.call('SREM', RP .. 'ur:' .. uid, room)
    redis.call('DECR', RP .. 'rmembers')
    if redis.call('HLEN', rkey) == 0 then
      redis.call('SREM', RP .. 'rooms', room)
      redis.call('EXPIRE', RP .. 'r:' .. room, ttl)
    end
    wh_left(room, uid, at, old, redis.call('HLEN', rkey) == 0)
    return room_publish(room, origin, uid, 'l', 'offline', 0, at, '{}')
  end
  local lc, best, md = 0, 0, '{}'
  for i = 1, #recs do
    local q, e, m = room_split(recs[i])
    if e == '' then lc = lc + 1 end
    if q > best then best = q; md = m end
  end
  local new = lc .. '\t' .. md
  if old == new then return 0 end
  if not old then
    redis.call('SADD', RP .. 'ur:' .. uid, room)
    redis.call('INCR', RP .. 'rmembers')
    redis.call('SADD', RP .. 'rooms', room)
    redis.call('PERSIST', RP .. 'r:' .. room)
  end
  redis.call('HSET', rkey, uid, new)
  local st = redis.call('HGET', RP .. 'u:' .. uid, 'st') or 'offline'
  if not old then wh_joined(room, uid, at, st, lc, md, redis.call('HLEN', rkey) == 1) end
  return room_publish(room, origin, uid, 'm', st, lc, at, md)
end

-- A joined membership ends at `at` (a time string): at once when clean or past the grace,
-- else it lingers until its deadline. Returns the version published, or 0.
local function room_end(room, uid, conn, at, clean, grace, now, ttl)
  wh_decided(now)
  local key = RP .. 'rmc:' .. room .. '\n' .. uid
  local rec = redis.call('HGET', key, conn)
  if not rec then return 0 end
  local q, e, m = room_split(rec)
  if e ~= '' then return 0 end
  if not clean and grace > 0 and tonumber(at) + grace > now then
    redis.call('HSET', key, conn, q .. '\t' .. at .. '\t' .. m)
    redis.call('ZADD', RP .. 'rgrace', string.format('%.3f', tonumber(at) + grace),
      room .. '\n' .. uid .. '\n' .. conn)
  else
    redis.call('HDEL', key, conn)
  end
  return room_settle(room, uid, at, '', ttl)
end

-- The user's own presence changed (settle published it): an update in each of their rooms.
local function rooms_user_changed(uid, st)
  local rooms = redis.call('SMEMBERS', RP .. 'ur:' .. uid)
  for i = 1, #rooms do
    local rec = redis.call('HGET', RP .. 'rm:' .. rooms[i], uid)
    if rec then
      local tab = string.find(rec, '\t', 1, true)
      room_publish(rooms[i], '', uid, 'f', st, string.sub(rec, 1, tab - 1), '',
        string.sub(rec, tab + 1))
    end
  end
end

-- A node's connections end (its death or its graceful stop): so do their memberships, at
-- `at`, into the grace.
local function rooms_reap(node, now, ttl, grace, at)
  local nkey = RP .. 'nm:' .. node
  local all = redis.call('HGETALL', nkey)
  redis.call('DEL', nkey)
  for i = 1, #all, 2 do
    local f = all[i]
    local nl = string.find(f, '\n', 1, true)
    room_end(string.sub(f, 1, nl - 1), all[i + 1], string.sub(f, nl + 1), at, false, grace,
      now, ttl)
  end
end
