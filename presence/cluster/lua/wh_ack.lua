-- Events done (delivered to every endpoint, or dropped and counted by their node): off the
-- group's pending list and out of the stream. One trimmed by the cap meanwhile (XDEL finds
-- nothing) was counted as dropped when trimmed: that count is taken back, since its node
-- counted how it ended. ARGV: group, counted ('1': take back; '0': entries found trimmed
-- when read, never sent), then pairs (shard, id).
local group = ARGV[1]
for i = 3, #ARGV, 2 do
  local key = WHP .. ARGV[i]
  local ok, acked = pcall(redis.call, 'XACK', key, group, ARGV[i + 1])  -- no group: lost
  if ok and acked == 1
      and redis.call('XDEL', key, ARGV[i + 1]) == 0 and ARGV[2] == '1' then
    redis.call('DECR', WHP .. 'dropped')
  end
end
return 1
