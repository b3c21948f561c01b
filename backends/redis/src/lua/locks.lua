-- Coordinator::locks: a read-only snapshot of the locks ARGV[2..] (encoded
-- names), each as {enc, holder, fence, readers, waiters}, JSON-encoded.
-- Read-only: dead entries are skipped here, never removed. `holder` is the
-- exclusive holder's session id, or '' for a foreign holder (a redis-py
-- Lock: its token is not reported); `fence` is the name's counter, which is
-- the exclusive holder's fence (no other grant of the name can happen while
-- it holds). `readers` are [sid, fence] pairs, `waiters` [kind, sid] pairs
-- in queue order ('r' shared, 'x' exclusive).
local out = {}
for i = 2, #ARGV do
  local enc = ARGV[i]
  local e = { enc = enc, readers = {}, waiters = {} }
  local v = redis.call('GET', k('lock', enc))
  if v and v ~= SHARED then
    local a = alive(v)
    if a == true then
      e.holder = sid_of(v)
      e.fence = redis.call('GET', k('fence', enc))
    elseif a == nil then
      e.holder = ''
    end
  else
    local rs = redis.call('HGETALL', k('readers', enc))
    for j = 1, #rs, 2 do
      local tok = member_tok(rs[j])
      if alive(tok) then
        table.insert(e.readers, { sid_of(tok), rs[j + 1] })
      end
    end
  end
  for _, m in ipairs(redis.call('ZRANGE', k('queue', enc), 0, -1)) do
    local tok = member_tok(m)
    if alive(tok) then
      local kind = 'x'
      if string.sub(m, 1, 1) == 'r' then
        kind = 'r'
      end
      table.insert(e.waiters, { kind, sid_of(tok) })
    end
  end
  table.insert(out, e)
end
return cjson.encode(out)
