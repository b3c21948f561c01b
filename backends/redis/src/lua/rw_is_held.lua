-- ARGV: ns, enc(name), member. Returns 1 if the member is granted.
if redis.call('HEXISTS', k('rwgrant', ARGV[2]), ARGV[3]) == 1 and alive(string.sub(ARGV[3], 2)) then
  return 1
end
return 0
