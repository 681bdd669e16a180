-- The index of present users, for GET /presence/online: prepended to every script before
-- _rooms.lua and _common.lua (whose settle and go_offline call online_add/online_remove
-- wherever a user joins or leaves P..'present', in the same atomic step).
--
-- Keys (OP = 'presence:'):
--   OP..'online'   zset, every score 0: the members of OP..'present', so that
--                  ZRANGEBYLEX pages through them in userId (byte) order
local OP = 'presence:'

local function online_add(uid)
  redis.call('ZADD', OP .. 'online', 0, uid)
end

local function online_remove(uid)
  redis.call('ZREM', OP .. 'online', uid)
end

-- The index is rebuilt from OP..'present' when their sizes differ: a Redis that an older
-- version filled, or a node of an older version that ran meanwhile.
local function online_heal()
  local present = OP .. 'present'
  if redis.call('ZCARD', OP .. 'online') == redis.call('SCARD', present) then return 0 end
  redis.call('DEL', OP .. 'online')
  local users = redis.call('SMEMBERS', present)
  for i = 1, #users do online_add(users[i]) end
  return #users
end
