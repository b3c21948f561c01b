-- Release a read/write grant or withdraw a waiter. Idempotent.
-- ARGV: ns, enc(name), member. Returns 1 if a grant was released.
return rw_release(ARGV[2], ARGV[3])
