//! `koine import`: fills an empty Koine database (any backend) from an
//! etcd snapshot file, a live etcd cluster, a kine database or another
//! Koine database, keeping every revision the source still has, so that
//! resourceVersions handed out before the move stay valid after it.
//!
//! Every source becomes one ordered stream of history rows (revision, sub
//! revision, key, its create revision, version, lease and value, or a
//! deletion) plus the store revision, the compact revision, the leases and
//! the auth store. The [`Importer`] appends the rows to the log and keeps
//! a batch per transaction; the meta row
//! says revision 0 for as long as the import runs, which no finished store
//! ever has: the server refuses to start on it, and a second `koine
//! import` starts over. The last transaction writes the leases, the auth
//! store and the real revisions. Then the history is hashed back from the
//! target as HashKV hashes it and compared with the hash of the rows the
//! source gave.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;

use crate::config::{Config, Endpoint};
use crate::sql::{Db, LogRow};
use crate::types::{Crc32c, KeyValue, Revision};

/// Rows per transaction.
const BATCH_ROWS: usize = 2000;
const BATCH_BYTES: usize = 8 << 20;
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("source").required(true).multiple(false)))]
pub struct ImportArgs {
    /// An etcd snapshot file (`etcdctl snapshot save`, or a Koine snapshot):
    /// the whole history it retains, same revisions, leases, auth.
    #[arg(long, group = "source", value_name = "FILE")]
    pub from_snapshot: Option<PathBuf>,
    /// A live etcd cluster (comma-separated http(s):// URLs): the state at
    /// its current revision R with each key's revisions and version, and
    /// the leases; with --follow, then every change after R until stopped.
    #[arg(long, group = "source", value_name = "URLS")]
    pub from_etcd: Option<String>,
    /// A kine database (sqlite path or DSN, postgres://, mysql:// or
    /// kine's user:pass@tcp(host)/db), as kine v0.17 writes it: every
    /// revision it kept, its compaction respected.
    #[arg(long, group = "source", value_name = "DSN")]
    pub from_kine: Option<String>,
    /// Another Koine database (a DSN as --endpoint takes it), with its
    /// history: e.g. SQLite to PostgreSQL when a single node becomes HA.
    #[arg(long, group = "source", value_name = "DSN")]
    pub from_koine: Option<String>,
    /// With --from-etcd: keep applying the source's changes until
    /// SIGINT/SIGTERM, then finish (the cut-over window is the time from
    /// stopping the writers to that signal).
    #[arg(long)]
    pub follow: bool,
    /// Replace whatever the target database holds.
    #[arg(long)]
    pub overwrite: bool,
    /// Read a snapshot whose SHA-256 is missing or does not match.
    #[arg(long)]
    pub skip_hash_check: bool,
    /// The target: Koine's own flags (--endpoint and the database TLS
    /// flags); the default is Koine's default SQLite database.
    #[command(flatten)]
    pub target: Config,
}

/// One change of the source's history; a `version` of 0 means unknown
/// (kine keeps none): the importer counts it as etcd does.
pub type Row = crate::sql::HashedRow;

/// What a source says besides its rows.
#[derive(Debug, Default)]
pub struct Ending {
    pub revision: Revision,
    pub compact: Revision,
    /// (id, ttl); `None`: one lease per lease id live keys use, its TTL
    /// the id (kine's leases are their TTLs).
    pub leases: Option<Vec<(i64, i64)>>,
    pub auth: Option<crate::sql::AuthRow>,
}

/// Runs `koine import`.
pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    if args.follow && args.from_etcd.is_none() {
        bail!("--follow goes with --from-etcd");
    }
    // The target is not even opened (a SQLite file not created) before
    // the source is open and checked as far as it can be before the copy
    // (a snapshot: all of it): a mistyped path, a damaged file or an
    // unreachable source leave the target as it was.
    let source = Source::open(&args).await?;
    let db = crate::open_db(&args.target)
        .await?
        .context("the import target must be a database (sqlite, postgres or mysql), not etcd")?;
    Importer::check_target(&db, args.overwrite).await?;
    let started = Instant::now();
    let mut imp = Importer::prepare(db.clone(), args.overwrite).await?;
    source.import(&mut imp, args.follow).await?;
    imp.release_held().await?;
    imp.flush().await?;
    let source_hash = imp.crc.clone().finish();
    let (rows, keys) = (imp.rows, imp.live.len());
    let ending = imp.ending.take().unwrap_or_default();
    imp.finish(&ending).await?;
    // Verification: the history as read back from the target, hashed as
    // HashKV hashes it, against the hash of what the source gave.
    let (hash, _, upto, current) = crate::mvcc::hash_history(&db, 0).await?;
    let log_rows = db.log_rows().await?;
    db.close().await;
    if hash != source_hash || log_rows != rows {
        bail!(
            "verification failed: the source gave {rows} rows hashing to {source_hash:#010x}, \
             the target holds {log_rows} hashing to {hash:#010x}"
        );
    }
    tracing::info!(
        revision = current,
        compact = ending.compact,
        rows,
        keys,
        hash = format!("{hash:#010x}"),
        hashed_to = upto,
        seconds = started.elapsed().as_secs_f64(),
        "import finished and verified: the target's history matches the source's"
    );
    Ok(())
}

/// A source, opened (and checked as far as it can be) before the target
/// is touched.
enum Source {
    Snapshot {
        snap: crate::snapshot::EtcdSnapshot,
        path: PathBuf,
        contents: crate::snapshot::Contents,
    },
    Koine {
        name: String,
        db: Db,
    },
    Kine {
        name: String,
        pool: KinePool,
        revision: Revision,
        compact: Revision,
    },
    Etcd(EtcdState),
}

impl Source {
    async fn open(args: &ImportArgs) -> anyhow::Result<Source> {
        if let Some(path) = &args.from_snapshot {
            open_snapshot(path.clone(), args.skip_hash_check).await
        } else if let Some(dsn) = &args.from_koine {
            let name = format!("Koine database {}", redacted(dsn));
            let db = open_koine(dsn, &args.target)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?;
            Ok(Source::Koine { name, db })
        } else if let Some(dsn) = &args.from_kine {
            let name = format!("kine database {}", redacted(dsn));
            let (pool, revision, compact) = open_kine(dsn)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?;
            Ok(Source::Kine {
                name,
                pool,
                revision,
                compact,
            })
        } else if let Some(urls) = &args.from_etcd {
            let name = format!("etcd {}", redacted(urls));
            let state = open_etcd(urls, &args.target)
                .await
                .map_err(|e| anyhow::anyhow!("{name}: {e:#}"))?;
            Ok(Source::Etcd(EtcdState { name, ..state }))
        } else {
            unreachable!("clap requires a source")
        }
    }

    /// Copies the source's history into the importer; errors of the source
    /// name it.
    async fn import(self, imp: &mut Importer, follow: bool) -> anyhow::Result<()> {
        match self {
            Source::Snapshot {
                snap,
                path,
                contents,
            } => from_snapshot(imp, snap, path, contents).await,
            Source::Koine { name, db } => {
                let done = from_koine(imp, &db, &name).await;
                db.close().await;
                done
            }
            Source::Kine {
                name,
                pool,
                revision,
                compact,
            } => {
                let done = from_kine(imp, &pool, &name, revision, compact).await;
                pool.close().await;
                done
            }
            Source::Etcd(state) => from_etcd(imp, state, follow).await,
        }
    }
}

/// A DSN or URL list as errors show it: credentials (up to an `@`) and a
/// query with a password left out.
fn redacted(dsn: &str) -> String {
    let mut out = match (dsn.find("://"), dsn.rfind('@')) {
        (Some(start), Some(at)) if at > start => format!("{}://***{}", &dsn[..start], &dsn[at..]),
        (None, Some(at)) => format!("***{}", &dsn[at..]),
        _ => dsn.to_string(),
    };
    if let Some(q) = out.find('?')
        && out[q..].to_ascii_lowercase().contains("password")
    {
        out.truncate(q);
        out.push_str("?***");
    }
    out
}

/// Opens an etcd snapshot and reads all of it ([`EtcdSnapshot::verify`]),
/// on a blocking thread.
///
/// [`EtcdSnapshot::verify`]: crate::snapshot::EtcdSnapshot::verify
async fn open_snapshot(path: PathBuf, skip_hash_check: bool) -> anyhow::Result<Source> {
    tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let snap = crate::snapshot::EtcdSnapshot::open(&path, skip_hash_check)?;
        let contents = snap.verify()?;
        tracing::info!(
            file = %path.display(),
            rows = contents.rows,
            revision = contents.last,
            compact = contents.compact,
            leases = contents.leases.len(),
            seconds = started.elapsed().as_secs_f64(),
            "snapshot read and checked, before the target is touched"
        );
        Ok(Source::Snapshot {
            snap,
            path,
            contents,
        })
    })
    .await?
}

/// Copies the key bucket of a snapshot `verify` checked, read on a
/// blocking thread.
async fn from_snapshot(
    imp: &mut Importer,
    snap: crate::snapshot::EtcdSnapshot,
    path: PathBuf,
    contents: crate::snapshot::Contents,
) -> anyhow::Result<()> {
    let crate::snapshot::Contents {
        compact,
        last,
        rows,
        leases,
        auth_enabled,
        auth_revision,
        auth,
    } = contents;
    let ending = Ending {
        // etcd's rule on restore: the revision is the newest in the key
        // bucket, or the compaction if that is newer.
        revision: last.max(compact).max(1),
        compact,
        leases: Some(leases),
        auth: Some(crate::sql::AuthRow {
            revision: auth_revision,
            enabled: auth_enabled,
            state: prost::Message::encode_to_vec(&auth).into(),
        }),
    };
    tracing::info!(
        file = %path.display(),
        rows,
        revision = ending.revision,
        compact = ending.compact,
        "importing an etcd snapshot"
    );
    imp.begin(ending.compact, last);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Row>(4096);
    let reader = tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let mut n = 0;
        snap.for_each_row(|row| {
            n += 1;
            tx.blocking_send(row)
                .map_err(|_| anyhow::anyhow!("the import stopped"))
        })?;
        Ok(n)
    });
    while let Some(row) = rx.recv().await {
        imp.push(row).await?;
    }
    let read = reader.await??;
    if read != rows {
        bail!(
            "snapshot {}: {read} rows in bucket \"key\" now, {rows} when it was checked: the file changed during the import",
            path.display()
        );
    }
    imp.ending = Some(ending);
    Ok(())
}

/// Opens another Koine database and checks it holds a finished store (not
/// the target itself).
async fn open_koine(dsn: &str, target: &Config) -> anyhow::Result<Db> {
    let mut cfg = target.clone();
    cfg.endpoint = dsn.to_string();
    let same = match (cfg.storage()?, target.storage()?) {
        (Endpoint::Sqlite(src), Endpoint::Sqlite(dst)) => {
            // Connecting creates a missing SQLite file: a mistyped path
            // would import an empty store.
            let src = std::fs::canonicalize(&src.path)
                .with_context(|| format!("cannot open {}", src.path.display()))?;
            std::fs::canonicalize(&dst.path).is_ok_and(|dst| dst == src)
        }
        (Endpoint::Sqlite(src), _) => {
            std::fs::metadata(&src.path)
                .with_context(|| format!("cannot open {}", src.path.display()))?;
            false
        }
        _ => dsn == target.endpoint,
    };
    if same {
        bail!("it is the import's target");
    }
    let db = crate::open_db(&cfg)
        .await?
        .context("--from-koine takes a database DSN")?;
    let meta = db.meta().await;
    match meta {
        Ok(m) if m.revision == 0 => {
            db.close().await;
            bail!("it holds an unfinished import")
        }
        Ok(_) => Ok(db),
        Err(e) => {
            db.close().await;
            Err(e.into())
        }
    }
}

/// Reads another Koine database's history in one read transaction.
async fn from_koine(imp: &mut Importer, src: &Db, name: &str) -> anyhow::Result<()> {
    copy_koine(imp, src)
        .await
        .map_err(|e| anyhow::anyhow!("importing from {name}: {e:#}"))
}

async fn copy_koine(imp: &mut Importer, src: &Db) -> anyhow::Result<()> {
    let mut tx = src.begin_read().await?;
    let meta = tx.read_meta().await?;
    if meta.revision == 0 {
        bail!("the source database holds an unfinished import");
    }
    tracing::info!(
        revision = meta.revision,
        compact = meta.compact_revision,
        "importing a Koine database"
    );
    imp.begin(meta.compact_revision, meta.revision);
    let mut pages = crate::sql::HistoryPager::new(meta.revision);
    loop {
        let page = pages.next(&mut tx).await?;
        if page.is_empty() {
            break;
        }
        for r in page {
            imp.push(r).await?;
        }
    }
    let leases = tx
        .lease_list()
        .await?
        .into_iter()
        .map(|l| (l.id, l.ttl))
        .collect();
    let auth = tx.auth().await?;
    tx.commit().await?;
    imp.ending = Some(Ending {
        revision: meta.revision,
        compact: meta.compact_revision,
        leases: Some(leases),
        auth: Some(auth),
    });
    Ok(())
}

// ------------------------------------------------------------------ kine

/// kine's table, read through sqlx directly (no Koine schema there).
enum KinePool {
    Sqlite(sqlx::SqlitePool),
    Postgres(sqlx::PgPool),
    MySql(sqlx::MySqlPool),
}

/// One row of kine's table: (id, name, created, deleted, create_revision,
/// lease, value).
type KineRow = (i64, String, i64, i64, i64, i64, Option<Vec<u8>>);

/// kine's internal compaction row (its prev_revision is the compact
/// revision) and where kine keeps the apiserver's own `compact_rev_key`
/// (its value prefixed with "version|").
const KINE_COMPACT: &str = "compact_rev_key";
const KINE_COMPACT_API: &str = "compact_rev_key_apiserver";

macro_rules! kine_query {
    ($pool:expr, $sql:expr, $after:expr, $limit:expr) => {
        sqlx::query_as::<_, KineRow>(sqlx::AssertSqlSafe($sql.to_string()))
            .bind($after)
            .bind($limit)
            .fetch_all($pool)
            .await
    };
}

macro_rules! kine_scalar {
    ($pool:expr, $sql:expr) => {
        sqlx::query_as::<_, (Option<i64>,)>(sqlx::AssertSqlSafe($sql.to_string()))
            .fetch_one($pool)
            .await
            .map(|r| r.0.unwrap_or(0))
    };
}

impl KinePool {
    async fn connect(dsn: &str) -> anyhow::Result<KinePool> {
        Ok(match crate::config::parse_endpoint(dsn)? {
            Endpoint::Sqlite(c) => {
                let opts = sqlx::sqlite::SqliteConnectOptions::new()
                    .filename(&c.path)
                    .read_only(true);
                KinePool::Sqlite(
                    sqlx::sqlite::SqlitePoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts)
                        .await?,
                )
            }
            Endpoint::Postgres(dsn) => {
                let mut opts = sqlx::postgres::PgConnectOptions::from_str(&dsn).map_err(|e| {
                    anyhow::anyhow!("invalid postgres DSN: {}", crate::sql::redact_error(&e))
                })?;
                if opts.get_database().is_none_or(str::is_empty) {
                    opts = opts.database("kubernetes");
                }
                KinePool::Postgres(
                    sqlx::postgres::PgPoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts)
                        .await?,
                )
            }
            Endpoint::MySql(dsn) => {
                let (url, socket) = crate::sql::mysql::normalize_dsn(&dsn);
                let mut opts = sqlx::mysql::MySqlConnectOptions::from_str(&url).map_err(|e| {
                    anyhow::anyhow!("invalid mysql DSN: {}", crate::sql::redact_error(&e))
                })?;
                if let Some(s) = socket {
                    opts = opts.socket(s);
                }
                if opts.get_database().is_none_or(str::is_empty) {
                    opts = opts.database("kubernetes");
                }
                KinePool::MySql(
                    sqlx::mysql::MySqlPoolOptions::new()
                        .max_connections(1)
                        .connect_with(opts)
                        .await?,
                )
            }
            Endpoint::Etcd(_) => bail!("--from-kine takes kine's database DSN"),
        })
    }

    /// The 64-bit integer type of a CAST, in each database's spelling.
    fn int(&self) -> &'static str {
        match self {
            KinePool::Sqlite(_) => "INTEGER",
            KinePool::Postgres(_) => "BIGINT",
            KinePool::MySql(_) => "SIGNED",
        }
    }

    /// kine's columns as 64-bit integers, in each database's spelling.
    fn select(&self) -> String {
        let int = self.int();
        let (p1, p2) = match self {
            KinePool::Postgres(_) => ("$1", "$2"),
            KinePool::Sqlite(_) | KinePool::MySql(_) => ("?", "?"),
        };
        format!(
            "SELECT CAST(id AS {int}), COALESCE(name, ''), CAST(COALESCE(created, 0) AS {int}), \
             CAST(COALESCE(deleted, 0) AS {int}), CAST(COALESCE(create_revision, 0) AS {int}), \
             CAST(COALESCE(lease, 0) AS {int}), value FROM kine WHERE id > {p1} ORDER BY id LIMIT {p2}"
        )
    }

    async fn page(&self, after: i64, limit: i64) -> anyhow::Result<Vec<KineRow>> {
        let sql = self.select();
        Ok(match self {
            KinePool::Sqlite(p) => kine_query!(p, &sql, after, limit)?,
            KinePool::Postgres(p) => kine_query!(p, &sql, after, limit)?,
            KinePool::MySql(p) => kine_query!(p, &sql, after, limit)?,
        })
    }

    async fn scalar(&self, sql: &str) -> anyhow::Result<i64> {
        Ok(match self {
            KinePool::Sqlite(p) => kine_scalar!(p, sql)?,
            KinePool::Postgres(p) => kine_scalar!(p, sql)?,
            KinePool::MySql(p) => kine_scalar!(p, sql)?,
        })
    }

    async fn close(&self) {
        match self {
            KinePool::Sqlite(p) => p.close().await,
            KinePool::Postgres(p) => p.close().await,
            KinePool::MySql(p) => p.close().await,
        }
    }
}

/// Connects to kine's database and reads its newest and compact
/// revisions.
async fn open_kine(dsn: &str) -> anyhow::Result<(KinePool, Revision, Revision)> {
    let pool = KinePool::connect(dsn).await?;
    let int = pool.int();
    let ends = async {
        let revision = pool
            .scalar(&format!("SELECT CAST(MAX(id) AS {int}) FROM kine"))
            .await?;
        let compact = pool
            .scalar(&format!(
                "SELECT CAST(MAX(prev_revision) AS {int}) FROM kine WHERE name = '{KINE_COMPACT}'"
            ))
            .await?;
        anyhow::Ok((revision, compact))
    };
    match ends.await {
        Ok((revision, compact)) => Ok((pool, revision, compact)),
        Err(e) => {
            pool.close().await;
            Err(e)
        }
    }
}

async fn from_kine(
    imp: &mut Importer,
    pool: &KinePool,
    name: &str,
    revision: Revision,
    compact: Revision,
) -> anyhow::Result<()> {
    copy_kine(imp, pool, revision, compact)
        .await
        .map_err(|e| anyhow::anyhow!("importing from {name}: {e:#}"))
}

async fn copy_kine(
    imp: &mut Importer,
    pool: &KinePool,
    revision: Revision,
    compact: Revision,
) -> anyhow::Result<()> {
    const PAGE: i64 = 2000;
    tracing::info!(revision, compact, "importing a kine database");
    imp.begin(compact, revision);
    let mut after = 0;
    loop {
        let page = pool.page(after, PAGE).await?;
        for (id, name, created, deleted, create_revision, lease, value) in &page {
            after = *id;
            // kine's bookkeeping rows: gap fillers and its compaction mark.
            if name == KINE_COMPACT || name.starts_with("gap-") {
                continue;
            }
            let mut value = Bytes::from(value.clone().unwrap_or_default());
            let mut version = 0;
            let mut key = Bytes::from(name.clone().into_bytes());
            if name == KINE_COMPACT_API {
                // The apiserver's compact_rev_key, kept under another
                // name with its version in front of the value.
                key = Bytes::from_static(KINE_COMPACT.as_bytes());
                if let Some(at) = value.iter().position(|b| *b == b'|') {
                    version = std::str::from_utf8(&value[..at])
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0);
                    value = value.slice(at + 1..);
                }
            }
            imp.push(Row {
                revision: *id,
                sub: 0,
                key,
                create_revision: if *created != 0 { *id } else { *create_revision },
                version,
                lease: *lease,
                value,
                deleted: *deleted != 0,
            })
            .await?;
        }
        if (page.len() as i64) < PAGE {
            break;
        }
    }
    imp.ending = Some(Ending {
        revision: revision.max(compact).max(1),
        compact,
        leases: None,
        auth: None,
    });
    Ok(())
}

// ------------------------------------------------------------------ etcd

/// A live etcd, opened: its state at revision `at`.
struct EtcdState {
    name: String,
    channel: tonic::transport::Channel,
    state: Vec<crate::proto::mvccpb::KeyValue>,
    at: Revision,
}

/// Connects to the source etcd and reads its state at its current
/// revision R, page by page, pinned to R.
async fn open_etcd(urls: &str, config: &Config) -> anyhow::Result<EtcdState> {
    use crate::proto::etcdserverpb as pb;
    use pb::kv_client::KvClient;
    const PAGE: i64 = 1000;
    let Endpoint::Etcd(urls) = crate::config::parse_endpoint(urls)? else {
        bail!("--from-etcd takes http(s):// URLs");
    };
    let upstream = crate::passthrough::upstream::Upstream::new(&urls, config)?;
    let channel = upstream.channel(0);
    let mut kv = KvClient::new(channel.clone()).max_decoding_message_size(usize::MAX);
    let mut state = Vec::new();
    let mut at = 0;
    let mut start = vec![0u8];
    loop {
        let resp = kv
            .range(pb::RangeRequest {
                key: start.clone().into(),
                range_end: vec![0u8].into(),
                limit: PAGE,
                revision: at,
                ..Default::default()
            })
            .await
            .context("reading its state")?
            .into_inner();
        if at == 0 {
            at = resp.header.as_ref().map_or(0, |h| h.revision);
            tracing::info!(
                revision = at,
                "importing a live etcd: its state at revision"
            );
        }
        let more = resp.more;
        if let Some(last) = resp.kvs.last() {
            start = last.key.to_vec();
            start.push(0);
        }
        state.extend(resp.kvs);
        if !more {
            break;
        }
    }
    state.sort_by(|a, b| (a.mod_revision, &a.key).cmp(&(b.mod_revision, &b.key)));
    Ok(EtcdState {
        name: String::new(),
        channel,
        state,
        at,
    })
}

async fn from_etcd(imp: &mut Importer, source: EtcdState, follow: bool) -> anyhow::Result<()> {
    let name = source.name.clone();
    copy_etcd(imp, source, follow)
        .await
        .map_err(|e| anyhow::anyhow!("importing from {name}: {e:#}"))
}

/// Copies the state read at R, then (with `follow`) every change after R.
async fn copy_etcd(imp: &mut Importer, source: EtcdState, follow: bool) -> anyhow::Result<()> {
    use crate::proto::etcdserverpb as pb;
    use pb::lease_client::LeaseClient;
    use pb::watch_client::WatchClient;
    let EtcdState {
        channel, state, at, ..
    } = source;
    // No history below R: the import is compacted at R.
    imp.begin(at, at);
    let mut prev = (0, 0);
    for k in state {
        let sub = if prev.0 == k.mod_revision {
            prev.1 + 1
        } else {
            0
        };
        prev = (k.mod_revision, sub);
        imp.push(Row {
            revision: k.mod_revision,
            sub,
            key: k.key,
            create_revision: k.create_revision,
            version: k.version,
            lease: k.lease,
            value: k.value,
            deleted: false,
        })
        .await?;
    }
    let mut last = at;
    if follow {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tx.send(pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: vec![0u8].into(),
                    range_end: vec![0u8].into(),
                    start_revision: at + 1,
                    progress_notify: true,
                    ..Default::default()
                },
            )),
        })
        .await?;
        let mut watch = WatchClient::new(channel.clone())
            .max_decoding_message_size(usize::MAX)
            .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .context("watching it")?
            .into_inner();
        tracing::info!(
            from = at + 1,
            "following the source's changes; stop the writers, wait for the revision to settle, then send SIGINT or SIGTERM to finish"
        );
        let stop = crate::shutdown_signal();
        tokio::pin!(stop);
        let mut sub = (0, 0);
        loop {
            let msg = tokio::select! {
                _ = &mut stop => break,
                m = watch.message() => m.context("watching it")?,
            };
            let Some(resp) = msg else {
                bail!("it ended the watch");
            };
            if resp.canceled {
                bail!("it canceled the watch: {}", resp.cancel_reason);
            }
            for ev in resp.events {
                let Some(k) = ev.kv else { continue };
                let s = if sub.0 == k.mod_revision {
                    sub.1 + 1
                } else {
                    0
                };
                sub = (k.mod_revision, s);
                let deleted = ev.r#type == crate::proto::mvccpb::event::EventType::Delete as i32;
                last = last.max(k.mod_revision);
                imp.push(Row {
                    revision: k.mod_revision,
                    sub: s,
                    key: k.key,
                    create_revision: if deleted { 0 } else { k.create_revision },
                    version: if deleted { 0 } else { k.version },
                    lease: if deleted { 0 } else { k.lease },
                    value: if deleted { Bytes::new() } else { k.value },
                    deleted,
                })
                .await?;
            }
            imp.flush().await?;
            if let Some(h) = resp.header {
                last = last.max(h.revision);
            }
            tracing::info!(revision = last, rows = imp.rows, "following");
        }
        drop(tx);
    }
    // Leases at the end (they come and go while following).
    let mut leases_client = LeaseClient::new(channel);
    let ids = leases_client
        .lease_leases(pb::LeaseLeasesRequest {})
        .await?
        .into_inner()
        .leases;
    let mut leases = Vec::new();
    for l in ids {
        let ttl = leases_client
            .lease_time_to_live(pb::LeaseTimeToLiveRequest {
                id: l.id,
                keys: false,
            })
            .await?
            .into_inner();
        if ttl.ttl > 0 {
            leases.push((l.id, ttl.granted_ttl));
        }
    }
    imp.ending = Some(Ending {
        revision: last,
        compact: at,
        leases: Some(leases),
        auth: None,
    });
    Ok(())
}

// -------------------------------------------------------------- importer

/// What the importer knows of a live key.
struct Live {
    mod_revision: Revision,
    version: i64,
    lease: i64,
}

/// Writes the rows of one source into the target.
pub struct Importer {
    db: Db,
    compact: Revision,
    /// Rows at or below the compact revision, newest per key: what
    /// compaction leaves of them is decided when the first newer row comes.
    held: HashMap<Bytes, Row>,
    held_done: bool,
    live: HashMap<Bytes, Live>,
    batch: Vec<LogRow>,
    batch_bytes: usize,
    last: (Revision, i64),
    crc: Crc32c,
    rows: u64,
    bytes: u64,
    /// The source's newest revision, for the progress line.
    until: Revision,
    started: Instant,
    reported: Instant,
    ending: Option<Ending>,
}

impl Importer {
    /// Checks the target is empty, or an unfinished import, or that
    /// `overwrite` lets it be replaced; answers whether it is an
    /// unfinished import. Writes nothing.
    pub async fn check_target(db: &Db, overwrite: bool) -> anyhow::Result<bool> {
        let meta = db.meta().await?;
        let rows = db.log_rows().await?;
        let leases = db.leases_count().await?;
        let unfinished = meta.revision == 0;
        if !unfinished && !overwrite && (meta.revision > 1 || rows > 0 || leases > 0) {
            bail!(
                "the target database is not empty (revision {}, {rows} history rows, {leases} leases); \
                 --overwrite replaces what it holds",
                meta.revision
            );
        }
        Ok(unfinished)
    }

    /// Checks the target again ([`Importer::check_target`]), empties it
    /// and marks it as being imported into: only once the source is open.
    pub async fn prepare(db: Db, overwrite: bool) -> anyhow::Result<Importer> {
        if Self::check_target(&db, overwrite).await? {
            tracing::warn!("the target holds an unfinished import: starting it over");
        }
        db.wipe_for_import().await?;
        Ok(Importer {
            db,
            compact: 0,
            held: HashMap::new(),
            held_done: false,
            live: HashMap::new(),
            batch: Vec::new(),
            batch_bytes: 0,
            last: (0, -1),
            crc: Crc32c::new(),
            rows: 0,
            bytes: 0,
            until: 0,
            started: Instant::now(),
            reported: Instant::now(),
            ending: None,
        })
    }

    /// The compact revision and the newest revision the rows will reach.
    fn begin(&mut self, compact: Revision, until: Revision) {
        self.compact = compact;
        self.until = until;
        self.started = Instant::now();
    }

    /// Takes the next row of the history (in revision order).
    pub async fn push(&mut self, row: Row) -> anyhow::Result<()> {
        if (row.revision, row.sub) <= self.last {
            bail!(
                "the source's history is out of order at revision {} sub {}",
                row.revision,
                row.sub
            );
        }
        self.last = (row.revision, row.sub);
        if row.revision <= self.compact {
            // A compacted revision keeps only each key's newest version,
            // and none of a deleted key.
            self.held.insert(row.key.clone(), row);
            return Ok(());
        }
        self.release_held().await?;
        self.append(row).await
    }

    /// Appends what compaction keeps of the rows at or below the compact
    /// revision, in order.
    async fn release_held(&mut self) -> anyhow::Result<()> {
        if self.held_done {
            return Ok(());
        }
        self.held_done = true;
        let mut kept: Vec<Row> = std::mem::take(&mut self.held)
            .into_values()
            .filter(|r| !r.deleted)
            .collect();
        kept.sort_by_key(|r| (r.revision, r.sub));
        for r in kept {
            self.append(r).await?;
        }
        Ok(())
    }

    async fn append(&mut self, mut row: Row) -> anyhow::Result<()> {
        let prev = self.live.get(&row.key);
        let prev_revision = prev.map_or(0, |p| p.mod_revision);
        if row.deleted {
            self.live.remove(&row.key);
            row.create_revision = 0;
            row.version = 0;
            row.lease = 0;
            row.value = Bytes::new();
        } else {
            if row.version == 0 {
                row.version = prev.map_or(1, |p| p.version + 1);
            }
            if row.create_revision == 0 {
                row.create_revision = row.revision;
            }
            self.live.insert(
                row.key.clone(),
                Live {
                    mod_revision: row.revision,
                    version: row.version,
                    lease: row.lease,
                },
            );
        }
        crate::mvcc::hash_row(&mut self.crc, &row);
        self.rows += 1;
        let size = row.key.len() + row.value.len() + 64;
        self.bytes += size as u64;
        self.batch_bytes += size;
        self.batch.push(LogRow {
            revision: row.revision,
            sub: row.sub,
            kv: KeyValue {
                key: row.key,
                create_revision: row.create_revision,
                mod_revision: row.revision,
                version: row.version,
                value: row.value,
                lease: row.lease,
            },
            deleted: row.deleted,
            prev_revision,
        });
        if self.batch.len() >= BATCH_ROWS || self.batch_bytes >= BATCH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes the rows taken so far to the log.
    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let mut tx = self.db.begin_write().await?;
        tx.append_log(&rows).await?;
        tx.commit().await?;
        if self.reported.elapsed() >= PROGRESS_EVERY {
            self.reported = Instant::now();
            self.progress(rows.last().map_or(0, |r| r.revision));
        }
        Ok(())
    }

    fn progress(&self, revision: Revision) {
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        let rate = self.rows as f64 / secs;
        let done = if self.until > 0 {
            (revision as f64 / self.until as f64).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let eta = if done > 0.0 {
            secs * (1.0 - done) / done
        } else {
            f64::NAN
        };
        tracing::info!(
            rows = self.rows,
            keys = self.live.len(),
            revision,
            of = self.until,
            percent = format!("{:.1}", done * 100.0),
            megabytes = format!("{:.1}", self.bytes as f64 / 1e6),
            rows_per_second = format!("{rate:.0}"),
            eta_seconds = format!("{eta:.0}"),
            "importing"
        );
    }

    /// Writes the rest: leases, auth, and the revisions that end the
    /// import.
    async fn finish(mut self, ending: &Ending) -> anyhow::Result<()> {
        self.release_held().await?;
        self.flush().await?;
        self.progress(ending.revision);
        if ending.revision < self.last.0 {
            bail!(
                "the source's revision {} is older than its history ({})",
                ending.revision,
                self.last.0
            );
        }
        let leases: Vec<(i64, i64)> = match &ending.leases {
            Some(l) => l.clone(),
            None => self
                .live
                .values()
                .map(|l| l.lease)
                .filter(|l| *l != 0)
                .collect::<BTreeSet<_>>()
                .into_iter()
                .map(|l| (l, l))
                .collect(),
        };
        let mut tx = self.db.begin_write().await?;
        for (id, ttl) in &leases {
            tx.lease_insert(*id, *ttl).await?;
        }
        if let Some(auth) = &ending.auth {
            tx.auth_update(auth).await?;
        }
        tx.finish_import(ending.revision, ending.compact).await?;
        tx.commit().await?;
        tracing::info!(
            leases = leases.len(),
            revision = ending.revision,
            compact = ending.compact,
            "import written"
        );
        Ok(())
    }
}
