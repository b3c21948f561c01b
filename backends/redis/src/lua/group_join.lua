-- Join a group. ARGV: ns, enc(group), enc(member), token, capabilities
-- JSON, ttl ms. Returns 1 when joined, 0 when the id is taken by a live
-- member, -1 when the session is gone.
local g, f, tok, caps, ttl = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if not session_exists(tok) then
  return -1
end
local gk, mk = k('group', g), k('member', g .. ':' .. f)
local cur = redis.call('GET', mk)
if cur then
  if cur == tok then
    return 1
  end
  if alive(cur) ~= false then
    return 0
  end
  redis.call('DEL', mk)
end
if redis.call('HEXISTS', gk, f) == 1 then
  -- A stale entry whose member died: it leaves before the new one joins.
  redis.call('HDEL', gk, f)
  member_left(g, f)
end
redis.call('SET', mk, tok, 'PX', ttl)
redis.call('HSET', gk, f, caps)
held(tok, mk, tok)
group_event(g, { e = 'joined', id = f, caps = caps })
return 1
