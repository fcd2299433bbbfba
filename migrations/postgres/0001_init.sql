-- Koine schema for PostgreSQL. Keys (column `k`) and values are BYTEA,
-- compared bytewise; every integer is BIGINT. See migrations/sqlite for the
-- meaning of each table.

CREATE TABLE koine_meta (
    id INTEGER PRIMARY KEY,
    revision BIGINT NOT NULL,
    compact_revision BIGINT NOT NULL,
    compacted_to BIGINT NOT NULL,
    cluster_id BIGINT NOT NULL
);
INSERT INTO koine_meta (id, revision, compact_revision, compacted_to, cluster_id)
VALUES (1, 1, 0, 0, CAST(floor(random() * 9007199254740990) AS BIGINT) + 1);

CREATE TABLE koine_log (
    revision BIGINT NOT NULL,
    sub BIGINT NOT NULL,
    k BYTEA NOT NULL,
    create_revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    value BYTEA NOT NULL,
    deleted BIGINT NOT NULL,
    prev_revision BIGINT NOT NULL,
    PRIMARY KEY (revision, sub)
);
CREATE INDEX koine_log_key ON koine_log (k, revision);

CREATE TABLE koine_kv (
    k BYTEA PRIMARY KEY,
    create_revision BIGINT NOT NULL,
    mod_revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    value BYTEA NOT NULL
);
CREATE INDEX koine_kv_lease ON koine_kv (lease) WHERE lease <> 0;

CREATE TABLE koine_lease (
    id BIGINT PRIMARY KEY,
    ttl BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX koine_lease_expiry ON koine_lease (expires_at);
