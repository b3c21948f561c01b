-- Leave a group. Idempotent. ARGV: ns, enc(group), enc(member), token.
return member_leave(ARGV[2] .. ':' .. ARGV[3], ARGV[4])
