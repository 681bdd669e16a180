-- Webhook events: prepended to every script, first (_rooms.lua and _common.lua call into
-- it). The node prepends its own settings before this text (webhook_stream.prelude):
--   WH_TYPES  the enabled event types, e.g. {['user.online'] = true}; empty without
--             webhooks, and then nothing here touches Redis
--   WH_RETAIN how many undelivered events the streams may hold together
--
-- Keys (WHP = 'presence:wh:'):
--   WHP..shard          stream, shard 0..WH_SHARDS-1 = a hash of the event's ordering key
--                       (every event of one user, or of one room, is in one shard, in the
--                       order the scripts decided them); fields: t type, k key, ts time,
--                       then u userId, r room, s status, m metadata JSON, l lastSeen,
--                       c connections as the event has them. An entry is deleted once
--                       delivered, so a stream holds exactly what is not yet delivered.
--   WHP..'dropped'      counter: events dropped because the streams held WH_RETAIN (a
--                       node's beat takes it into its presence_webhook_deliveries_total)
--   WHP..'lease:'..shard the node delivering the shard (a TTL of --node-timeout)
local WH_SHARDS = 16
local WHP = 'presence:wh:'
local wh_lens = nil -- the streams' lengths, read once per script run
local wh_now = nil -- when the script decides (wh_decided); else an event's own time

-- An event's timestamp is when it was decided (a grace expiry, a dead node's clean-up),
-- not when the user left: that is their lastSeen.
local function wh_decided(now)
  wh_now = now
end

local function wh_shard(key)
  return tonumber(string.sub(redis.sha1hex(key), 1, 4), 16) % WH_SHARDS
end

-- One event. With WH_RETAIN undelivered events held already, the oldest one (the smallest
-- entry id of all streams) is dropped for it and counted (a dropped one that was being sent still goes out:
-- its acknowledgement takes it off the count again, wh_ack.lua).
local function wh_emit(typ, key, ts, ...)
  if not WH_TYPES[typ] then return end
  if not wh_lens then
    wh_lens = {total = 0}
    for s = 0, WH_SHARDS - 1 do
      wh_lens[s] = redis.call('XLEN', WHP .. s)
      wh_lens.total = wh_lens.total + wh_lens[s]
    end
  end
  local shard = wh_shard(key)
  if wh_lens.total >= WH_RETAIN then
    local victim, oldest = nil, nil
    for s = 0, WH_SHARDS - 1 do
      if wh_lens[s] > 0 then
        local first = redis.call('XRANGE', WHP .. s, '-', '+', 'COUNT', 1)[1][1]
        local dash = string.find(first, '-', 1, true)
        local at = {tonumber(string.sub(first, 1, dash - 1)),
          tonumber(string.sub(first, dash + 1))}
        if not oldest or at[1] < oldest[1] or (at[1] == oldest[1] and at[2] < oldest[2]) then
          victim, oldest = s, at
        end
      end
    end
    wh_lens[victim] = wh_lens[victim] - 1
    redis.call('XTRIM', WHP .. victim, 'MAXLEN', wh_lens[victim])
    redis.call('INCR', WHP .. 'dropped')
  else
    wh_lens.total = wh_lens.total + 1
  end
  wh_lens[shard] = wh_lens[shard] + 1
  if wh_now then ts = string.format('%.3f', wh_now) end
  redis.call('XADD', WHP .. shard, '*', 't', typ, 'k', key, 'ts', ts, ...)
end

-- user.online / user.updated / user.offline: the user as a PRESENCE_DIFF shows them.
local function wh_user(typ, uid, ts, st, md, ls, lc)
  wh_emit(typ, 'u:' .. uid, ts, 'u', uid, 's', st, 'm', md, 'l', ls, 'c', lc)
end

-- A user became a member of a room (rec: 'connections \t metadata'); first: it is occupied.
local function wh_joined(room, uid, ts, st, lc, md, first)
  if first then wh_emit('room.occupied', 'r:' .. room, ts, 'r', room) end
  wh_emit('room.joined', 'u:' .. uid, ts, 'r', room, 'u', uid, 's', st, 'm', md, 'c', lc)
end

-- A user's membership ended at ts; old: what members saw of them ('connections \t
-- metadata'); last: the room is empty now.
local function wh_left(room, uid, ts, old, last)
  local tab = string.find(old, '\t', 1, true)
  local st = redis.call('HGET', 'presence:u:' .. uid, 'st') or 'offline'
  wh_emit('room.left', 'u:' .. uid, ts, 'r', room, 'u', uid, 's', st,
    'm', string.sub(old, tab + 1), 'c', 0)
  if last then wh_emit('room.vacated', 'r:' .. room, ts, 'r', room) end
end
