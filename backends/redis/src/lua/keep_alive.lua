-- Keep a session alive: extend its key and everything it holds, one batch
-- of the held hash per call, so that a session holding many keys never
-- blocks the server for long (each call runs a bounded number of commands).
-- ARGV: ns, session id, ttl ms, HSCAN cursor ('0' for the first call),
-- batch size.
-- The first call (cursor '0') extends the session key and the held hash;
-- the next calls only check that the session key still exists.
-- Returns {-1} if the session is gone, else {next cursor ('0' when the
-- whole hash was visited), field, value, ...} listing the entries found
-- lost (the key is gone or holds another token).
local sid, ttl, cursor, count = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local sk = k('session', sid)
local hk = k('held', sid)
if cursor == '0' then
  if redis.call('PEXPIRE', sk, ttl) == 0 then
    return { -1 }
  end
  redis.call('PEXPIRE', hk, ttl)
elseif redis.call('EXISTS', sk) == 0 then
  return { -1 }
end
local scan = redis.call('HSCAN', hk, cursor, 'COUNT', count)
local all = scan[2]
local out = { scan[1] }
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
return out
