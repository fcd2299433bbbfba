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
    ImportWipeLease,
    ImportWipeBatch,
    ImportWipeTokens,
    ImportWipeAlarms,
    ImportStart,
    CheckpointGet,
    CheckpointSet,
    ImportFinish,
    ClusterId,
    LogChanges,
    LogScan,
    LogDeleteSpan,
    LeaseGet,
    LeaseList,
    LeaseExpired,
    LeaseInsert,
    LeaseInsertNew,
    LeaseRefresh,
    LeaseDelete,
    DbSize,
    Notify,
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

/// Rendered statements for one database.
pub struct Queries {
    sql: &'static DialectSql,
    texts: HashMap<Q, Arc<str>>,
    /// Multi-row statements by (kind, rows).
    log_inserts: Mutex<HashMap<(Many, usize), Arc<str>>>,
}

/// Statements on the log rendered per row count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Many {
    Insert,
    Values,
    Delete,
    DeleteVersions,
    /// The last log rows of a batch with the meta row, the batch row and
    /// the notification (`DialectSql::writes_in_one_statement`).
    Finish,
    /// Which of some leases exist.
    LeasesIn,
}

impl Queries {
    pub fn new(sql: &'static DialectSql) -> Queries {
        let DialectSql {
            now_ms,
            lock_meta,
            db_size,
            insert_new,
            ..
        } = *sql;
        let mut texts: Vec<(Q, String)> = vec![
            (
                Q::MetaLock,
                format!(
                    "SELECT {}, compact_revision FROM koine_meta WHERE id = 1{lock_meta}",
                    meta_revision(sql)
                ),
            ),
            (
                Q::MetaRead,
                format!(
                    "SELECT {}, compact_revision FROM koine_meta WHERE id = 1",
                    meta_revision(sql)
                ),
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
            (Q::ImportWipeLease, "DELETE FROM koine_lease".into()),
            (Q::ImportWipeBatch, "DELETE FROM koine_batch".into()),
            (Q::ImportWipeTokens, "DELETE FROM koine_auth_token".into()),
            (Q::ImportWipeAlarms, "DELETE FROM koine_alarm".into()),
            (
                Q::ImportStart,
                "UPDATE koine_meta SET revision = 0, compact_revision = 0, compacted_to = 0, \
                 checkpoint = 0 WHERE id = 1"
                    .into(),
            ),
            (
                Q::ImportFinish,
                "UPDATE koine_meta SET revision = ?, compact_revision = ?, compacted_to = ? \
                 WHERE id = 1"
                    .into(),
            ),
            (
                Q::CheckpointGet,
                "SELECT checkpoint FROM koine_meta WHERE id = 1".into(),
            ),
            (
                Q::CheckpointSet,
                "UPDATE koine_meta SET checkpoint = ? WHERE id = 1".into(),
            ),
            (
                Q::ClusterId,
                "SELECT cluster_id FROM koine_meta WHERE id = 1".into(),
            ),
            (
                Q::LogChanges,
                format!(
                    "SELECT revision, sub, k, create_revision, version, lease, value, deleted, \
                 prev_revision, (SELECT compact_revision FROM koine_meta WHERE id = 1), \
                 (SELECT compacted_to FROM koine_meta WHERE id = 1) \
                 FROM koine_log WHERE {}",
                    log_span(sql)
                ),
            ),
            (
                Q::LogDeleteSpan,
                if sql.log_rowid {
                    format!(
                        "DELETE FROM koine_log WHERE id >= ? * {SUBS} AND id < (? + 1) * {SUBS}"
                    )
                } else {
                    "DELETE FROM koine_log WHERE revision >= ? AND revision <= ?".into()
                },
            ),
            (
                // The same without values: what the key index is built
                // from, and what compaction looks at.
                Q::LogScan,
                format!(
                    "SELECT revision, sub, k, create_revision, version, lease, deleted, \
                     prev_revision FROM koine_log WHERE {}",
                    log_span(sql)
                ),
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
                Q::LeaseInsertNew,
                format!(
                    "{} INTO koine_lease (id, ttl, expires_at) VALUES (?, ?, {now_ms} + ?){}",
                    insert_new.0, insert_new.1
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
                format!(
                    "SELECT {}, compact_revision, \
                     (SELECT a.revision * 2 + a.enabled FROM koine_auth a WHERE a.id = 1) \
                     FROM koine_meta WHERE id = 1",
                    meta_revision(sql)
                ),
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
                // a position on (the caller sees to it that compaction has
                // removed what it drops from the log first).
                Q::LogHashPage,
                format!(
                    "SELECT revision, sub, k, create_revision, version, lease, value, deleted \
                     FROM koine_log WHERE {}",
                    if sql.log_rowid {
                        // Numbered, every one (sqlx binds an unnumbered
                        // `?` by count); the third argument (the
                        // position's revision again) is the other form's.
                        format!(
                            "id < (?1 + 1) * {SUBS} AND id > ?2 * {SUBS} + ?4 ORDER BY id \
                             LIMIT ?5"
                        )
                    } else {
                        "revision <= ? AND (revision > ? OR (revision = ? AND sub > ?)) \
                         ORDER BY revision, sub LIMIT ?"
                            .into()
                    }
                ),
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
                let rowid = self.sql.log_rowid;
                let insert = if rowid {
                    // Each row's rowid from its first two arguments.
                    format!(
                        "INSERT INTO koine_log (id, revision, sub, k, create_revision, version, \
                         lease, value, deleted, prev_revision) VALUES {}",
                        numbered(rows, 9, ", ", |n| format!(
                            "(?{0} * {SUBS} + ?{1}, ?{0}, ?{1}, ?{2}, ?{3}, ?{4}, ?{5}, ?{6}, \
                             ?{7}, ?{8})",
                            n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7], n[8]
                        ))
                    )
                } else {
                    format!(
                        "INSERT INTO koine_log (revision, sub, k, create_revision, version, \
                         lease, value, deleted, prev_revision) VALUES {}",
                        vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows].join(", ")
                    )
                };
                // The rows at some (revision, sub) positions.
                let at = if rowid {
                    format!(
                        "id IN ({})",
                        numbered(rows, 2, ", ", |n| format!("?{} * {SUBS} + ?{}", n[0], n[1]))
                    )
                } else {
                    vec!["(revision = ? AND sub = ?)"; rows].join(" OR ")
                };
                let sql = match kind {
                    Many::Insert => insert,
                    Many::Finish => format!(
                        "WITH l AS ({insert}), \
                         m AS (UPDATE koine_meta SET revision = ? WHERE id = 1), \
                         b AS (INSERT INTO koine_batch (id, revision) VALUES (?, ?)) {}",
                        self.sql.notify.unwrap_or("SELECT 1 WHERE ? > 0")
                    ),
                    Many::Values => {
                        format!("SELECT revision, sub, value FROM koine_log WHERE {at}")
                    }
                    Many::Delete => format!("DELETE FROM koine_log WHERE {at}"),
                    Many::LeasesIn => format!(
                        "SELECT id FROM koine_lease WHERE id IN ({})",
                        vec!["?"; rows].join(", ")
                    ),
                    Many::DeleteVersions if rowid => format!(
                        "DELETE FROM koine_log WHERE {}",
                        numbered(rows, 2, " OR ", |n| format!(
                            "(id >= ?{0} * {SUBS} AND id < (?{0} + 1) * {SUBS} AND k = ?{1})",
                            n[0], n[1]
                        ))
                    ),
                    Many::DeleteVersions => format!(
                        "DELETE FROM koine_log WHERE {}",
                        vec!["(revision = ? AND k = ?)"; rows].join(" OR ")
                    ),
                };
                render(self.sql, &sql).into()
            })
            .clone()
    }
}

/// The rowid factor of a log row's position where `DialectSql::log_rowid`:
/// `revision * SUBS + sub` (`sub` < `SUBS`, checked by the table).
pub const SUBS: i64 = 1 << 24;

/// The WHERE clause (with its ORDER BY) of the log rows with revision in
/// `(?, ?]`, in position order.
fn log_span(sql: &DialectSql) -> String {
    if sql.log_rowid {
        format!("id >= (? + 1) * {SUBS} AND id < (? + 1) * {SUBS} ORDER BY id")
    } else {
        "revision > ? AND revision <= ? ORDER BY revision, sub".into()
    }
}

/// The store's revision, read with the meta row. Where the log's rowid is
/// its position, the writer leaves the meta row's revision alone unless its
/// batch wrote a tombstone (`DbTx::write_batch`): the revision is then the
/// newest in the log — its last rowid, one B-tree step — or the meta row's
/// if that is newer (the newest rows were tombstones, which compaction
/// may have removed). 0 stays 0: an import is under way.
fn meta_revision(sql: &DialectSql) -> String {
    if sql.log_rowid {
        format!(
            "CASE WHEN revision = 0 THEN 0 ELSE max(revision, \
             coalesce((SELECT max(id) FROM koine_log), 0) / {SUBS}) END"
        )
    } else {
        "revision".into()
    }
}

/// `rows` items, each made by `item` from its `per` placeholder numbers
/// (`?1`… counted across the items), joined by `sep`.
fn numbered(rows: usize, per: usize, sep: &str, item: impl Fn(&[usize]) -> String) -> String {
    (0..rows)
        .map(|r| item(&(1..=per).map(|i| r * per + i).collect::<Vec<_>>()))
        .collect::<Vec<_>>()
        .join(sep)
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
