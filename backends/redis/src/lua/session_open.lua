-- Open a session: its liveness key, and its held hash with the placeholder
-- field HELD_MARK and the same TTL, so that the hash exists (and outlives
-- the session key, keep-alive extending both) for the session's whole
-- life and a grant records itself with one HSET. ARGV: ns, session id,
-- ttl ms. Returns 1 when opened, 0 when the id is taken.
local sid, ttl = ARGV[2], ARGV[3]
if not redis.call('SET', k('session', sid), '1', 'PX', ttl, 'NX') then
  return 0
end
local hk = k('held', sid)
redis.call('HSET', hk, HELD_MARK, '1')
redis.call('PEXPIRE', hk, ttl)
return 1
