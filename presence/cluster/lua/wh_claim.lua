-- A shard just taken (its lease is the ownership): the entries other consumers were given
-- and never acknowledged become this node's, to deliver before anything new.
-- ARGV: shard, group, me, start id ('-' first), count.
-- Returns the id to continue from, or '' once every pending entry is this node's.
local key = WHP .. ARGV[1]
local ok, pending = pcall(redis.call, 'XPENDING', key, ARGV[2], ARGV[4], '+', ARGV[5])
if not ok then
  redis.pcall('XGROUP', 'CREATE', key, ARGV[2], '0', 'MKSTREAM')
  return ''
end
local ids = {}
for i = 1, #pending do
  if pending[i][2] ~= ARGV[3] then ids[#ids + 1] = pending[i][1] end
end
if #ids > 0 then
  ids[#ids + 1] = 'JUSTID'
  redis.call('XCLAIM', key, ARGV[2], ARGV[3], 0, unpack(ids))
end
if #pending < tonumber(ARGV[5]) then return '' end
local last = pending[#pending][1]
local dash = string.find(last, '-', 1, true)
return string.sub(last, 1, dash) .. (tonumber(string.sub(last, dash + 1)) + 1)
