-- Keys with their mod_revision (see migrations/sqlite/0004_key_revision_index.sql):
-- counts over a key range, now or at a past revision, scan this index only.
CREATE INDEX koine_kv_key_revision ON koine_kv (k, mod_revision);
