-- Replace a member's capabilities. ARGV: ns, enc(group), enc(member),
-- token, capabilities JSON. Returns 1, or 0 when not a member any more.
local g, f, tok, caps = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
if redis.call('GET', k('member', g .. ':' .. f)) ~= tok or not alive(tok) then
  return 0
end
redis.call('HSET', k('group', g), f, caps)
local inc = redis.call('HGET', k('ginc', g), f)
group_event(g, { e = 'updated', id = f, caps = caps, inc = inc and tonumber(inc) or nil })
return 1
