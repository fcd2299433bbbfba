-- Koine schema for SQLite. Keys (column `k`, since KEY is reserved in
-- MySQL and the SQL text is shared) and values are BLOBs compared bytewise.

-- One row (id = 1): the store revision and the compacted revision. Every
-- write transaction takes this row first, which serialises writers and makes
-- revisions dense.
CREATE TABLE koine_meta (
    id INTEGER PRIMARY KEY,
    revision INTEGER NOT NULL,
    compact_revision INTEGER NOT NULL,
    -- Log rows with revision <= this have been physically compacted.
    compacted_to INTEGER NOT NULL,
    cluster_id INTEGER NOT NULL
);
INSERT INTO koine_meta (id, revision, compact_revision, compacted_to, cluster_id)
VALUES (1, 1, 0, 0, abs(random()) % 9007199254740991 + 1);

-- Append-only history: one row per key change.
CREATE TABLE koine_log (
    revision INTEGER NOT NULL,
    sub INTEGER NOT NULL,
    k BLOB NOT NULL,
    create_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    value BLOB NOT NULL,
    deleted INTEGER NOT NULL,
    -- mod_revision of the version this change replaced (0 if none).
    prev_revision INTEGER NOT NULL,
    PRIMARY KEY (revision, sub)
);
CREATE INDEX koine_log_key ON koine_log (k, revision);

-- The latest version of each live key.
CREATE TABLE koine_kv (
    k BLOB PRIMARY KEY,
    create_revision INTEGER NOT NULL,
    mod_revision INTEGER NOT NULL,
    version INTEGER NOT NULL,
    lease INTEGER NOT NULL,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE INDEX koine_kv_lease ON koine_kv (lease) WHERE lease <> 0;

-- Leases; expires_at is milliseconds since the epoch on the database clock.
CREATE TABLE koine_lease (
    id INTEGER PRIMARY KEY,
    ttl INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX koine_lease_expiry ON koine_lease (expires_at);
