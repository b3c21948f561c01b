-- List a group's members, first removing (and announcing) stale ones whose
-- TTL key is gone. ARGV: ns, enc(group).
-- Returns {version, min member TTL ms or -1, enc(id), caps, incarnation
-- or -1 (a member joined before incarnations were kept), ...}.
local g = ARGV[2]
local gk = k('group', g)
local all = redis.call('HGETALL', gk)
local incs = {}
local ia = redis.call('HGETALL', k('ginc', g))
for i = 1, #ia, 2 do
  incs[ia[i]] = tonumber(ia[i + 1])
end
local out = { 0, -1 }
local minp = -1
for i = 1, #all, 2 do
  local f, caps = all[i], all[i + 1]
  local mk = k('member', g .. ':' .. f)
  local cur = redis.call('GET', mk)
  if not cur or alive(cur) == false then
    redis.call('DEL', mk)
    redis.call('HDEL', gk, f)
    member_left(g, f)
  else
    table.insert(out, f)
    table.insert(out, caps)
    table.insert(out, incs[f] or -1)
    local p = redis.call('PTTL', mk)
    if p >= 0 and (minp < 0 or p < minp) then
      minp = p
    end
  end
end
out[1] = tonumber(redis.call('GET', k('gver', g)) or 0)
out[2] = minp
return out
