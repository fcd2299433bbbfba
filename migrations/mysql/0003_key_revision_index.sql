-- Keys with their mod_revision (see migrations/sqlite/0004_key_revision_index.sql):
-- counts over a key range, now or at a past revision, read this index
-- instead of the clustered rows with their values.
CREATE INDEX koine_kv_key_revision ON koine_kv (k, mod_revision);
