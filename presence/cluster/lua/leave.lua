-- A graceful stop: the node's connections leave Redis at once (their users keep the
-- offline grace, so clients that reconnect to another node are never seen leaving).
-- ARGV: node, now, ttl, grace. Returns how many connections ended.
return reap(ARGV[1], tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4]), ARGV[2])
