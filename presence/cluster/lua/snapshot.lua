-- Users as watchers see them. ARGV: uids. Returns 5 strings per uid:
-- version, status, connections, lastSeen ('' for none), metadata JSON.
local out = {}
for i = 1, #ARGV do
  local uid = ARGV[i]
  local r = redis.call('HMGET', P .. 'u:' .. uid, 'v', 'st', 'ls', 'md')
  out[#out + 1] = r[1] or '0'
  out[#out + 1] = r[2] or 'offline'
  out[#out + 1] = tostring(redis.call('HLEN', P .. 'uc:' .. uid))
  out[#out + 1] = r[3] or ''
  out[#out + 1] = r[4] or '{}'
end
return out
