-- ARGV: ns, enc(name), reader member ('r' .. token). Returns 1 if the
-- reader is granted and the lock key still carries the SHARED mark.
local enc, m = ARGV[2], ARGV[3]
if redis.call('HEXISTS', k('readers', enc), m) == 1 and alive(member_tok(m))
  and redis.call('GET', k('lock', enc)) == SHARED then
  return 1
end
return 0
