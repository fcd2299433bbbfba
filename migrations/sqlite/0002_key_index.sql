-- A narrow index on the keys alone: COUNT(*) over a key range (every
-- paginated list asks for it) reads this instead of the values.
CREATE INDEX koine_kv_keys ON koine_kv (k);
