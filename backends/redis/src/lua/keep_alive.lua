-- Keep a session alive: extend its key and everything it holds, in one
-- round trip. ARGV: ns, session id, ttl ms.
-- Returns {-1} if the session is gone, else {0, field, value, ...} listing
-- the entries found lost (the key is gone or holds another token).
local sid, ttl = ARGV[2], ARGV[3]
if redis.call('PEXPIRE', k('session', sid), ttl) == 0 then
  return { -1 }
end
local hk = k('held', sid)
local all = redis.call('HGETALL', hk)
local out = { 0 }
for i = 1, #all, 2 do
  local field, desc = all[i], all[i + 1]
  local kind, rest = split_key(field)
  local ok = true
  if kind == 'lock' or kind == 'election' or kind == 'member' then
    ok = redis.call('GET', field) == desc
    if ok then
      redis.call('PEXPIRE', field, ttl)
      if kind == 'election' then
        redis.call('PEXPIRE', k('leader', rest), ttl)
      end
    end
  elseif kind == 'readers' then
    -- A granted reader: its entry, and the lock key's SHARED mark.
    ok = redis.call('HEXISTS', field, desc) == 1
      and redis.call('GET', k('lock', rest)) == SHARED
    if ok then
      extend(field, ttl)
      extend(k('lock', rest), ttl)
    end
  elseif kind == 'queue' or kind == 'equeue' then
    ok = redis.call('ZSCORE', field, desc) ~= false
    if ok then
      extend(field, ttl)
    end
  end
  if not ok then
    redis.call('HDEL', hk, field)
    table.insert(out, field)
    table.insert(out, desc)
  end
end
redis.call('PEXPIRE', hk, ttl)
return out
