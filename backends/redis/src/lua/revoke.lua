-- Revoke a session: delete its key and release everything it holds or
-- waits for. ARGV: ns, session id. Returns 1 if the session existed.
local sid = ARGV[2]
local existed = redis.call('DEL', k('session', sid))
local hk = k('held', sid)
local all = redis.call('HGETALL', hk)
for i = 1, #all, 2 do
  release_entry(all[i], all[i + 1])
end
redis.call('DEL', hk)
redis.call('PUBLISH', k('chan:session', sid), 'revoked')
return existed
