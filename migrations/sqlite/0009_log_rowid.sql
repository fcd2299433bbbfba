-- The log's (revision, sub) key becomes its rowid, revision * 2^24 + sub:
-- a rowid table with a composite PRIMARY KEY keeps a second B-tree for
-- that key, and every commit rewrote a page of it (1.4 pages of the ~11 a
-- commit wrote to the WAL). The revision and sub columns stay, checked
-- against the rowid; the checks also bound them (sub < 2^24 changes in one
-- revision, revision < 2^39) so the rowid never overflows.
CREATE TABLE koine_log_by_rowid (
    id INTEGER PRIMARY KEY,
    revision INTEGER NOT NULL CHECK (revision >= 0 AND revision < 549755813888),
    sub INTEGER NOT NULL CHECK (sub >= 0 AND sub < 16777216),
    k BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    value BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    -- mod_revision of the version this change replaced (0 if none).
    prev_revision INTEGER NOT NULL,
    CHECK (id = revision * 16777216 + sub)
);
INSERT INTO koine_log_by_rowid (id, revision, sub, k, create_revision, version, lease,
    value, deleted, prev_revision)
SELECT revision * 16777216 + sub, revision, sub, k, create_revision, version, lease,
    value, deleted, prev_revision
FROM koine_log ORDER BY revision, sub;
DROP TABLE koine_log;
ALTER TABLE koine_log_by_rowid RENAME TO koine_log;
