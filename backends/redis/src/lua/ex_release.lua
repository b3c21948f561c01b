-- Release an exclusive lock or withdraw a waiter. Idempotent.
-- ARGV: ns, space, enc(name), token. Returns 1 if a grant was released.
return ex_release(ARGV[2], ARGV[3], ARGV[4])
