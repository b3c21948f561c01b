-- ARGV: ns, space, enc(name), token. Returns 1 if the token holds the lock.
local lk = k(ARGV[2], ARGV[3])
if redis.call('GET', lk) == ARGV[4] and alive(ARGV[4]) then
  return 1
end
return 0
