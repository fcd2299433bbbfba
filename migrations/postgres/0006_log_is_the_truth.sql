-- The log is the truth; each instance's key index is in memory (see
-- migrations/sqlite/0007_log_is_the_truth.sql). With no index on the key,
-- a key is as long as a request may carry.
DROP TABLE koine_kv;
DROP INDEX koine_log_key;
