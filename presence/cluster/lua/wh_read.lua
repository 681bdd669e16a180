-- Read held shards for delivery. ARGV: group, me, count, then pairs (shard, from): from '>'
-- reads new entries, an id reads this node's own pending entries after it (after a restart
-- or a takeover: they go first, in stream order).
-- Returns per shard read {shard, entries} (an entry: {id, fields}, fields false once
-- trimmed by the cap).
local group, me, count = ARGV[1], ARGV[2], ARGV[3]
local out = {}
for i = 4, #ARGV, 2 do
  local key = WHP .. ARGV[i]
  local ok, r = pcall(redis.call, 'XREADGROUP', 'GROUP', group, me, 'COUNT', count,
    'STREAMS', key, ARGV[i + 1])
  if not ok then
    redis.pcall('XGROUP', 'CREATE', key, group, '0', 'MKSTREAM')  -- Redis lost it
    r = false
  end
  out[#out + 1] = {ARGV[i], r and r[1][2] or {}}
end
return out
