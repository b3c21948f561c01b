-- Acquire a read/write lock mode, FIFO: a writer only at the head of the
-- queue, a reader when no writer is ahead of it (so a waiting writer blocks
-- later readers). ARGV: ns, enc(name), member ('r'|'w' .. token), ttl ms,
-- wait ('1'|'0'). Returns as ex_acquire.
local enc, m, ttl, wait = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tok = string.sub(m, 2)
if not session_exists(tok) then
  return { -1 }
end
local qk, gk = k('rwlock', enc), k('rwgrant', enc)
local f = redis.call('HGET', gk, m)
if f then
  return { 1, tonumber(f) }
end
if not redis.call('ZSCORE', qk, m) then
  if wait ~= '1' then
    local _, writer, n = rw_scan(enc)
    local free
    if string.sub(m, 1, 1) == 'w' then
      free = n == 0
    else
      free = not writer
    end
    if not free then
      return { 0, 0 }
    end
  end
  append(qk, m)
end
extend(qk, ttl)
held(tok, qk, m, ttl)
for _, x in ipairs((rw_scan(enc))) do
  if x == m then
    local fence = next_fence(k('rwfence', enc))
    redis.call('HSET', gk, m, string.format('%d', fence))
    extend(gk, ttl)
    rw_wake(enc, m)
    return { 1, fence }
  end
end
-- Make sure whoever may be granted now knows it.
rw_wake(enc, m)
local head = redis.call('ZRANGE', qk, 0, 0)[1]
local blocker = -1
if head then
  blocker = redis.call('PTTL', k('session', sid_of(string.sub(head, 2))))
end
return { 0, blocker }
