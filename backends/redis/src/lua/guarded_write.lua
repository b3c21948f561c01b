-- Store a value if and only if a grant still stands, optionally releasing
-- it in the same step. ARGV: ns, space ('lock'|'election'|'readers'),
-- enc(name), token or reader member, enc(data key), value, release ('1'|'0').
-- Returns 1 if it applied, 0 if the grant is gone.
local space, enc, who, dk, value, release = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local ok
if space == 'readers' then
  ok = redis.call('HEXISTS', k('readers', enc), who) == 1 and alive(member_tok(who))
    and redis.call('GET', k('lock', enc)) == SHARED
else
  ok = redis.call('GET', k(space, enc)) == who and alive(who)
end
if not ok then
  return 0
end
redis.call('SET', k('data', dk), value)
if release == '1' then
  if space == 'readers' then
    reader_release(enc, who)
  else
    ex_release(space, enc, who)
  end
end
return 1
