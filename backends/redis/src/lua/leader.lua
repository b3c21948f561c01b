-- The current leader of an election. ARGV: ns, enc(name).
-- Returns {1, fence, value, ttl ms} or {0}.
local enc = ARGV[2]
local lk = k('election', enc)
local tok = redis.call('GET', lk)
if not tok or not alive(tok) then
  return { 0 }
end
local h = redis.call('HMGET', k('leader', enc), 'token', 'fence', 'value')
if h[1] ~= tok then
  return { 0 }
end
return { 1, tonumber(h[2]), h[3], redis.call('PTTL', lk) }
