-- A one-time repair of the compacted history left by earlier builds (see
-- migrations/sqlite/0006_repair_compacted_history.sql for why and how).
-- MySQL cannot read the table it deletes from in a subquery: the rows to
-- remove are collected first.
CREATE TEMPORARY TABLE koine_repair (
    revision BIGINT NOT NULL,
    sub BIGINT NOT NULL,
    PRIMARY KEY (revision, sub)
);
INSERT INTO koine_repair (revision, sub)
SELECT o.revision, o.sub FROM koine_log o JOIN koine_meta m ON m.id = 1
WHERE o.revision <= m.compacted_to
  AND (o.deleted <> 0
    OR EXISTS (SELECT 1 FROM koine_log n WHERE n.k = o.k
        AND n.revision > o.revision AND n.revision <= m.compact_revision)
    OR COALESCE(
        (SELECT n.prev_revision FROM koine_log n WHERE n.k = o.k
            AND n.revision > o.revision ORDER BY n.revision LIMIT 1),
        (SELECT kv.mod_revision FROM koine_kv kv WHERE kv.k = o.k),
        0) <> o.revision);
DELETE l FROM koine_log l JOIN koine_repair r ON r.revision = l.revision AND r.sub = l.sub;
DROP TEMPORARY TABLE koine_repair;
