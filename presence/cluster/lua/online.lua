-- GET /presence/online: a page of the present users (offline grace included) in userId
-- byte order. ARGV: start (a ZRANGEBYLEX min: '-', '[prefix' or '(after'), prefix ('' for
-- all), limit. Returns the next cursor ('' on the last page), then 5 strings per user:
-- uid, status, connections, lastSeen ('' for none), metadata JSON.
online_heal()
local prefix, limit = ARGV[2], tonumber(ARGV[3])
local stop = '+'
if prefix ~= '' then stop = '[' .. prefix .. '\255' end  -- no UTF-8 byte is 0xFF
local ids = redis.call('ZRANGEBYLEX', OP .. 'online', ARGV[1], stop, 'LIMIT', 0, limit + 1)
local out = {''}
if #ids > limit then out[1] = ids[limit] end
for i = 1, math.min(#ids, limit) do
  local uid = ids[i]
  local r = redis.call('HMGET', P .. 'u:' .. uid, 'st', 'ls', 'md')
  out[#out + 1] = uid
  out[#out + 1] = r[1] or 'offline'
  out[#out + 1] = tostring(redis.call('HLEN', P .. 'uc:' .. uid))
  out[#out + 1] = r[2] or ''
  out[#out + 1] = r[3] or '{}'
end
return out
