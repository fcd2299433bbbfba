-- The log is the truth; each instance's key index is in memory
-- (src/mvcc/index.rs). A key change appends one row to koine_log and
-- touches no key-ordered table: the current-state table and the log's
-- (k, revision) index go. Every read by key is answered from memory, and
-- compaction deletes rows by their (revision, sub) primary key.
DROP TABLE koine_kv;
DROP INDEX koine_log_key;
