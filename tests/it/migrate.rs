//! Moving in and out: `etcdctl snapshot save` against Koine yields a file
//! real etcd restores and then serves identically at every retained
//! revision; `koine import` fills a Koine database from an etcd snapshot,
//! a live etcd (following its changes), another Koine database or kine,
//! and Koine then serves what the source served, revision by revision.
//!
//! The restore tests run with Debian's etcd 3.4 tools here; the same
//! tests with etcd 3.6 and 3.7 (etcd and etcdutl built from the Go module
//! proxy), and the kine imports, are `#[ignore]`d because Go builds those
//! binaries: scripts/test.sh runs them after `scripts/kubernetes.sh
//! build-bins` with ETCD36_DIR, ETCD37_DIR and KINE_BIN set.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, PutOptions, Txn, TxnOp};
use tempfile::TempDir;
use tokio::process::Command;

use crate::harness::{
    Etcd, Koine, KoineProcess, code_and_text, etcd_command, etcdctl, free_port, wait_ready,
};

/// One key as Range answers it: key, create, mod, version, value, lease.
type Kv = (Vec<u8>, i64, i64, i64, Vec<u8>, i64);

/// A Range's answer: the header revision and the keys (versions left out
/// unless `versions`), or the error's code and text.
type Answer = Result<(i64, Vec<Kv>), (tonic::Code, String)>;

async fn range(c: &mut Client, key: &[u8], opts: GetOptions, versions: bool) -> Answer {
    match c.get(key, Some(opts)).await {
        Ok(r) => Ok((
            r.header().expect("header").revision(),
            r.kvs()
                .iter()
                .map(|kv| {
                    (
                        kv.key().to_vec(),
                        kv.create_revision(),
                        kv.mod_revision(),
                        if versions { kv.version() } else { 0 },
                        kv.value().to_vec(),
                        kv.lease(),
                    )
                })
                .collect(),
        )),
        Err(e) => Err(code_and_text(e)),
    }
}

/// Everything at `rev` (0: now).
async fn dump(c: &mut Client, rev: i64) -> Answer {
    let opts = GetOptions::new().with_range(vec![0u8]).with_revision(rev);
    range(c, &[0], opts, true).await
}

/// The answers at every revision from 1 to now.
async fn history(c: &mut Client) -> Vec<Answer> {
    let now = dump(c, 0).await.expect("range").0;
    let mut out = Vec::new();
    for rev in 1..=now {
        out.push(dump(c, rev).await);
    }
    out.push(dump(c, now + 1).await);
    out
}

/// Leases: id, granted TTL, attached keys.
async fn leases(c: &mut Client) -> Vec<(i64, i64, Vec<Vec<u8>>)> {
    let mut out = Vec::new();
    for l in c.leases().await.expect("leases").leases() {
        let t = c
            .lease_time_to_live(
                l.id(),
                Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
            )
            .await
            .expect("ttl");
        let mut keys = t.keys().to_vec();
        keys.sort();
        out.push((l.id(), t.granted_ttl(), keys));
    }
    out.sort();
    out
}

/// A history with what an etcd backend has to carry: creates, updates,
/// deletes (single and range), a Txn changing several keys at one revision,
/// keys on leases, binary keys, a value spanning bbolt overflow pages,
/// enough keys for branch pages and several import batches, and a
/// compaction in the middle.
async fn write_history(c: &mut Client) {
    for i in 0..2500 {
        c.put(
            format!("/registry/pods/ns{}/p{i:05}", i % 7),
            format!("v{i}"),
            None,
        )
        .await
        .unwrap();
    }
    c.put("/big", vec![7u8; 20_000], None).await.unwrap();
    c.put(vec![0u8, 255, 1], vec![0u8, 1, 2], None)
        .await
        .unwrap();
    for i in 0..10 {
        c.put("/hot", format!("h{i}"), None).await.unwrap();
    }
    c.delete(
        "/registry/pods/ns3/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let lease = c.lease_grant(3600, None).await.unwrap().id();
    let other = c.lease_grant(600, None).await.unwrap().id();
    c.put("/lease/a", "a", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.put("/lease/b", "b", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    c.put("/lease/c", "c", Some(PutOptions::new().with_lease(other)))
        .await
        .unwrap();
    let mid = c.put("/mid", "m", None).await.unwrap();
    let mid = mid.header().unwrap().revision();
    c.txn(
        Txn::new()
            .when([Compare::version("/mid", CompareOp::Equal, 1)])
            .and_then([
                TxnOp::put("/txn/1", "1", None),
                TxnOp::put("/txn/2", "2", None),
                TxnOp::delete("/hot", None),
                TxnOp::put("/mid", "m2", None),
            ]),
    )
    .await
    .unwrap();
    c.compact(mid - 5, None).await.unwrap();
    for i in 0..20 {
        c.put(format!("/after/{}", i % 4), format!("a{i}"), None)
            .await
            .unwrap();
        if i % 5 == 4 {
            c.delete(format!("/after/{}", i % 4), None).await.unwrap();
        }
    }
    c.put("/hot", "back", None).await.unwrap();
    // A key the first compaction kept (its only version is older), then
    // deleted and compacted past: gone from the history entirely, not
    // brought back by what the first compaction left.
    c.delete("/registry/pods/ns0/p00000", None).await.unwrap();
    c.put("/registry/pods/ns1/p00001", "again", None)
        .await
        .unwrap();
    let r = c.put("/last", "l", None).await.unwrap();
    c.compact(
        r.header().unwrap().revision() - 1,
        Some(etcd_client::CompactionOptions::new().with_physical()),
    )
    .await
    .unwrap();
    c.put("/hot", "after the second compaction", None)
        .await
        .unwrap();
}

async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint], None).await.expect("connect")
}

/// `koine import ARGS...`; answers success and the log.
async fn koine_import(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_koine"))
        .arg("import")
        .args(args)
        .env("NO_COLOR", "1")
        .env("RUST_BACKTRACE", "0")
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run koine import");
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success(), log)
}

async fn import_ok(args: &[&str]) -> String {
    let (ok, log) = koine_import(args).await;
    assert!(ok, "koine import {args:?} failed:\n{log}");
    assert!(log.contains("import finished and verified"), "{log}");
    log
}

async fn snapshot_save(endpoint: &str, dir: &Path) -> PathBuf {
    let path = dir.join("snapshot.db");
    etcdctl(endpoint, &["snapshot", "save", &path.display().to_string()]).await;
    path
}

/// etcd's offline tools: Debian's etcdctl 3.4 (`snapshot restore`) and
/// its etcd, or the etcdutl and etcd conformance/go.mod pins.
struct Tools {
    restore: PathBuf,
    etcd: PathBuf,
}

impl Tools {
    fn debian() -> Tools {
        Tools {
            restore: "/usr/bin/etcdctl".into(),
            etcd: crate::harness::etcd_binary(),
        }
    }

    /// etcd and etcdutl from the directory `var` names (scripts/test.sh
    /// sets ETCD36_DIR and ETCD37_DIR to what scripts/kubernetes.sh built).
    fn pinned(var: &str) -> Tools {
        let dir = PathBuf::from(std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: scripts/test.sh builds etcd and etcdutl (scripts/kubernetes.sh build-bins)")
        }));
        let tool = |name: &str| {
            let p = dir.join(name);
            assert!(p.exists(), "{} not found", p.display());
            p
        };
        Tools {
            restore: tool("etcdutl"),
            etcd: tool("etcd"),
        }
    }

    async fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.restore)
            // etcdctl 3.4 needs it; etcdutl ignores it.
            .env("ETCDCTL_API", "3")
            .args(args)
            .output()
            .await
            .expect("run etcd tool");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{:?} {args:?}: {text}", self.restore);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `snapshot status -w json`: (revision, total keys).
    async fn status(&self, snap: &Path) -> (i64, i64) {
        let out = self
            .run(&[
                "snapshot",
                "status",
                &snap.display().to_string(),
                "-w",
                "json",
            ])
            .await;
        let v: serde_json::Value = serde_json::from_str(out.trim()).expect("status json");
        (
            v["revision"].as_i64().expect("revision"),
            v["totalKey"].as_i64().expect("totalKey"),
        )
    }

    /// Restores `snap` and starts etcd on it.
    async fn restore_and_start(&self, snap: &Path, dir: &Path) -> RestoredEtcd {
        let data = dir.join("restored");
        let client = free_port();
        let peer = free_port();
        let endpoint = format!("http://127.0.0.1:{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let cluster = format!("default={peer_url}");
        self.run(&[
            "snapshot",
            "restore",
            &snap.display().to_string(),
            "--data-dir",
            &data.display().to_string(),
            "--name",
            "default",
            "--initial-cluster",
            &cluster,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .await;
        let child = etcd_command(&self.etcd, &data, &endpoint, &peer_url)
            .spawn()
            .expect("spawn etcd");
        wait_ready(&endpoint).await;
        RestoredEtcd {
            endpoint,
            _child: child,
        }
    }
}

struct RestoredEtcd {
    endpoint: String,
    _child: tokio::process::Child,
}

/// Koine → `etcdctl snapshot save` → restore → etcd answers as Koine did
/// at every revision, with the same leases and keys on them.
async fn snapshot_restores_into_etcd(dsn: Option<String>, tools: Tools) {
    let koine = match &dsn {
        Some(dsn) => Koine::start_on(dsn, &[]).await,
        None => Koine::start(&[]).await,
    };
    let mut c = connect(&koine.endpoint).await;
    write_history(&mut c).await;
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot_save(&koine.endpoint, dir.path()).await;
    let want = history(&mut c).await;
    let want_leases = leases(&mut c).await;
    let now = dump(&mut c, 0).await.unwrap().0;

    let (revision, _) = tools.status(&snap).await;
    assert_eq!(revision, now, "snapshot status revision");
    let etcd = tools.restore_and_start(&snap, dir.path()).await;
    let mut e = connect(&etcd.endpoint).await;
    let got = history(&mut e).await;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g, w, "revision {}: restored etcd differs from Koine", i + 1);
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(leases(&mut e).await, want_leases);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_snapshot_restores_into_etcd() {
    snapshot_restores_into_etcd(None, Tools::debian()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_snapshot_restores_into_etcd() {
    snapshot_restores_into_etcd(
        Some(crate::dbs::fresh_postgres_dsn().await),
        Tools::debian(),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_snapshot_restores_into_etcd() {
    snapshot_restores_into_etcd(Some(crate::dbs::fresh_mariadb_dsn().await), Tools::debian()).await;
}

/// The same with etcd 3.6's etcdutl and etcd (v3.6.16, built by
/// scripts/kubernetes.sh from the module proxy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ETCD36_DIR (scripts/test.sh builds etcd 3.6)"]
async fn etcd36_restores_koine_snapshot() {
    snapshot_restores_into_etcd(None, Tools::pinned("ETCD36_DIR")).await;
}

/// And with the etcd 3.7 conformance/go.mod pins, on PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs ETCD37_DIR (scripts/test.sh builds etcd 3.7)"]
async fn etcd37_restores_koine_snapshot() {
    snapshot_restores_into_etcd(
        Some(crate::dbs::fresh_postgres_dsn().await),
        Tools::pinned("ETCD37_DIR"),
    )
    .await;
}

/// Where an import lands: a fresh database of each kind.
async fn target_dsn(kind: &str, dir: &TempDir) -> String {
    match kind {
        "sqlite" => format!("sqlite://{}", dir.path().join("imported.db").display()),
        "postgres" => crate::dbs::fresh_postgres_dsn().await,
        _ => crate::dbs::fresh_mariadb_dsn().await,
    }
}

/// etcd → `etcdctl snapshot save` → `koine import` → Koine answers as
/// etcd did at every revision (the compacted ones with the same error).
async fn etcd_snapshot_imports(kind: &str) {
    let etcd = Etcd::start().await;
    let mut e = connect(&etcd.endpoint).await;
    write_history(&mut e).await;
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot_save(&etcd.endpoint, dir.path()).await;
    let want = history(&mut e).await;
    let want_leases = leases(&mut e).await;

    let dsn = target_dsn(kind, &dir).await;
    import_ok(&[
        "--from-snapshot",
        &snap.display().to_string(),
        "--endpoint",
        &dsn,
    ])
    .await;
    let koine = Koine::start_on(&dsn, &[]).await;
    let mut k = connect(&koine.endpoint).await;
    let got = history(&mut k).await;
    for (i, (w, g)) in want.iter().zip(&got).enumerate() {
        assert_eq!(g, w, "revision {}: imported Koine differs from etcd", i + 1);
    }
    assert_eq!(got.len(), want.len());
    assert_eq!(leases(&mut k).await, want_leases);
    // And it goes on from there, at the next revision.
    let now = dump(&mut k, 0).await.unwrap().0;
    let r = k.put("/next", "n", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), now + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_imports_into_sqlite() {
    etcd_snapshot_imports("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_imports_into_postgres() {
    etcd_snapshot_imports("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_snapshot_imports_into_mysql() {
    etcd_snapshot_imports("mysql").await;
}

/// SQLite → PostgreSQL / MariaDB with history: every revision answers the
/// same, and HashKV (the history as compaction leaves it) is equal.
async fn koine_database_imports(kind: &str) {
    let source = Koine::start(&[]).await;
    let mut s = connect(&source.endpoint).await;
    write_history(&mut s).await;
    let want = history(&mut s).await;
    let want_leases = leases(&mut s).await;
    let want_hash = s.hash_kv(0).await.unwrap().hash();
    let want_events = events_since(&mut s).await;
    let dir = source.stop().await;
    let src = format!("sqlite://{}", dir.path().join("state.db").display());

    let tdir = tempfile::tempdir().unwrap();
    let dsn = target_dsn(kind, &tdir).await;
    import_ok(&["--from-koine", &src, "--endpoint", &dsn]).await;
    let koine = Koine::start_on(&dsn, &[]).await;
    let mut k = connect(&koine.endpoint).await;
    assert_eq!(history(&mut k).await, want);
    assert_eq!(leases(&mut k).await, want_leases);
    assert_eq!(k.hash_kv(0).await.unwrap().hash(), want_hash);
    // A watch resumed from before the move sees the same changes.
    assert_eq!(events_since(&mut k).await, want_events);
}

/// Every change from the compact revision on, as a watch (with prev_kv)
/// delivers them: type, key, value, revisions, the previous value.
async fn events_since(c: &mut Client) -> Vec<String> {
    let now = dump(c, 0).await.unwrap().0;
    let from = c.hash_kv(0).await.unwrap().compact_version();
    assert!(from > 0 && from < now);
    let opts = etcd_client::WatchOptions::new()
        .with_range(vec![0u8])
        .with_start_revision(from)
        .with_prev_key();
    let mut stream = c.watch(vec![0u8], Some(opts)).await.unwrap();
    let mut out = Vec::new();
    let mut last = 0;
    while last < now {
        let resp = crate::harness::next_watch_response(&mut stream).await;
        for ev in resp.events() {
            let kv = ev.kv().unwrap();
            last = kv.mod_revision();
            out.push(format!(
                "{:?} {:?}={:?} c{} m{} v{} prev={:?}",
                ev.event_type(),
                kv.key_str(),
                kv.value(),
                kv.create_revision(),
                kv.mod_revision(),
                kv.version(),
                ev.prev_kv().map(|p| (p.value().to_vec(), p.mod_revision()))
            ));
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_imports_into_postgres() {
    koine_database_imports("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_database_imports_into_mysql() {
    koine_database_imports("mysql").await;
}

/// Runs statements on a Koine database directly, as SQL (the upgrade test
/// puts back what an earlier build left in it).
async fn sql(dsn: &str, statements: &[String]) {
    use sqlx::{Connection, Executor};
    async fn all<C: Connection>(mut c: C, statements: &[String])
    where
        for<'c> &'c mut C: Executor<'c>,
    {
        for s in statements {
            c.execute(sqlx::AssertSqlSafe(s.as_str())).await.expect(s);
        }
    }
    if dsn.starts_with("postgres") {
        all(sqlx::PgConnection::connect(dsn).await.unwrap(), statements).await
    } else if dsn.starts_with("mysql") {
        all(
            sqlx::MySqlConnection::connect(dsn).await.unwrap(),
            statements,
        )
        .await
    } else {
        all(
            sqlx::SqliteConnection::connect(dsn).await.unwrap(),
            statements,
        )
        .await
    }
}

/// What an earlier release's schema adds to this one's: the current-state
/// table `koine_kv` (filled with each key's newest live version, as that
/// release kept it) and the log's `(k, revision)` index, and on SQLite the
/// log keyed by `(revision, sub)`, as SQL for `kind`'s database.
fn earlier_schema(kind: &str) -> Vec<String> {
    let (blob, int, table_end) = match kind {
        "postgres" => ("BYTEA", "BIGINT", ""),
        "mysql" => ("VARBINARY(3000)", "BIGINT", " ENGINE = InnoDB"),
        _ => ("BLOB", "INTEGER", " WITHOUT ROWID"),
    };
    let value = if kind == "mysql" { "LONGBLOB" } else { blob };
    let mut out = Vec::new();
    if kind == "sqlite" {
        // Before migrations/sqlite/0009 the log's key was a PRIMARY KEY
        // (revision, sub), not its rowid.
        out.extend([
            "CREATE TABLE koine_log_keyed (revision INTEGER NOT NULL, sub INTEGER NOT NULL, \
             k BLOB NOT NULL, create_revision INTEGER NOT NULL, version INTEGER NOT NULL, \
             lease INTEGER NOT NULL, value BLOB NOT NULL, deleted INTEGER NOT NULL, \
             prev_revision INTEGER NOT NULL, PRIMARY KEY (revision, sub))"
                .to_string(),
            "INSERT INTO koine_log_keyed SELECT revision, sub, k, create_revision, version, \
             lease, value, deleted, prev_revision FROM koine_log"
                .to_string(),
            "DROP TABLE koine_log".to_string(),
            "ALTER TABLE koine_log_keyed RENAME TO koine_log".to_string(),
        ]);
    }
    out.extend([
        format!(
            "CREATE TABLE koine_kv (k {blob} NOT NULL PRIMARY KEY, create_revision {int} NOT NULL, \
             mod_revision {int} NOT NULL, version {int} NOT NULL, lease {int} NOT NULL, \
             value {value} NOT NULL){table_end}"
        ),
        "INSERT INTO koine_kv (k, create_revision, mod_revision, version, lease, value) \
         SELECT l.k, l.create_revision, l.revision, l.version, l.lease, l.value FROM koine_log l \
         WHERE l.deleted = 0 AND l.revision = (SELECT MAX(x.revision) FROM koine_log x WHERE x.k = l.k)"
            .to_string(),
    ]);
    out.push(match kind {
        "mysql" => "ALTER TABLE koine_log MODIFY k VARBINARY(3000) NOT NULL, \
                    ADD INDEX koine_log_key (k, revision)"
            .into(),
        _ => "CREATE INDEX koine_log_key ON koine_log (k, revision)".into(),
    });
    out
}

/// Upgrade in place, from a database an earlier release wrote: its schema
/// (the current-state table and the log's key index, put back by SQL:
/// `earlier_schema`), and, from a build before the compaction fix, what
/// its compaction left: a key the first compaction kept, deleted and
/// compacted past, kept its old row (a read at a revision before its
/// re-creation saw it live), and a key kept then updated kept its
/// superseded row. This build's migrations repair the history, then drop
/// what the in-memory index replaces; afterwards every revision, every
/// lease and HashKV answer as before, over a history with leases, Txns,
/// range deletes and two more compactions.
async fn upgrade_repairs_compacted_history(kind: &str) {
    let dir = tempfile::tempdir().unwrap();
    let dsn = target_dsn(kind, &dir).await;
    let koine = Koine::start_on(&dsn, &[]).await;
    let mut c = connect(&koine.endpoint).await;
    let rev = |r: etcd_client::PutResponse| r.header().unwrap().revision();
    let gone = rev(c.put("/gone", "g", None).await.unwrap());
    let kept = rev(c.put("/kept", "k1", None).await.unwrap());
    let first = rev(c.put("/other", "o1", None).await.unwrap());
    let physical = || Some(etcd_client::CompactionOptions::new().with_physical());
    c.compact(first, physical()).await.unwrap();
    c.delete("/gone", None).await.unwrap();
    c.put("/kept", "k2", None).await.unwrap();
    // Compacts twice more, physically at the end, past the delete; the
    // repair must leave all of this history as it is.
    write_history(&mut c).await;
    c.put("/gone", "back", None).await.unwrap();
    let want = history(&mut c).await;
    let want_leases = leases(&mut c).await;
    let hash = c.hash_kv(0).await.unwrap();
    let (want_hash, compacted) = (hash.hash(), hash.compact_version());
    assert!(
        want[compacted as usize - 1]
            .as_ref()
            .unwrap()
            .1
            .iter()
            .all(|kv| kv.0 != b"/gone"),
        "/gone is deleted at the compact revision"
    );
    koine.stop().await;

    let blob = |v: &str| {
        let hex: String = v.bytes().map(|b| format!("{b:02x}")).collect();
        match kind {
            "postgres" => format!("decode('{hex}', 'hex')"),
            _ => format!("X'{hex}'"),
        }
    };
    let row = |revision: i64, key: &str, value: &str| {
        format!(
            "INSERT INTO koine_log (revision, sub, k, create_revision, version, lease, value, \
             deleted, prev_revision) VALUES ({revision}, 0, {}, {revision}, 1, 0, {}, 0, 0)",
            blob(key),
            blob(value)
        )
    };
    // The repair migration, the one that drops the earlier schema, and
    // (SQLite) the one that makes the log's key its rowid.
    let migrations = if kind == "sqlite" { "6, 7, 9" } else { "5, 6" };
    let mut statements = earlier_schema(kind);
    statements.extend([
        row(gone, "/gone", "g"),
        row(kept, "/kept", "k1"),
        format!("DELETE FROM _sqlx_migrations WHERE version IN ({migrations})"),
    ]);
    sql(&dsn, &statements).await;

    let koine = Koine::start_on(&dsn, &[]).await;
    let mut c = connect(&koine.endpoint).await;
    assert_eq!(history(&mut c).await, want);
    assert_eq!(leases(&mut c).await, want_leases);
    assert_eq!(c.hash_kv(0).await.unwrap().hash(), want_hash);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_repairs_compacted_history_sqlite() {
    upgrade_repairs_compacted_history("sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_repairs_compacted_history_postgres() {
    upgrade_repairs_compacted_history("postgres").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_repairs_compacted_history_mysql() {
    upgrade_repairs_compacted_history("mysql").await;
}

/// Waits for `needle` in a growing log file.
async fn wait_log(path: &Path, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(Instant::now() < deadline, "no {needle:?} in:\n{text}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A live etcd: its state at R, then every change after R until SIGTERM;
/// Koine then answers as etcd at every revision from R on, and "compacted"
/// below R.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_etcd_imports_and_follows() {
    let etcd = Etcd::start().await;
    let mut e = connect(&etcd.endpoint).await;
    write_history(&mut e).await;
    let at = dump(&mut e, 0).await.unwrap().0;
    let dir = tempfile::tempdir().unwrap();
    let dsn = format!("sqlite://{}", dir.path().join("imported.db").display());
    let log = dir.path().join("import.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_koine"))
        .args([
            "import",
            "--from-etcd",
            &etcd.endpoint,
            "--follow",
            "--endpoint",
            &dsn,
        ])
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_log(&log, "following the source's changes").await;
    // Writers keep going during the copy.
    for i in 0..30 {
        e.put(format!("/live/{}", i % 5), format!("l{i}"), None)
            .await
            .unwrap();
    }
    e.delete(
        "/live/",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    e.txn(Txn::new().and_then([
        TxnOp::put("/live/x", "x", None),
        TxnOp::put("/live/y", "y", None),
    ]))
    .await
    .unwrap();
    let last = dump(&mut e, 0).await.unwrap().0;
    wait_log(&log, &format!("revision={last} ")).await;
    let pid = child.id().unwrap() as i32;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(60), child.wait())
        .await
        .unwrap()
        .unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{text}");
    assert!(text.contains("import finished and verified"), "{text}");

    let want_leases = leases(&mut e).await;
    let koine = Koine::start_on(&dsn, &[]).await;
    let mut k = connect(&koine.endpoint).await;
    assert_eq!(dump(&mut k, 0).await.unwrap().0, last);
    for rev in at..=last {
        assert_eq!(
            dump(&mut k, rev).await,
            dump(&mut e, rev).await,
            "revision {rev}"
        );
    }
    assert_eq!(
        dump(&mut k, at - 1).await.unwrap_err(),
        (
            tonic::Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    assert_eq!(leases(&mut k).await, want_leases);
}

/// A non-empty target is refused unless --overwrite; a snapshot whose
/// checksum does not match is refused; an import that dies half way
/// leaves a database the server will not serve, and running the import
/// again starts over and finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imports_refuse_and_recover() {
    let source = Koine::start(&[]).await;
    let mut s = connect(&source.endpoint).await;
    write_history(&mut s).await;
    let want = history(&mut s).await;
    let dir = tempfile::tempdir().unwrap();
    let snap = snapshot_save(&source.endpoint, dir.path()).await;
    let snap_arg = snap.display().to_string();

    // A damaged copy: a page well inside the key bucket overwritten.
    let mut bytes = std::fs::read(&snap).unwrap();
    let page = 4096 * 40;
    assert!(bytes.len() > page + 4096);
    bytes[page..page + 4096].fill(0xAB);
    let damaged = dir.path().join("damaged.db");
    std::fs::write(&damaged, &bytes).unwrap();
    let damaged_arg = damaged.display().to_string();

    let target = dir.path().join("target.db");
    let dsn = format!("sqlite://{}", target.display());
    let (ok, log) = koine_import(&["--from-snapshot", &damaged_arg, "--endpoint", &dsn]).await;
    assert!(!ok && log.contains("SHA-256 does not match"), "{log}");

    // Read anyway: the damage is found while the source is checked, before
    // the target is touched, and the error names the file.
    let (ok, log) = koine_import(&[
        "--from-snapshot",
        &damaged_arg,
        "--skip-hash-check",
        "--endpoint",
        &dsn,
    ])
    .await;
    assert!(!ok && log.contains(&damaged_arg), "{log}");
    assert!(!target.exists(), "a refused source created the target");
    // A mistyped path: named, target untouched.
    let missing = dir.path().join("no-such.db").display().to_string();
    let (ok, log) = koine_import(&["--from-snapshot", &missing, "--endpoint", &dsn]).await;
    assert!(!ok && log.contains(&missing), "{log}");
    assert!(!target.exists(), "a missing source created the target");

    // An import killed half way, after batches were committed: the server
    // refuses the database.
    let big = big_snapshot(dir.path()).await;
    let mut child = Command::new(env!("CARGO_BIN_EXE_koine"))
        .args(["import", "--from-snapshot", &big.display().to_string()])
        .args(["--endpoint", &dsn])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("run koine import");
    let started = Instant::now();
    while imported_rows(&target).await == 0 {
        assert!(child.try_wait().unwrap().is_none(), "import ended early");
        assert!(started.elapsed() < Duration::from_secs(60), "no rows");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    child.kill().await.unwrap();
    let config =
        <koine::config::Config as clap::Parser>::try_parse_from(["koine", "--endpoint", &dsn])
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = koine::run(config, listener, async {}).await.unwrap_err();
    assert!(
        err.to_string().contains("unfinished `koine import`"),
        "{err}"
    );

    // Again, from the good file: starts over without --overwrite.
    let log = import_ok(&["--from-snapshot", &snap_arg, "--endpoint", &dsn]).await;
    assert!(log.contains("starting it over"), "{log}");
    let koine = KoineProcess::start(&dsn, &[]).await;
    let mut k = koine.client().await;
    assert_eq!(history(&mut k).await, want);
    k.put("/new", "x", None).await.unwrap();
    drop(k);
    drop(koine);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Now it holds data: refused, unless --overwrite.
    let (ok, log) = koine_import(&["--from-snapshot", &snap_arg, "--endpoint", &dsn]).await;
    assert!(!ok && log.contains("is not empty"), "{log}");
    import_ok(&[
        "--from-snapshot",
        &snap_arg,
        "--endpoint",
        &dsn,
        "--overwrite",
    ])
    .await;
    let koine = KoineProcess::start(&dsn, &[]).await;
    let mut k = koine.client().await;
    assert_eq!(history(&mut k).await, want);
}

/// A snapshot of 60,000 key changes: 30 import batches, so an import of
/// it can be killed between two of them.
async fn big_snapshot(dir: &Path) -> PathBuf {
    let source = Koine::start(&[]).await;
    let mut c = connect(&source.endpoint).await;
    for t in 0..500 {
        let ops: Vec<TxnOp> = (0..120)
            .map(|i| TxnOp::put(format!("/bulk/{t:03}/{i:03}"), vec![b'v'; 100], None))
            .collect();
        c.txn(Txn::new().and_then(ops)).await.unwrap();
    }
    let path = dir.join("big.db");
    etcdctl(
        &source.endpoint,
        &["snapshot", "save", &path.display().to_string()],
    )
    .await;
    path
}

/// Log rows an import has committed to the SQLite database at `path` so
/// far (0 while the file or its schema does not exist yet).
async fn imported_rows(path: &Path) -> i64 {
    use sqlx::Connection;
    let dsn = format!("sqlite://{}?mode=ro", path.display());
    let Ok(mut c) = sqlx::SqliteConnection::connect(&dsn).await else {
        return 0;
    };
    sqlx::query_scalar("SELECT COUNT(*) FROM koine_log")
        .fetch_one(&mut c)
        .await
        .unwrap_or(0)
}

/// kine, the incumbent, as a process on `endpoint` (its own DSN forms).
struct Kine {
    endpoint: String,
    child: tokio::process::Child,
}

impl Kine {
    async fn start(dsn: &str) -> Kine {
        let bin = PathBuf::from(std::env::var("KINE_BIN").unwrap_or_else(|_| {
            panic!("KINE_BIN is not set: scripts/test.sh builds kine (scripts/kubernetes.sh build-bins)")
        }));
        assert!(bin.exists(), "{} not found", bin.display());
        let port = free_port();
        let endpoint = format!("http://127.0.0.1:{port}");
        let child = Command::new(bin)
            .args([
                "--listen-address",
                &format!("127.0.0.1:{port}"),
                "--endpoint",
                dsn,
                // Compact soon and often, keeping little: the import must
                // respect kine's compaction.
                "--compact-interval",
                "1s",
                "--compact-min-retain",
                "20",
                "--metrics-bind-address",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn kine");
        wait_ready(&endpoint).await;
        Kine { endpoint, child }
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
        let _ = self.child.wait().await;
    }
}

/// The apiserver's writes, the only ones kine takes: create if absent,
/// update or delete at a known mod revision.
async fn k8s_write(c: &mut Client, key: &str, value: Option<&str>, lease: i64) {
    let cur = c.get(key, None).await.unwrap();
    let modrev = cur.kvs().first().map_or(0, |kv| kv.mod_revision());
    let op = match value {
        Some(v) => TxnOp::put(
            key,
            v,
            (lease != 0).then(|| PutOptions::new().with_lease(lease)),
        ),
        None => TxnOp::delete(key, None),
    };
    let r = c
        .txn(
            Txn::new()
                .when([Compare::mod_revision(key, CompareOp::Equal, modrev)])
                .and_then([op])
                .or_else([TxnOp::get(key, None)]),
        )
        .await
        .unwrap();
    assert!(r.succeeded(), "{key}: the write lost a race it cannot have");
}

/// What kine answers for /registry/ at `rev`, versions left out (kine
/// keeps none; Koine counts them as etcd does).
async fn registry(c: &mut Client, rev: i64) -> Answer {
    let opts = GetOptions::new().with_prefix().with_revision(rev);
    range(c, b"/registry/", opts, false).await
}

/// kine's database → `koine import` → Koine answers /registry/ as kine did
/// at every revision kine still had, and "compacted" where kine did.
async fn kine_database_imports(kine_dsn: &str, koine_dsn: &str, target: &str) {
    let kine = Kine::start(kine_dsn).await;
    let mut c = connect(&kine.endpoint).await;
    let lease = c.lease_grant(600, None).await.unwrap().id();
    for i in 0..200 {
        let key = format!("/registry/pods/ns/p{:03}", i % 40);
        let value = format!("v{i}");
        let l = if i % 10 == 0 { lease } else { 0 };
        k8s_write(&mut c, &key, Some(&value), l).await;
        if i % 7 == 6 {
            k8s_write(&mut c, &key, None, 0).await;
        }
    }
    // kine compacts in the background: wait until its oldest revisions
    // are gone, then write on.
    let deadline = Instant::now() + Duration::from_secs(60);
    while registry(&mut c, 5).await.is_ok() {
        assert!(Instant::now() < deadline, "kine did not compact");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for i in 0..30 {
        k8s_write(&mut c, &format!("/registry/late/k{}", i % 3), Some("x"), 0).await;
    }
    let now = registry(&mut c, 0).await.unwrap().0;
    let mut want = Vec::new();
    for rev in 1..=now {
        want.push(registry(&mut c, rev).await);
    }
    kine.stop().await;

    import_ok(&["--from-kine", kine_dsn, "--endpoint", target]).await;
    let koine = Koine::start_on(koine_dsn, &[]).await;
    let mut k = connect(&koine.endpoint).await;
    let mut compacted = 0;
    for (i, w) in want.iter().enumerate() {
        let rev = i as i64 + 1;
        let got = registry(&mut k, rev).await;
        match w {
            // kine's header revision at a past revision is its current.
            Ok((_, kvs)) => assert_eq!(got.as_ref().map(|g| &g.1), Ok(kvs), "revision {rev}"),
            Err(_) => {
                compacted += 1;
                assert_eq!(got, *w, "revision {rev}")
            }
        }
    }
    assert!(
        compacted > 0,
        "kine's compaction made no revision unreadable"
    );
    assert_eq!(registry(&mut k, 0).await.unwrap().0, now);
    // kine's lease ids are their TTLs; the keys stay on it.
    let l = k
        .lease_time_to_live(
            lease,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(l.granted_ttl(), 600);
    assert!(!l.keys().is_empty());
    // The next write continues kine's revisions.
    let r = k.put("/registry/next", "n", None).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), now + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KINE_BIN (scripts/test.sh builds kine)"]
async fn kine_sqlite_imports() {
    let dir = tempfile::tempdir().unwrap();
    let kine_db = dir.path().join("kine.db");
    let target = format!("sqlite://{}", dir.path().join("koine.db").display());
    let kine_dsn = format!("sqlite://{}", kine_db.display());
    kine_database_imports(&kine_dsn, &target, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KINE_BIN (scripts/test.sh builds kine)"]
async fn kine_postgres_imports() {
    let kine_dsn = crate::dbs::fresh_postgres_dsn().await;
    let target = crate::dbs::fresh_postgres_dsn().await;
    kine_database_imports(&kine_dsn, &target, &target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs KINE_BIN (scripts/test.sh builds kine)"]
async fn kine_mysql_imports() {
    // kine takes go-sql-driver's form: user@tcp(host:port)/db.
    let dsn = crate::dbs::fresh_mariadb_dsn().await;
    let (auth, rest) = dsn.trim_start_matches("mysql://").split_once('@').unwrap();
    let (host, db) = rest.split_once('/').unwrap();
    let kine_dsn = format!("mysql://{auth}@tcp({host})/{db}");
    let target = crate::dbs::fresh_mariadb_dsn().await;
    kine_database_imports(&kine_dsn, &target, &target).await;
}
