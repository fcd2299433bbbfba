-- The log is the truth; each instance's key index is in memory (see
-- migrations/sqlite/0007_log_is_the_truth.sql). With no index on the key,
-- it needs no length limit either: a key is as long as a request may
-- carry.
DROP TABLE koine_kv;
ALTER TABLE koine_log DROP INDEX koine_log_key, MODIFY k LONGBLOB NOT NULL;
