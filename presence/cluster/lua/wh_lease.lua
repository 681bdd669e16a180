-- A delivering node's beat: renew the shard leases it holds, give up those it was asked to
-- (idle ones past its fair share), take free ones up to its fair share (the shards divided
-- by the live nodes, rounded up), starting at its own offset so nodes spread.
-- ARGV: me, ttl in ms, group, offset (-1: take none), then the shards to give up.
-- Returns {dropped events to count (taken: each is counted by one node), backlog, live
-- nodes, the shards held...}.
local me, ttl, group, offset = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4])
local give = {}
for i = 5, #ARGV do give[tonumber(ARGV[i])] = true end
local held, out = 0, {}
for s = 0, WH_SHARDS - 1 do
  local key = WHP .. 'lease:' .. s
  if redis.call('GET', key) == me then
    if give[s] then
      redis.call('DEL', key)
    else
      redis.call('PEXPIRE', key, ttl)
      held = held + 1
      out[#out + 1] = s
    end
  end
end
local nodes = math.max(1, redis.call('HLEN', 'presence:nodes'))
local want = math.ceil(WH_SHARDS / nodes)
if offset < 0 then want = 0 end
for i = 0, WH_SHARDS - 1 do
  if held >= want then break end
  local s = (offset + i) % WH_SHARDS
  if not give[s] and redis.call('SET', WHP .. 'lease:' .. s, me, 'NX', 'PX', ttl) then
    redis.pcall('XGROUP', 'CREATE', WHP .. s, group, '0', 'MKSTREAM')  -- or it exists
    held = held + 1
    out[#out + 1] = s
  end
end
local backlog = 0
for s = 0, WH_SHARDS - 1 do backlog = backlog + redis.call('XLEN', WHP .. s) end
local dropped = tonumber(redis.call('GET', WHP .. 'dropped') or '0')
if dropped > 0 then redis.call('DECRBY', WHP .. 'dropped', dropped) else dropped = 0 end
table.insert(out, 1, nodes)
table.insert(out, 1, backlog)
table.insert(out, 1, dropped)
return out
