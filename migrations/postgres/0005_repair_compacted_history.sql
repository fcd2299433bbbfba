-- A one-time repair of the compacted history left by earlier builds (see
-- migrations/sqlite/0006_repair_compacted_history.sql for why and how).
DELETE FROM koine_log
WHERE revision <= (SELECT compacted_to FROM koine_meta WHERE id = 1)
  AND (deleted <> 0
    OR EXISTS (SELECT 1 FROM koine_log n WHERE n.k = koine_log.k
        AND n.revision > koine_log.revision
        AND n.revision <= (SELECT compact_revision FROM koine_meta WHERE id = 1))
    OR COALESCE(
        (SELECT n.prev_revision FROM koine_log n WHERE n.k = koine_log.k
            AND n.revision > koine_log.revision ORDER BY n.revision LIMIT 1),
        (SELECT kv.mod_revision FROM koine_kv kv WHERE kv.k = koine_log.k),
        0) <> revision);
