-- A room as its members see it. ARGV: room. Returns the version, then 4 strings per member:
-- uid, status, connections, metadata JSON.
local room = ARGV[1]
local out = {tostring(room_version(room))}
local all = redis.call('HGETALL', RP .. 'rm:' .. room)
for i = 1, #all, 2 do
  local uid, rec = all[i], all[i + 1]
  local tab = string.find(rec, '\t', 1, true)
  out[#out + 1] = uid
  out[#out + 1] = redis.call('HGET', RP .. 'u:' .. uid, 'st') or 'offline'
  out[#out + 1] = string.sub(rec, 1, tab - 1)
  out[#out + 1] = string.sub(rec, tab + 1)
end
return out
