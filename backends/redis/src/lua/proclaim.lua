-- Publish a new value while leader. ARGV: ns, enc(name), token, value.
-- Returns 1, or 0 when no longer leader.
local enc, tok = ARGV[2], ARGV[3]
if redis.call('GET', k('election', enc)) ~= tok or not alive(tok) then
  return 0
end
redis.call('HSET', k('leader', enc), 'value', ARGV[4])
redis.call('PUBLISH', k('chan:election', enc), '!')
return 1
