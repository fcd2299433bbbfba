-- One row per committed write batch: its random id and the store revision
-- after it. When the connection breaks during COMMIT, the writer looks its
-- batch up here to learn whether the commit took effect, and answers the
-- truth instead of guessing. Rows below the compact revision are removed
-- with the log.
CREATE TABLE koine_batch (
    id INTEGER PRIMARY KEY,
    revision INTEGER NOT NULL
);
CREATE INDEX koine_batch_revision ON koine_batch (revision);
