-- One row per committed write batch (see migrations/sqlite/0003_batches.sql).
CREATE TABLE koine_batch (
    id BIGINT PRIMARY KEY,
    revision BIGINT NOT NULL
);
CREATE INDEX koine_batch_revision ON koine_batch (revision);
