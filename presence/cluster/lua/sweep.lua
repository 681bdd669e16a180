-- Find nodes whose liveness key expired and end their connections; whoever runs this first
-- for a dead node does its clean-up, exactly once (the node leaves P..'nodes' here).
-- ARGV: self, now, ttl, grace, sameName ('' or 'name#': earlier incarnations of this node,
-- dead by definition, are ended at once).
-- Returns {nodes alive, nodes ended, connections ended, users present cluster-wide}.
local self, now, ttl, grace, prefix = ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[5]
local nodes = redis.call('HGETALL', P .. 'nodes')
local alive, ended, conns = 0, 0, 0
for i = 1, #nodes, 2 do
  local node, seen = nodes[i], nodes[i + 1]
  if node == self then
    alive = alive + 1
  elseif (prefix ~= '' and string.sub(node, 1, #prefix) == prefix)
      or redis.call('EXISTS', P .. 'alive:' .. node) == 0 then
    -- its connections ended when it was last seen alive; the grace counts from then
    conns = conns + reap(node, now, ttl, grace, seen)
    redis.call('SET', P .. 'reaped:' .. node, '1', 'EX', 86400)
    ended = ended + 1
  else
    alive = alive + 1
  end
end
online_heal()
return {alive, ended, conns, redis.call('SCARD', P .. 'present')}
