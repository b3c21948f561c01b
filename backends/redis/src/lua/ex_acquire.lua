-- Acquire an exclusive lock (a mutex, which is also the write side of the
-- name's read/write lock, or an election) for a token, in FIFO order.
-- ARGV: ns, space ('lock'|'election'), enc(name), token, ttl ms,
--       wait ('1'|'0'), value (elections: the candidate's value).
-- Returns {1, fence} when granted, {0, ms} when not (ms: the remaining TTL
-- of what blocks, for the fallback re-check), {-1} when the session is gone.
local space, enc, tok, ttl, wait = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local sp = SPACES[space]
local lk, qk = k(space, enc), k(sp.queue, enc)
-- The session key and the lock key in one command (both are strings).
local got = redis.call('MGET', k('session', sid_of(tok)), lk)
if not got[1] then
  return { -1 }
end
local holder = got[2]
if holder == tok then
  -- Granted by an earlier call whose reply was lost: the newest fence is ours.
  return { 1, tonumber(redis.call('GET', k(sp.fence, enc))) }
end

local function grant(queued)
  local fence = ex_grant(space, enc, tok, ttl, queued)
  if sp.leader then
    local lead = k(sp.leader, enc)
    redis.call('DEL', lead)
    redis.call('HSET', lead, 'token', tok, 'fence', string.format('%d', fence), 'value', ARGV[7])
    redis.call('PEXPIRE', lead, ttl)
    redis.call('PUBLISH', k(sp.chan, enc), '!')
  end
  return { 1, fence }
end

if not holder then
  -- The uncontended path: no holder, nobody queued, and (one name, one
  -- lock) no readers hash: grant at once, nothing else to read.
  local others
  if space == 'lock' then
    others = redis.call('EXISTS', qk, k('readers', enc))
  else
    others = redis.call('EXISTS', qk)
  end
  if others == 0 then
    return grant(false)
  end
end
if space == 'lock' then
  -- One name, one lock: quorate readers (the SHARED mark) block a mutex
  -- or writer as a holder does; dead grants are voided.
  holder = lock_state(enc, holder or false)
elseif holder and alive(holder) == false then
  -- The holder's session is gone (revoked or expired): the grant is void.
  redis.call('DEL', lk)
  holder = false
end
if not holder then
  local head = queue_head(qk)
  if head == nil or head == tok then
    return grant(head == tok)
  end
  -- The lock is free (a holder's key expired, or a foreign holder released
  -- without a word) but an earlier waiter goes first: hand it over now.
  ex_wake(space, enc)
end
local blocker = redis.call('PTTL', lk)
if blocker == -2 then
  local head, p = queue_head(qk)
  blocker = head and p or -1
end
if wait == '1' then
  append(qk, tok, ttl)
  held(tok, qk, tok)
end
return { 0, blocker }
