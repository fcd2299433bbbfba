//! Several Koine processes on one PostgreSQL or MariaDB database: dense
//! revisions across instances, every watcher on every instance sees every
//! event in order exactly once, Txns see other instances' writes, one
//! leader at a time for lease expiry and compaction, and kill -9 of one
//! instance leaves the others serving.

use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp, WatchOptions};

use crate::harness::KoineProcess;

async fn three(dsn: &str, extra: &[&str]) -> Vec<KoineProcess> {
    let mut v = Vec::new();
    for _ in 0..3 {
        v.push(KoineProcess::start(dsn, extra).await);
    }
    v
}

async fn dense_revisions_and_watch_fanout(dsn: String) {
    let nodes = three(&dsn, &[]).await;
    let mut clients = Vec::new();
    for n in &nodes {
        clients.push(n.client().await);
    }
    let start = clients[0]
        .get("x", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let mut watchers = Vec::new();
    for c in &mut clients {
        let mut w = c
            .watch(
                "ha/",
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(start + 1),
                ),
            )
            .await
            .unwrap();
        assert!(w.message().await.unwrap().unwrap().created());
        watchers.push(w);
    }
    let per_node = 200;
    let writers: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(n, c)| {
            let mut c = c.clone();
            tokio::spawn(async move {
                let mut revs = Vec::new();
                for i in 0..per_node {
                    let r = c
                        .put(format!("ha/{n}/{}", i % 17), format!("{n}-{i}"), None)
                        .await
                        .unwrap();
                    revs.push(r.header().unwrap().revision());
                }
                revs
            })
        })
        .collect();
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await.unwrap());
    }
    acked.sort();
    let total = 3 * per_node;
    let want: Vec<i64> = (start + 1..=start + total as i64).collect();
    assert_eq!(
        acked, want,
        "revisions are dense and unique across instances"
    );
    for (i, w) in watchers.iter_mut().enumerate() {
        let mut got = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < total {
            let r = tokio::time::timeout_at(deadline.into(), w.message())
                .await
                .unwrap_or_else(|_| panic!("watcher {i} saw {} of {total}", got.len()))
                .unwrap()
                .unwrap();
            got.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
        }
        assert_eq!(got, want, "watcher on instance {i}");
    }
}

async fn txn_sees_other_instances(dsn: String) {
    let nodes = three(&dsn, &[]).await;
    let mut a = nodes[0].client().await;
    let mut b = nodes[1].client().await;
    let r = a.put("t/k", "from-a", None).await.unwrap();
    let rev = r.header().unwrap().revision();
    let t = Txn::new()
        .when([Compare::mod_revision("t/k", CompareOp::Equal, rev)])
        .and_then([TxnOp::put("t/k", "from-b", None)]);
    assert!(
        b.txn(t).await.unwrap().succeeded(),
        "B sees A's write at once"
    );
    // Three instances race to create one key: exactly one wins.
    let racers: Vec<_> = nodes
        .iter()
        .map(|n| {
            let ep = n.endpoint.clone();
            tokio::spawn(async move {
                let mut c = etcd_client::Client::connect([ep], None).await.unwrap();
                let mut wins = 0;
                for i in 0..50 {
                    let k = format!("t/race/{i}");
                    let t = Txn::new()
                        .when([Compare::create_revision(k.clone(), CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(k, "x", None)]);
                    if c.txn(t).await.unwrap().succeeded() {
                        wins += 1;
                    }
                }
                wins
            })
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        wins += r.await.unwrap();
    }
    assert_eq!(wins, 50);
}

async fn leader_failover(dsn: String) {
    let mut nodes = three(&dsn, &["--lease-check-interval", "100ms"]).await;
    let leader_of = |nodes: &[KoineProcess]| -> Vec<usize> {
        nodes
            .iter()
            .enumerate()
            .filter(|(_, n)| n.log_text().contains("became leader"))
            .map(|(i, _)| i)
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while leader_of(&nodes).is_empty() {
        assert!(Instant::now() < deadline, "no leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let leaders = leader_of(&nodes);
    assert_eq!(leaders.len(), 1, "one leader at a time");
    let leader = leaders[0];
    let other = (leader + 1) % 3;
    let mut c = nodes[other].client().await;
    let lease = c.lease_grant(2, None).await.unwrap().id();
    c.put("lf/k", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    nodes[leader].kill().await;
    // The key still expires: another instance takes over.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let g = c.get("lf/k", None).await.unwrap();
        if g.kvs().is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "lease did not expire after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let survivors: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    assert!(
        survivors
            .iter()
            .any(|i| nodes[*i].log_text().contains("became leader")),
        "a survivor took over"
    );
    for i in survivors {
        let mut c = nodes[i].client().await;
        c.put("lf/alive", "yes", None).await.unwrap();
    }
}

/// Instances started at the same moment on a fresh database all come up
/// (database creation and migrations are race-free).
async fn simultaneous_start(dsn: String) {
    let nodes = futures::future::join_all((0..3).map(|_| KoineProcess::start(&dsn, &[]))).await;
    for (i, n) in nodes.iter().enumerate() {
        let mut c = n.client().await;
        c.put(format!("s/{i}"), "v", None).await.unwrap();
    }
    let mut c = nodes[0].client().await;
    let g = c
        .get("s/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!((g.count(), g.header().unwrap().revision()), (3, 4));
}

/// Connections opened so far: on PostgreSQL to the database `dsn` names
/// (`pg_stat_database.sessions`), on MySQL to the whole server (its
/// `Connections` status; the caller's server must be its own). Read on
/// `admin`, one connection kept across reads.
async fn connections_opened(dsn: &str, admin: &mut Admin) -> i64 {
    let db = dsn.rsplit_once('/').unwrap().1.split('?').next().unwrap();
    match admin {
        Admin::Postgres(c) => sqlx::query_scalar::<_, Option<i64>>(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1",
        )
        .bind(db)
        .fetch_optional(c)
        .await
        .unwrap()
        .flatten()
        .unwrap_or(0),
        Admin::MySql(c) => {
            let (_, n): (String, String) = sqlx::query_as("SHOW GLOBAL STATUS LIKE 'Connections'")
                .fetch_one(c)
                .await
                .unwrap();
            n.parse().unwrap()
        }
    }
}

enum Admin {
    Postgres(sqlx::PgConnection),
    MySql(sqlx::MySqlConnection),
}

/// A follower asks for the leader lock every second; a refused attempt
/// leaves its connection in the pool. (Closing it each time made the
/// follower open a connection every second — a TLS handshake and a server
/// process — and its other queries waited behind that: watch delivery
/// across two instances on MariaDB had a p99 of 60 ms.)
async fn followers_keep_their_connections(dsn: String) {
    use sqlx::Connection;
    let nodes = [
        KoineProcess::start(&dsn, &[]).await,
        KoineProcess::start(&dsn, &[]).await,
    ];
    let server = dsn.rsplit_once('/').unwrap().0;
    let mut admin = if dsn.starts_with("postgres") {
        Admin::Postgres(
            sqlx::PgConnection::connect(&format!("{server}/postgres?sslmode=disable"))
                .await
                .unwrap(),
        )
    } else {
        Admin::MySql(sqlx::MySqlConnection::connect(server).await.unwrap())
    };
    // Once the pools have what they need, no connection is opened for
    // 2.5 s: two and more of the follower's attempts. PostgreSQL reports
    // a session within a second (its statistics are flushed that often),
    // so the counts are allowed time to settle.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    loop {
        seen.push(connections_opened(&dsn, &mut admin).await);
        if seen.len() >= 6
            && seen[seen.len() - 6..]
                .iter()
                .all(|n| *n == seen[seen.len() - 1])
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "connections kept being opened, every 0.5 s: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        nodes
            .iter()
            .filter(|n| n.log_text().contains("became leader"))
            .count(),
        1,
        "one leader"
    );
}

/// The same on a MariaDB server of its own (its connection count is
/// server-wide).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_their_connections_mysql() {
    let server = crate::dbs::MariaDb::start().await;
    followers_keep_their_connections(server.dsn("koine_followers")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn followers_keep_their_connections_postgres() {
    followers_keep_their_connections(crate::dbs::fresh_postgres_dsn().await).await;
}

macro_rules! on_shared_databases {
    ($($name:ident),*) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn postgres() { super::$name(crate::dbs::fresh_postgres_dsn().await).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn pgbouncer() { super::$name(crate::dbs::fresh_pgbouncer_dsn().await).await }
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn mysql() { super::$name(crate::dbs::fresh_mariadb_dsn().await).await }
            }
        )*
    };
}

on_shared_databases!(
    dense_revisions_and_watch_fanout,
    txn_sees_other_instances,
    leader_failover,
    simultaneous_start
);

/// The password in a DSN never reaches the log, whether the database
/// answers or not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_stay_out_of_logs() {
    let pg = crate::dbs::shared_postgres();
    let dsn = pg
        .dsn("koine_pw_test")
        .replace("postgres@", "postgres:s3cr3t-pw@");
    let node = KoineProcess::start(&dsn, &["--log-level", "debug"]).await;
    let mut c = node.client().await;
    c.put("k", "v", None).await.unwrap();
    assert!(
        !node.log_text().contains("s3cr3t-pw"),
        "{}",
        node.log_text()
    );

    // Unreachable database: Koine retries with a clear line, no password.
    let port = crate::harness::free_port();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("koine.log");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_koine"))
        .args([
            "--listen-address",
            &format!("127.0.0.1:{}", crate::harness::free_port()),
        ])
        .args([
            "--endpoint",
            &format!("mysql://root:s3cr3t-pw@tcp(127.0.0.1:{port})/k"),
        ])
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.matches("database not reachable, retrying").count() >= 2 {
            assert!(!text.contains("s3cr3t-pw"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "no retry line: {text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    child.kill().await.unwrap();
}

/// Started while its database is down, Koine's client port answers at
/// once: the probes 503 with the reason, every call etcd's Unavailable
/// "request timed out" (which clients retry). Once the database is up,
/// Koine serves, on the same port, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_port_answers_before_the_database_does() {
    let mut pg = crate::dbs::Postgres::start().await;
    let dsn = pg.dsn("koine_early");
    pg.kill().await;
    let node = KoineProcess::spawn(&dsn, &[]);
    let addr: std::net::SocketAddr = node.endpoint.trim_start_matches("http://").parse().unwrap();
    // Within a bound only so that a hang fails the test.
    let within = Duration::from_secs(10);
    let deadline = Instant::now() + within;
    let (status, body) = loop {
        if let Ok(Ok(answer)) = tokio::time::timeout(within, async {
            tokio::net::TcpStream::connect(addr).await?;
            Ok::<_, std::io::Error>(crate::harness::http_get(addr, "/health").await)
        })
        .await
        {
            break answer;
        }
        assert!(Instant::now() < deadline, "the client port never answered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(status, 503, "{body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["health"], "false");
    let reason = health["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.starts_with("database not reachable") || reason == "connecting to the database",
        "{reason}"
    );
    let (status, body) = tokio::time::timeout(within, crate::harness::http_get(addr, "/readyz"))
        .await
        .expect("readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("readyz check failed"), "{body}");

    let mut c = etcd_client::Client::connect([node.endpoint.as_str()], None)
        .await
        .unwrap();
    let got = tokio::time::timeout(within, c.get("k", None))
        .await
        .expect("a get answers");
    crate::harness::assert_error(
        crate::harness::code_and_text(got.unwrap_err()),
        (tonic::Code::Unavailable, "etcdserver: request timed out"),
    );
    let put = tokio::time::timeout(within, c.put("k", "v", None))
        .await
        .expect("a put answers");
    crate::harness::assert_error(
        crate::harness::code_and_text(put.unwrap_err()),
        (tonic::Code::Unavailable, "etcdserver: request timed out"),
    );

    // The database comes up: the same port serves, and nothing was written
    // by the refused put.
    pg.restart().await;
    crate::harness::wait_ready(&node.endpoint).await;
    let mut c = node.client().await;
    let got = c.get("k", None).await.unwrap();
    assert!(got.kvs().is_empty());
    c.put("k", "v", None).await.unwrap();
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v");
    let (status, body) = crate::harness::http_get(addr, "/health").await;
    assert_eq!(
        (status, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
}

/// Two independent Koine clusters on one database server (two databases)
/// each get their own leader: leader locks are scoped to the database.
async fn separate_databases_separate_leaders(a: String, b: String) {
    let x = KoineProcess::start(&a, &[]).await;
    let y = KoineProcess::start(&b, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(x.log_text().contains("became leader") && y.log_text().contains("became leader")) {
        assert!(Instant::now() < deadline, "both clusters need a leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_databases_separate_leaders_mysql() {
    separate_databases_separate_leaders(
        crate::dbs::fresh_mariadb_dsn().await,
        crate::dbs::fresh_mariadb_dsn().await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_databases_separate_leaders_postgres() {
    separate_databases_separate_leaders(
        crate::dbs::fresh_postgres_dsn().await,
        crate::dbs::fresh_postgres_dsn().await,
    )
    .await;
}
