-- Keys with their mod_revision, narrow: COUNT(*) over a key range at a past
-- revision (every page of a paginated list pinned to its first revision asks
-- for it, with `mod_revision <= R`) reads this index instead of the values.
-- It serves the plain counts too, so the keys-only index goes.
CREATE INDEX koine_kv_key_revision ON koine_kv (k, mod_revision);
DROP INDEX koine_kv_keys;
