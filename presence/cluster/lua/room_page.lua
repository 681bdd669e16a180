-- One page of a room's members in userId order (byte order, which is code point order for
-- UTF-8), for GET /rooms/{room}. ARGV: room, limit, after ('' for the first page: a userId
-- is never empty). Returns the member count, the cursor of the next page ('' when this is
-- the last), then 4 strings per member as room_snapshot: uid, status, connections, metadata.
local room, limit, after = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local key = RP .. 'rm:' .. room
local ids = redis.call('HKEYS', key)
table.sort(ids)
local first = 1
if after ~= '' then
  local lo, hi = 1, #ids + 1 -- the first id greater than after
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    if ids[mid] <= after then lo = mid + 1 else hi = mid end
  end
  first = lo
end
local last = math.min(#ids, first + limit - 1)
local out = {tostring(#ids), ''}
if last < #ids then out[2] = ids[last] end
for i = first, last do
  local uid = ids[i]
  local rec = redis.call('HGET', key, uid)
  local tab = string.find(rec, '\t', 1, true)
  out[#out + 1] = uid
  out[#out + 1] = redis.call('HGET', RP .. 'u:' .. uid, 'st') or 'offline'
  out[#out + 1] = string.sub(rec, 1, tab - 1)
  out[#out + 1] = string.sub(rec, tab + 1)
end
return out
