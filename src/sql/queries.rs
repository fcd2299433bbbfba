//! The SQL text, written once with `?` placeholders; a database's own
//! fragments ([`DialectSql`]) are spliced in and its placeholders rendered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::DialectSql;

/// Every statement the store runs, by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Q {
    MetaLock,
    MetaRead,
    MetaSetRevision,
    MetaTouch,
    BatchInsert,
    BatchGet,
    BatchPrune,
    MetaSetCompact,
    MetaSetCompactedTo,
    MetaCompactedTo,
    /// `koine import`: counts, emptying the store, the final revisions.
    LogCount,
    LeaseCount,
    ImportWipeLog,
    ImportWipeKv,
    ImportWipeLease,
    ImportWipeBatch,
    ImportWipeTokens,
    ImportWipeAlarms,
    ImportStart,
    ImportFinish,
    ClusterId,
    KvGet,
    KvRange,
    KvRangeOpen,
    KvCount,
    KvCountOpen,
    KvUnchanged,
    KvUnchangedOpen,
    KvUnchangedCount,
    KvUnchangedCountOpen,
    LogChangedAt,
    LogChangedAtOpen,
    KvByLease,
    LogChanges,
    LogCompactSuperseded,
    LogCompactOlder,
    LogCompactTombstones,
    LeaseGet,
    LeaseList,
    LeaseExpired,
    LeaseInsert,
    LeaseRefresh,
    LeaseDelete,
    DbSize,
    Notify,
    KvRangeWithMeta,
    KvRangeWithMetaOpen,
    KvGetWithMeta,
    AuthRead,
    AuthRevision,
    MetaAndAuthStamp,
    AuthUpdate,
    TokenInsert,
    TokenGet,
    TokenTouch,
    TokenDeleteUser,
    TokenDeleteAll,
    TokenPrune,
    LogHashPage,
    AlarmList,
    AlarmInsert,
    AlarmDelete,
}

const KV_FIELDS: &str = "k, create_revision, mod_revision, version, lease, value";

/// Rendered statements for one database.
pub struct Queries {
    sql: &'static DialectSql,
    texts: HashMap<Q, Arc<str>>,
    /// Multi-row statements by (kind, rows).
    log_inserts: Mutex<HashMap<(Many, usize), Arc<str>>>,
}

/// Statements rendered per row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Many {
    LogInsert,
    KvUpsert,
    KvDelete,
    KvGetIn,
}

impl Queries {
    pub fn new(sql: &'static DialectSql) -> Queries {
        let DialectSql {
            now_ms,
            lock_meta,
            compact_superseded,
            compact_older,
            db_size,
            ..
        } = *sql;
        // A read at revision R (see `DbTx::range_at`): keys not changed
        // since R come from the current-state table...
        let unchanged = |bounded: bool, count: bool| {
            let select = if count {
                "SELECT COUNT(*)".to_string()
            } else {
                format!("SELECT {KV_FIELDS}")
            };
            let end = if bounded { " AND k < ?" } else { "" };
            let tail = if count { "" } else { " ORDER BY k LIMIT ?" };
            format!("{select} FROM koine_kv WHERE k >= ?{end} AND mod_revision <= ?{tail}")
        };
        // ...and keys changed after R from the log: their newest row at or
        // below R, unless it is a deletion.
        let changed = |bounded: bool| {
            let end = if bounded { " AND c.k < ?" } else { "" };
            // Driven by the distinct changed keys, each resolved through the
            // (k, revision) index, never by a scan of the whole log.
            format!(
                "SELECT l.k, l.create_revision, l.revision, l.version, l.lease, l.value \
                 FROM (SELECT DISTINCT c.k AS ck FROM koine_log c \
                 WHERE c.revision > ? AND c.k >= ?{end}) ch \
                 JOIN koine_log l ON l.k = ch.ck AND l.revision = \
                 (SELECT MAX(x.revision) FROM koine_log x WHERE x.k = ch.ck AND x.revision <= ?) \
                 WHERE l.deleted = 0 ORDER BY l.k"
            )
        };
        let mut texts: Vec<(Q, String)> = vec![
            (
                Q::MetaLock,
                format!(
                    "SELECT revision, compact_revision FROM koine_meta WHERE id = 1{lock_meta}"
                ),
            ),
            (
                Q::MetaRead,
                "SELECT revision, compact_revision FROM koine_meta WHERE id = 1".into(),
            ),
            (
                Q::MetaSetRevision,
                "UPDATE koine_meta SET revision = ? WHERE id = 1".into(),
            ),
            (
                Q::BatchInsert,
                "INSERT INTO koine_batch (id, revision) VALUES (?, ?)".into(),
            ),
            (
                Q::BatchGet,
                "SELECT revision FROM koine_batch WHERE id = ?".into(),
            ),
            (
                Q::BatchPrune,
                "DELETE FROM koine_batch WHERE revision < ?".into(),
            ),
            (
                Q::MetaTouch,
                "UPDATE koine_meta SET revision = revision WHERE id = 1".into(),
            ),
            (
                Q::MetaSetCompact,
                "UPDATE koine_meta SET compact_revision = ? WHERE id = 1".into(),
            ),
            (
                Q::MetaSetCompactedTo,
                "UPDATE koine_meta SET compacted_to = ? WHERE id = 1".into(),
            ),
            (
                Q::MetaCompactedTo,
                "SELECT compacted_to FROM koine_meta WHERE id = 1".into(),
            ),
            (Q::LogCount, "SELECT COUNT(*) FROM koine_log".into()),
            (Q::LeaseCount, "SELECT COUNT(*) FROM koine_lease".into()),
            (Q::ImportWipeLog, "DELETE FROM koine_log".into()),
            (Q::ImportWipeKv, "DELETE FROM koine_kv".into()),
            (Q::ImportWipeLease, "DELETE FROM koine_lease".into()),
            (Q::ImportWipeBatch, "DELETE FROM koine_batch".into()),
            (Q::ImportWipeTokens, "DELETE FROM koine_auth_token".into()),
            (Q::ImportWipeAlarms, "DELETE FROM koine_alarm".into()),
            (
                Q::ImportStart,
                "UPDATE koine_meta SET revision = 0, compact_revision = 0, compacted_to = 0 \
                 WHERE id = 1"
                    .into(),
            ),
            (
                Q::ImportFinish,
                "UPDATE koine_meta SET revision = ?, compact_revision = ?, compacted_to = ? \
                 WHERE id = 1"
                    .into(),
            ),
            (
                Q::ClusterId,
                "SELECT cluster_id FROM koine_meta WHERE id = 1".into(),
            ),
            (
                Q::KvGet,
                format!("SELECT {KV_FIELDS} FROM koine_kv WHERE k = ?"),
            ),
            (
                Q::KvRange,
                format!(
                    "SELECT {KV_FIELDS} FROM koine_kv WHERE k >= ? AND k < ? ORDER BY k LIMIT ?"
                ),
            ),
            (
                Q::KvRangeOpen,
                format!("SELECT {KV_FIELDS} FROM koine_kv WHERE k >= ? ORDER BY k LIMIT ?"),
            ),
            (
                Q::KvCount,
                "SELECT COUNT(*) FROM koine_kv WHERE k >= ? AND k < ?".into(),
            ),
            (
                Q::KvCountOpen,
                "SELECT COUNT(*) FROM koine_kv WHERE k >= ?".into(),
            ),
            (
                Q::KvRangeWithMeta,
                "SELECT m.revision, m.compact_revision, kv.k, kv.create_revision, kv.mod_revision, \
                 kv.version, kv.lease, kv.value FROM koine_meta m LEFT JOIN koine_kv kv \
                 ON kv.k >= ? AND kv.k < ? WHERE m.id = 1 ORDER BY kv.k LIMIT ?"
                    .into(),
            ),
            (
                Q::KvRangeWithMetaOpen,
                "SELECT m.revision, m.compact_revision, kv.k, kv.create_revision, kv.mod_revision, \
                 kv.version, kv.lease, kv.value FROM koine_meta m LEFT JOIN koine_kv kv \
                 ON kv.k >= ? WHERE m.id = 1 ORDER BY kv.k LIMIT ?"
                    .into(),
            ),
            // One key: no ORDER BY, so MySQL too reads it in one statement
            // (one read view for both rows) without a temporary table.
            (
                Q::KvGetWithMeta,
                "SELECT m.revision, m.compact_revision, kv.k, kv.create_revision, kv.mod_revision, \
                 kv.version, kv.lease, kv.value FROM koine_meta m LEFT JOIN koine_kv kv \
                 ON kv.k = ? WHERE m.id = 1"
                    .into(),
            ),
            (Q::KvUnchanged, unchanged(true, false)),
            (Q::KvUnchangedOpen, unchanged(false, false)),
            (Q::KvUnchangedCount, unchanged(true, true)),
            (Q::KvUnchangedCountOpen, unchanged(false, true)),
            (Q::LogChangedAt, changed(true)),
            (Q::LogChangedAtOpen, changed(false)),
            (
                Q::KvByLease,
                format!("SELECT {KV_FIELDS} FROM koine_kv WHERE lease = ? ORDER BY k"),
            ),
            (
                Q::LogChanges,
                "SELECT l.revision, l.sub, l.k, l.create_revision, l.version, l.lease, \
                 l.value, l.deleted, l.prev_revision, p.create_revision, p.revision, \
                 p.version, p.lease, p.value FROM koine_log l LEFT JOIN koine_log p \
                 ON p.k = l.k AND p.revision = l.prev_revision AND l.prev_revision > 0 \
                 WHERE l.revision > ? AND l.revision <= ? ORDER BY l.revision, l.sub"
                    .into(),
            ),
            (Q::LogCompactSuperseded, compact_superseded.into()),
            (Q::LogCompactOlder, compact_older.into()),
            (
                Q::LogCompactTombstones,
                "DELETE FROM koine_log WHERE revision >= ? AND revision < ? AND deleted = 1 \
                 AND revision <= ?"
                    .into(),
            ),
            (
                Q::LeaseGet,
                format!("SELECT id, ttl, expires_at - {now_ms} FROM koine_lease WHERE id = ?"),
            ),
            (
                Q::LeaseList,
                format!("SELECT id, ttl, expires_at - {now_ms} FROM koine_lease ORDER BY id"),
            ),
            (
                Q::LeaseExpired,
                format!(
                    "SELECT id FROM koine_lease WHERE expires_at <= {now_ms} ORDER BY expires_at LIMIT ?"
                ),
            ),
            (
                Q::LeaseInsert,
                format!(
                    "INSERT INTO koine_lease (id, ttl, expires_at) VALUES (?, ?, {now_ms} + ?)"
                ),
            ),
            (
                Q::LeaseRefresh,
                format!("UPDATE koine_lease SET expires_at = {now_ms} + ttl * 1000 WHERE id = ?"),
            ),
            (
                Q::LeaseDelete,
                "DELETE FROM koine_lease WHERE id = ?".into(),
            ),
            (Q::DbSize, db_size.into()),
            (
                Q::AuthRead,
                "SELECT revision, enabled, state FROM koine_auth WHERE id = 1".into(),
            ),
            (
                Q::MetaAndAuthStamp,
                // What the feed follows: other instances' revisions and
                // auth changes, in one round trip.
                "SELECT m.revision, m.compact_revision, \
                 (SELECT a.revision * 2 + a.enabled FROM koine_auth a WHERE a.id = 1) \
                 FROM koine_meta m WHERE m.id = 1"
                    .into(),
            ),
            (
                Q::AuthRevision,
                // Enabling auth leaves the revision as it is (etcd): the
                // flag is part of what other instances compare.
                "SELECT revision * 2 + enabled FROM koine_auth WHERE id = 1".into(),
            ),
            (
                Q::AuthUpdate,
                "UPDATE koine_auth SET revision = ?, enabled = ?, state = ? WHERE id = 1".into(),
            ),
            (
                Q::TokenInsert,
                format!(
                    "INSERT INTO koine_auth_token (token, username, expires_at) \
                     VALUES (?, ?, {now_ms} + ?)"
                ),
            ),
            (
                Q::TokenGet,
                format!(
                    "SELECT username, expires_at - {now_ms} FROM koine_auth_token WHERE token = ?"
                ),
            ),
            (
                Q::TokenTouch,
                format!("UPDATE koine_auth_token SET expires_at = {now_ms} + ? WHERE token = ?"),
            ),
            (
                Q::TokenDeleteUser,
                "DELETE FROM koine_auth_token WHERE username = ?".into(),
            ),
            (Q::TokenDeleteAll, "DELETE FROM koine_auth_token".into()),
            (
                // The history a hash covers, in (revision, sub) order from
                // a position on: every row above the compact revision, and
                // at or below it only each key's newest live row (what
                // compaction keeps), whether or not physical compaction
                // has removed the others yet.
                Q::LogHashPage,
                "SELECT l.revision, l.sub, l.k, l.create_revision, l.version, l.lease, l.value, \
                 l.deleted FROM koine_log l WHERE l.revision <= ? \
                 AND (l.revision > ? OR (l.revision = ? AND l.sub > ?)) \
                 AND (l.revision > ? OR (l.deleted = 0 AND NOT EXISTS (SELECT 1 FROM koine_log x \
                 WHERE x.k = l.k AND x.revision > l.revision AND x.revision <= ?))) \
                 ORDER BY l.revision, l.sub LIMIT ?"
                    .into(),
            ),
            (
                Q::AlarmList,
                "SELECT member_id, alarm FROM koine_alarm ORDER BY member_id, alarm".into(),
            ),
            (
                Q::AlarmInsert,
                "INSERT INTO koine_alarm (member_id, alarm) VALUES (?, ?)".into(),
            ),
            (
                Q::AlarmDelete,
                "DELETE FROM koine_alarm WHERE member_id = ? AND alarm = ?".into(),
            ),
            (
                Q::TokenPrune,
                format!("DELETE FROM koine_auth_token WHERE expires_at <= {now_ms}"),
            ),
        ];
        if let Some(notify) = sql.notify {
            texts.push((Q::Notify, notify.into()));
        }
        Queries {
            sql,
            texts: texts
                .into_iter()
                .map(|(q, text)| (q, render(sql, &text).into()))
                .collect(),
            log_inserts: Mutex::new(HashMap::new()),
        }
    }

    /// The statement `q`; `None` for one this database does without
    /// (`Q::Notify` where instances poll).
    pub fn get(&self, q: Q) -> Option<&Arc<str>> {
        self.texts.get(&q)
    }

    /// A multi-row statement for `rows` rows (cached per size).
    pub fn many(&self, kind: Many, rows: usize) -> Arc<str> {
        let mut cache = self.log_inserts.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .entry((kind, rows))
            .or_insert_with(|| {
                let sql = match kind {
                    Many::LogInsert => format!(
                        "INSERT INTO koine_log (revision, sub, k, create_revision, version, lease, \
                         value, deleted, prev_revision) VALUES {}",
                        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ")
                    ),
                    Many::KvUpsert => {
                        let values = vec!["(?, ?, ?, ?, ?, ?)"; rows].join(", ");
                        let update = self.sql.kv_upsert;
                        format!("INSERT INTO koine_kv ({KV_FIELDS}) VALUES {values} {update}")
                    }
                    Many::KvDelete => format!(
                        "DELETE FROM koine_kv WHERE k IN ({})",
                        vec!["?"; rows].join(", ")
                    ),
                    Many::KvGetIn => format!(
                        "SELECT {KV_FIELDS} FROM koine_kv WHERE k IN ({})",
                        vec!["?"; rows].join(", ")
                    ),
                };
                render(self.sql, &sql).into()
            })
            .clone()
    }
}

/// Rewrites `?` placeholders to `$1, $2, …` where the database numbers
/// them.
fn render(dialect: &DialectSql, sql: &str) -> String {
    if !dialect.numbered_placeholders {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push('$');
            out.push_str(&n.to_string());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_placeholders_are_numbered() {
        assert_eq!(
            render(&crate::sql::postgres::SQL, "a = ? AND b < ?"),
            "a = $1 AND b < $2"
        );
        assert_eq!(render(&crate::sql::mysql::SQL, "a = ?"), "a = ?");
    }
}
