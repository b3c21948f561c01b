-- Release a read grant or withdraw a waiting reader. Idempotent.
-- ARGV: ns, enc(name), reader member. Returns 1 if a grant was released.
return reader_release(ARGV[2], ARGV[3])
