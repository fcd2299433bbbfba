-- The token of the key index checkpoint written at the last graceful
-- shutdown (SQLite: <file>.index beside the database), 0 for none. A
-- checkpoint is used at start only if it carries the token the database
-- holds: an import, or a copy of the database from another moment, does
-- not match it (src/mvcc/checkpoint.rs).
ALTER TABLE koine_meta ADD COLUMN checkpoint BIGINT NOT NULL DEFAULT 0;
