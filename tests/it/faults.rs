//! Faults: kill -9 of Koine under load, the database restarting or
//! freezing under load, graceful shutdown. No acknowledged write is ever
//! lost; clients see etcd's errors, never a hang.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tonic::Code;

use crate::dbs::{MariaDb, Postgres};
use crate::harness::{Koine, KoineProcess};

type Acks = Arc<Mutex<BTreeMap<String, String>>>;

/// `clients` writers putting unique keys until stopped; every acknowledged
/// (key, value) is recorded.
fn writers(
    endpoint: &str,
    clients: usize,
    acks: Acks,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<Vec<Code>>> {
    (0..clients)
        .map(|c| {
            let ep = endpoint.to_string();
            let acks = acks.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut errors = Vec::new();
                let Ok(mut client) = etcd_client::Client::connect([ep], None).await else {
                    return errors;
                };
                let mut i = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (k, v) = (format!("f/{c}/{i}"), format!("v{i}"));
                    match tokio::time::timeout(
                        Duration::from_secs(20),
                        client.put(k.clone(), v.clone(), None),
                    )
                    .await
                    {
                        Ok(Ok(_)) => {
                            acks.lock().unwrap().insert(k, v);
                        }
                        Ok(Err(etcd_client::Error::GRpcStatus(s))) => errors.push(s.code()),
                        Ok(Err(_)) => errors.push(Code::Unavailable),
                        Err(_) => panic!("a put hung for 20 s"),
                    }
                    i += 1;
                    if !errors.is_empty() && errors.len() % 50 == 0 {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                errors
            })
        })
        .collect()
}

async fn check_acks(endpoint: &str, acks: &Acks) {
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    let r = c
        .get("f/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let stored: BTreeMap<String, String> = r
        .kvs()
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
            )
        })
        .collect();
    let acks = acks.lock().unwrap();
    assert!(!acks.is_empty());
    for (k, v) in acks.iter() {
        assert_eq!(stored.get(k), Some(v), "acknowledged write {k} lost");
    }
}

async fn kill9_under_load(endpoint: String) {
    let mut node = KoineProcess::start(&endpoint, &[]).await;
    let acks: Acks = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = writers(&node.endpoint, 64, acks.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    node.kill().await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let n = acks.lock().unwrap().len();
    assert!(n > 100, "only {n} writes acknowledged before the kill");
    let node = KoineProcess::start(&endpoint, &[]).await;
    check_acks(&node.endpoint, &acks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    kill9_under_load(format!(
        "sqlite://{}",
        dir.path().join("state.db").display()
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_postgres() {
    kill9_under_load(crate::dbs::fresh_postgres_dsn().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill9_under_load_mysql() {
    kill9_under_load(crate::dbs::fresh_mariadb_dsn().await).await;
}

/// The database restarts under load: Koine answers Unavailable meanwhile
/// and recovers by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_restart_under_load() {
    let mut pg = Postgres::start().await;
    let k = Koine::start_on(&pg.dsn("koine"), &["--request-timeout", "3s"]).await;
    let acks: Acks = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = writers(&k.endpoint, 8, acks.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(800)).await;
    pg.kill().await;
    // While the database is down a request fails with Unavailable.
    let mut probe = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    match tokio::time::timeout(Duration::from_secs(10), probe.put("probe", "x", None)).await {
        Ok(Err(etcd_client::Error::GRpcStatus(s))) => {
            assert_eq!(s.code(), Code::Unavailable, "{s:?}")
        }
        other => panic!("a put during the outage must fail with Unavailable: {other:?}"),
    }
    let during = acks.lock().unwrap().len();
    pg.restart().await;
    // Writes succeed again without restarting Koine.
    let deadline = Instant::now() + Duration::from_secs(30);
    while acks.lock().unwrap().len() < during + 50 {
        assert!(
            Instant::now() < deadline,
            "no recovery after the database came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut codes = Vec::new();
    for t in tasks {
        codes.extend(t.await.unwrap());
    }
    assert!(
        codes.iter().all(|c| *c == Code::Unavailable),
        "outage errors must be Unavailable: {codes:?}"
    );
    check_acks(&k.endpoint, &acks).await;
}

/// Fills Koine's connection pools (concurrent reads and writes), then
/// restarts the database while Koine is idle: every pooled connection is
/// now dead. The next reads and writes must succeed at once: idle
/// connections are not pinged before use (a round trip per request), so
/// a broken one has to be replaced by a retry, not reported to the client.
async fn idle_connections_die(dsn: String, restart: impl std::future::Future<Output = ()>) {
    let k = Koine::start_on(&dsn, &[]).await;
    let c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    let mut load = Vec::new();
    for i in 0..32 {
        let mut c = c.clone();
        load.push(tokio::spawn(async move {
            c.put(format!("k{i}"), "v", None).await.unwrap();
            for _ in 0..20 {
                c.get(format!("k{i}"), None).await.unwrap();
            }
        }));
    }
    for t in load {
        t.await.unwrap();
    }
    restart.await;
    let mut c = c.clone();
    for i in 0..32 {
        let got = c
            .get(format!("k{i}"), None)
            .await
            .expect("read after restart");
        assert_eq!(got.kvs()[0].value(), b"v");
        c.put(format!("k{i}"), "w", None)
            .await
            .expect("write after restart");
    }
    let got = c
        .get("k", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(got.kvs().iter().all(|kv| kv.value() == b"w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_die_postgres() {
    let mut pg = Postgres::start().await;
    idle_connections_die(pg.dsn("koine"), pg.restart()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_die_mariadb() {
    let mut db = MariaDb::start().await;
    idle_connections_die(db.dsn("koine"), db.restart()).await;
}

/// A frozen database: requests fail with etcd's timeout error instead of
/// hanging, and service resumes when it thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_database_times_out() {
    let pg = Postgres::start().await;
    let k = Koine::start_on(&pg.dsn("koine"), &["--request-timeout", "1s"]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    c.put("a", "1", None).await.unwrap();
    pg.pause();
    let started = Instant::now();
    let e = tokio::time::timeout(Duration::from_secs(10), c.put("a", "2", None))
        .await
        .expect("no hang")
        .unwrap_err();
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            assert_eq!(
                (s.code(), s.message()),
                (Code::Unavailable, "etcdserver: request timed out")
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let e = tokio::time::timeout(Duration::from_secs(10), c.get("a", None))
        .await
        .expect("no hang")
        .unwrap_err();
    assert!(
        matches!(e, etcd_client::Error::GRpcStatus(ref s) if s.message() == "etcdserver: request timed out"),
        "{e:?}"
    );
    pg.resume();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if c.put("a", "3", None).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "no recovery after thaw");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(c.get("a", None).await.unwrap().kvs()[0].value(), b"3");
}

/// Graceful shutdown: in-flight writes finish or fail cleanly, watch
/// streams end with a status, and everything acknowledged is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown() {
    let k = Koine::start(&[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    let mut w = c
        .watch("f/", Some(etcd_client::WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    w.message().await.unwrap();
    let acks: Acks = Default::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks = writers(&k.endpoint, 16, acks.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let dir = tokio::time::timeout(Duration::from_secs(20), k.stop())
        .await
        .expect("shutdown in time");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    // The watch stream ends (error status or end of stream), it does not hang.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match w.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .expect("watch stream ended");
    assert!(!matches!(end, Ok(Some(_))));
    let k = Koine::start_in(dir, &[]).await;
    check_acks(&k.endpoint, &acks).await;
}
