-- One row per committed write batch (see migrations/sqlite/0003_batches.sql).
CREATE TABLE koine_batch (
    id BIGINT NOT NULL PRIMARY KEY,
    revision BIGINT NOT NULL,
    KEY koine_batch_revision (revision)
) ENGINE = InnoDB;
