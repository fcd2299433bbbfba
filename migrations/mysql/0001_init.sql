-- Koine schema for MySQL/MariaDB (InnoDB). Keys (column `k`) are VARBINARY,
-- compared bytewise; 3000 bytes keeps the (k, revision) index under InnoDB's
-- 3072-byte limit. See migrations/sqlite for the meaning of each table.

CREATE TABLE koine_meta (
    id INT PRIMARY KEY,
    revision BIGINT NOT NULL,
    compact_revision BIGINT NOT NULL,
    compacted_to BIGINT NOT NULL,
    cluster_id BIGINT NOT NULL
) ENGINE = InnoDB;
INSERT INTO koine_meta (id, revision, compact_revision, compacted_to, cluster_id)
VALUES (1, 1, 0, 0, FLOOR(1 + RAND() * 9007199254740990));

CREATE TABLE koine_log (
    revision BIGINT NOT NULL,
    sub BIGINT NOT NULL,
    k VARBINARY(3000) NOT NULL,
    create_revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    value LONGBLOB NOT NULL,
    deleted BIGINT NOT NULL,
    prev_revision BIGINT NOT NULL,
    PRIMARY KEY (revision, sub),
    KEY koine_log_key (k, revision)
) ENGINE = InnoDB;

CREATE TABLE koine_kv (
    k VARBINARY(3000) NOT NULL PRIMARY KEY,
    create_revision BIGINT NOT NULL,
    mod_revision BIGINT NOT NULL,
    version BIGINT NOT NULL,
    lease BIGINT NOT NULL,
    value LONGBLOB NOT NULL,
    KEY koine_kv_lease (lease)
) ENGINE = InnoDB;

CREATE TABLE koine_lease (
    id BIGINT NOT NULL PRIMARY KEY,
    ttl BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    KEY koine_lease_expiry (expires_at)
) ENGINE = InnoDB;
