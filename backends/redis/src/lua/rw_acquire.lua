-- Acquire the read side of lock `enc` (one name, one lock: the write side
-- is the mutex, ex_acquire.lua), FIFO: granted while the lock key is free
-- or SHARED and no exclusive waiter is ahead in the name's one queue (so a
-- waiting writer blocks later readers). ARGV: ns, enc(name), member
-- ('r' .. token), ttl ms, wait ('1'|'0'). Returns as ex_acquire.
local enc, m, ttl, wait = ARGV[2], ARGV[3], ARGV[4], ARGV[5]
local tok = member_tok(m)
local lk, qk, rk = k('lock', enc), k('queue', enc), k('readers', enc)
-- The session key and the lock key in one command (both are strings).
local got = redis.call('MGET', k('session', sid_of(tok)), lk)
if not got[1] then
  return { -1 }
end
if not got[2] and redis.call('EXISTS', qk, rk) == 0 then
  -- The uncontended path: no holder, no readers, nobody queued.
  return { 1, reader_grant(enc, m, ttl, true) }
end
local f = redis.call('HGET', rk, m)
if f then
  -- Granted by an earlier call (or on our behalf) whose reply was lost.
  return { 1, tonumber(f) }
end
local state = lock_state(enc, got[2] or false)
local blocked = state and state ~= SHARED
if not blocked then
  -- An exclusive waiter ahead of us (anywhere, if we are not queued yet).
  for _, x in ipairs(redis.call('ZRANGE', qk, 0, -1)) do
    if x == m then
      break
    end
    if string.sub(x, 1, 1) ~= 'r' then
      if alive(x) then
        blocked = true
        break
      end
      redis.call('ZREM', qk, x)
    end
  end
end
if not blocked then
  local fence = reader_grant(enc, m, ttl)
  if redis.call('EXISTS', qk) == 1 then
    -- Readers queued behind us may go too.
    lock_wake(enc)
  end
  return { 1, fence }
end
if wait == '1' then
  append(qk, m, ttl)
  held(tok, qk, m)
end
if not state then
  -- Free, but an exclusive waiter goes first: hand it over now.
  lock_wake(enc)
end
local blocker = redis.call('PTTL', lk)
if blocker == -2 then
  local head, p = queue_head(qk)
  blocker = head and p or -1
end
return { 0, blocker }
