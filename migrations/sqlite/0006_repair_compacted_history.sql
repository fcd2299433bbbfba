-- A one-time repair of the compacted history. Builds before this schema
-- version compacted a step of revisions looking only at rows inside the
-- step, so a key an earlier compaction kept (its newest version then) kept
-- that row when a later compaction removed what superseded it: the row
-- lived on in HashKV, snapshots and imports, and when the key had been
-- deleted a read at a revision before its re-creation saw it as live.
--
-- A compacted row (revision <= compacted_to) is what a correct compaction
-- keeps only if it is not a tombstone, no newer row of its key is at or
-- below the compact revision, and it was live until its key's next change:
-- that change names it as prev_revision (the version it replaced), or,
-- with no next change, the key is still live at this row's revision. A
-- key deleted between the two has a next row with prev_revision 0.
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
