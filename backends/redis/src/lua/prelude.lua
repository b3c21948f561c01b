-- quorate-redis: helpers shared by every script (this file is prepended to
-- each one). Every script receives the namespace as ARGV[1] and derives its
-- keys from it, so the layout lives in one place (see keys.rs for the list).
-- Scripts therefore touch keys not passed in KEYS: fine on a single Redis
-- (and behind Sentinel), not meant for Redis Cluster. NS is set from
-- ARGV[1] by each entry point (scripts.rs).
local NS

local function k(kind, rest)
  return NS .. ':' .. kind .. ':' .. rest
end

-- The session id of a quorate token `quorate:<sid>:<n>`; nil for any other
-- value (a redis-py Lock's token of whatever shape, an older quorate's
-- `<sid>:<n>`): quorate never voids, deletes or takes over a value it did
-- not write; such a value lives by its key's own TTL.
local function sid_of(tok)
  return string.match(tok, '^quorate:(%x+):%d+$')
end

-- true/false for a quorate token whose session key exists or not; nil for
-- a foreign token, whose liveness is the lock key's own TTL.
local function alive(tok)
  local sid = sid_of(tok)
  if not sid then
    return nil
  end
  return redis.call('EXISTS', k('session', sid)) == 1
end

local function session_exists(tok)
  local sid = sid_of(tok)
  return sid ~= nil and redis.call('EXISTS', k('session', sid)) == 1
end

-- Give `key` a TTL of at least `ttl` ms (a key without TTL gets one).
local function extend(key, ttl)
  local p = redis.call('PTTL', key)
  if p ~= -2 and tonumber(ttl) > 0 and p < tonumber(ttl) then
    redis.call('PEXPIRE', key, ttl)
  end
end

-- The session's held hash records everything the session owns or waits
-- for: field = the key holding the entry, value = the token (or reader
-- member 'r' .. token). Keep-alive extends them; revoke releases them.
-- The hash is created with the session (session_open.lua: a placeholder
-- field HELD_MARK, never removed, and the session's TTL) and keep-alive
-- extends it with the session key, so it outlives the session key without
-- a PEXPIRE per grant.
local HELD_MARK = '.'

local function held(tok, field, desc)
  redis.call('HSET', k('held', sid_of(tok)), field, desc)
end

local function unheld(tok, field, desc)
  local hk = k('held', sid_of(tok))
  if redis.call('HGET', hk, field) == desc then
    redis.call('HDEL', hk, field)
  end
end

-- The kind and the rest of a key of this namespace (`<ns>:<kind>:<rest>`).
local function split_key(key)
  return string.match(string.sub(key, #NS + 2), '^([^:]+):(.*)$')
end

-- The next fencing token of a counter: the counter plus one, floored at
-- the server clock in microseconds, so tokens keep increasing even after a
-- restart that lost the counter, or a failover to a replica that missed
-- the last grants (as long as the server clock does not go back). Two
-- commands (TIME, SET … GET) unless the counter is ahead of the clock (a
-- burst, or a clock that went back): then a second SET.
local function next_fence(fk)
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
  local old = tonumber(redis.call('SET', fk, string.format('%d', now), 'GET'))
  if old and old >= now then
    now = old + 1
    redis.call('SET', fk, string.format('%d', now))
  end
  return now
end

-- Exclusive locks: mutexes and elections. The lock key is a plain string
-- holding the owner token with a PX TTL (redis-py's Lock layout).
local SPACES = {
  lock = { queue = 'queue', fence = 'fence' },
  election = { queue = 'equeue', fence = 'efence', chan = 'chan:election', leader = 'leader' },
}

-- Queue `member` at the tail of `qk` (an entry already there keeps its
-- place), and keep the queue at least `ttl` ms.
local function append(qk, member, ttl)
  local last = redis.call('ZRANGE', qk, -1, -1, 'WITHSCORES')
  if last[2] then
    redis.call('ZADD', qk, 'NX', tonumber(last[2]) + 1, member)
    extend(qk, ttl)
  else
    redis.call('ZADD', qk, 1, member)
    redis.call('PEXPIRE', qk, ttl)
  end
end

-- One name, one lock: the mutex of a name is the write side of its
-- read/write lock. Its queue holds exclusive waiters as their token and
-- readers as 'r' .. token; the token of a queue member:
local function member_tok(m)
  if string.sub(m, 1, 1) == 'r' then
    return string.sub(m, 2)
  end
  return m
end

-- Tell the waiter `m` (a token or reader member) `msg` on its own
-- session's channel, which its coordinator is subscribed to for as long
-- as the session lives: a wake-up reaches that one subscriber, not every
-- waiter of the name.
local function tell(m, msg)
  redis.call('PUBLISH', k('chan:session', sid_of(member_tok(m))), msg)
end

-- The value of a lock key while quorate readers hold the lock (granted
-- readers are in `<ns>:readers:<enc>`): not a token, so no session owns it,
-- and a redis-py Lock's `SET NX` fails on it (readers exclude it).
local SHARED = 'quorate:shared'

-- The first waiter of a queue whose session lives, and the remaining TTL
-- of that session (ms, at least 1: PX/PEXPIRE need 1); dead ones are
-- removed. nil when nobody lives in it.
local function queue_head(qk)
  while true do
    local h = redis.call('ZRANGE', qk, 0, 0)[1]
    if not h then
      return nil
    end
    local sid = sid_of(member_tok(h))
    if sid then
      local p = redis.call('PTTL', k('session', sid))
      if p ~= -2 then
        if p < 1 then
          p = 1
        end
        return h, p
      end
    end
    redis.call('ZREM', qk, h)
  end
end

-- Grant an exclusive lock to `tok`: the lock key holds it with a PX TTL,
-- it leaves the queue (if `queued`), its session's held hash records it.
-- Returns the fence.
local function ex_grant(space, enc, tok, ttl, queued)
  local sp = SPACES[space]
  local lk = k(space, enc)
  redis.call('SET', lk, tok, 'PX', ttl)
  if queued then
    local qk = k(sp.queue, enc)
    redis.call('ZREM', qk, tok)
    unheld(tok, qk, tok)
  end
  held(tok, lk, tok)
  return next_fence(k(sp.fence, enc))
end

-- The number of live granted readers of lock `enc` (dead ones removed).
-- With none left, the lock key's SHARED mark goes too.
local function readers_live(enc)
  local rk = k('readers', enc)
  local n = 0
  for _, m in ipairs(redis.call('HKEYS', rk)) do
    if alive(member_tok(m)) then
      n = n + 1
    else
      redis.call('HDEL', rk, m)
    end
  end
  if n == 0 and redis.call('GET', k('lock', enc)) == SHARED then
    redis.call('DEL', k('lock', enc))
  end
  return n
end

-- The state of lock `enc` once dead grants are voided: false (free),
-- SHARED (live quorate readers hold it), or the exclusive holder's value
-- (a live quorate token, or a foreign value living by its TTL). A lock
-- key gone while live readers remain (expired early) gets its mark back,
-- so that no exclusive holder is granted over them. `v`: the lock key's
-- value if the caller read it already in this script (false: no key).
local function lock_state(enc, v)
  local lk = k('lock', enc)
  if v == nil then
    v = redis.call('GET', lk)
  end
  if v and v ~= SHARED and alive(v) == false then
    redis.call('DEL', lk)
    v = false
  end
  if v and v ~= SHARED then
    return v
  end
  if readers_live(enc) == 0 then
    return false
  end
  if not v then
    local p = redis.call('PTTL', k('readers', enc))
    if p < 1 then
      p = 1
    end
    redis.call('SET', lk, SHARED, 'PX', p)
  end
  return SHARED
end

-- Grant reader `m` ('r' .. token) of lock `enc`: recorded with its fence
-- (the name's one counter), the lock key marked SHARED, out of the queue.
-- `fresh`: the caller knows that neither the readers hash nor the queue
-- exists (the uncontended path), so there is nothing to extend or dequeue.
local function reader_grant(enc, m, ttl, fresh)
  local lk, rk, qk = k('lock', enc), k('readers', enc), k('queue', enc)
  local tok = member_tok(m)
  local fence = next_fence(k('fence', enc))
  redis.call('HSET', rk, m, string.format('%d', fence))
  if fresh then
    redis.call('PEXPIRE', rk, ttl)
    redis.call('SET', lk, SHARED, 'PX', ttl)
  else
    extend(rk, ttl)
    if redis.call('GET', lk) == SHARED then
      extend(lk, ttl)
    else
      redis.call('SET', lk, SHARED, 'PX', ttl)
    end
    redis.call('ZREM', qk, m)
    unheld(tok, qk, m)
  end
  held(tok, rk, m)
  return fence
end

-- Grant, on their behalf, what lock `enc`'s queue may now be granted, in
-- order: the readers at its head while it is free or shared, or its first
-- exclusive waiter once it is free; tell each `<member>=<fence>` on its
-- session's channel. `free`: the caller has just released the exclusive
-- grant (no reader can hold then), so the lock's state need not be read.
local function lock_wake(enc, free)
  local state = false
  if not free then
    state = lock_state(enc)
    if state and state ~= SHARED then
      return
    end
  end
  local qk = k('queue', enc)
  while true do
    local h, p = queue_head(qk)
    if not h then
      break
    end
    if string.sub(h, 1, 1) == 'r' then
      local fence = reader_grant(enc, h, p)
      state = SHARED
      tell(h, h .. '=' .. string.format('%d', fence))
    else
      if not state then
        local fence = ex_grant('lock', enc, h, p, true)
        tell(h, h .. '=' .. string.format('%d', fence))
      end
      break
    end
  end
end

-- Withdraw reader `m` of lock `enc`, granted or waiting; idempotent.
-- Returns 1 if a grant was released. A granted reader is not queued
-- (granting dequeues it); the last reader to leave, with nobody queued,
-- removes the SHARED mark without reading the lock's whole state.
local function reader_release(enc, m)
  local lk, rk, qk = k('lock', enc), k('readers', enc), k('queue', enc)
  local tok = member_tok(m)
  if redis.call('HDEL', rk, m) == 1 then
    unheld(tok, rk, m)
    if redis.call('EXISTS', qk) == 0 then
      if redis.call('EXISTS', rk) == 0 and redis.call('GET', lk) == SHARED then
        redis.call('DEL', lk)
      end
    else
      lock_wake(enc)
    end
    return 1
  end
  unheld(tok, rk, m)
  local queued = redis.call('ZREM', qk, m)
  unheld(tok, qk, m)
  if queued == 1 then
    lock_wake(enc)
  end
  return 0
end

-- If the lock is free, hand it to the first live waiter. A mutex is granted
-- here, on the waiter's behalf (its session's TTL), and the payload
-- `<token>=<fence>` tells it so; an election candidate (whose value this
-- script does not have) is only told to try again (payload `<token>`).
-- `free`: the caller has just released the holder's grant.
local function ex_wake(space, enc, free)
  local sp = SPACES[space]
  if space == 'lock' then
    lock_wake(enc, free)
    return
  end
  if not free and redis.call('EXISTS', k(space, enc)) == 1 then
    return
  end
  local head, p = queue_head(k(sp.queue, enc))
  if not head then
    return
  end
  if sp.leader then
    tell(head, head)
  else
    local fence = ex_grant(space, enc, head, p, true)
    tell(head, head .. '=' .. string.format('%d', fence))
  end
end

-- Release a grant or withdraw a waiter of token `tok`; idempotent, and it
-- touches nothing of another token. Returns 1 if a grant was released.
-- Releasing a grant: the token is not queued (granting dequeued it) and
-- the session's held hash maps the key to it (no other grant of the key
-- since), so with nobody queued it is GET, DEL, HDEL and one EXISTS.
local function ex_release(space, enc, tok)
  local sp = SPACES[space]
  local lk, qk = k(space, enc), k(sp.queue, enc)
  if redis.call('GET', lk) == tok then
    redis.call('DEL', lk)
    if sp.leader then
      local lead = k(sp.leader, enc)
      if redis.call('HGET', lead, 'token') == tok then
        redis.call('DEL', lead)
      end
      redis.call('PUBLISH', k(sp.chan, enc), '!')
    end
    redis.call('HDEL', k('held', sid_of(tok)), lk)
    if redis.call('EXISTS', qk) == 1 then
      ex_wake(space, enc, true)
    end
    return 1
  end
  unheld(tok, lk, tok)
  local queued = redis.call('ZREM', qk, tok)
  unheld(tok, qk, tok)
  if queued == 1 then
    ex_wake(space, enc)
  end
  return 0
end

-- Groups: a hash per group (encoded member id -> capabilities JSON), a TTL
-- key per member holding its token, a hash of the members' incarnations,
-- and a version counter; every change bumps the version and is published
-- with it.
-- Bump the group's version and publish `ev` with it. A join's version is
-- the new membership's incarnation (`inc`): kept in the hash
-- `<ns>:ginc:<g>` while the member stays, sent with its updates and
-- listings, so a watcher that re-lists can tell a member that left and
-- joined again from one that did not. Returns the version.
local function group_event(g, ev)
  ev.v = redis.call('INCR', k('gver', g))
  if ev.e == 'joined' then
    ev.inc = ev.v
    redis.call('HSET', k('ginc', g), ev.id, ev.v)
  end
  redis.call('PUBLISH', k('chan:group', g), cjson.encode(ev))
  return ev.v
end

-- Member f of group g is gone from the group hash: forget its incarnation
-- and announce it.
local function member_left(g, f)
  redis.call('HDEL', k('ginc', g), f)
  group_event(g, { e = 'left', id = f })
end

local function member_leave(gf, tok)
  local g, f = string.match(gf, '^([^:]+):(.*)$')
  local mk = k('member', gf)
  local r = 0
  if redis.call('GET', mk) == tok then
    redis.call('DEL', mk)
    if redis.call('HDEL', k('group', g), f) == 1 then
      member_left(g, f)
    end
    r = 1
  end
  unheld(tok, mk, tok)
  return r
end

-- Release whatever a held-hash entry describes.
local function release_entry(field, desc)
  local kind, rest = split_key(field)
  if kind == 'readers' or (kind == 'queue' and string.sub(desc, 1, 1) == 'r') then
    reader_release(rest, desc)
  elseif kind == 'lock' or kind == 'queue' then
    ex_release('lock', rest, desc)
  elseif kind == 'election' or kind == 'equeue' then
    ex_release('election', rest, desc)
  elseif kind == 'member' then
    member_leave(rest, desc)
  end
end

-- ---- script body ----
