//! Passthrough mode: Koine in front of real etcd (Debian's 3.4). The
//! behaviour suite runs on it through `Target::Passthrough`; these tests
//! cover what only a proxy has: failover across a 3-member cluster with
//! streams open, etcd's errors and request metadata passed through
//! unchanged, an unreachable cluster, TLS to etcd.

use std::process::Stdio;
use std::time::{Duration, Instant};

use etcd_client::{
    Client, ConnectOptions, EventType, GetOptions, LeaseGrantOptions, LeaseKeepAliveStream,
    PutOptions, Txn, TxnOp, WatchOptions, WatchStream,
};
use tempfile::TempDir;
use tokio::process::{Child, Command};
use tonic::Code;

use crate::harness::next_watch_response as next;
use crate::harness::{Etcd, Koine, etcd_binary, etcdctl, free_port};

const WAIT: Duration = Duration::from_secs(20);

/// One member of a throwaway etcd cluster.
struct Member {
    name: String,
    client_url: String,
    peer_url: String,
    id: u64,
    child: Option<Child>,
}

/// A throwaway etcd cluster of separate processes whose members can be
/// killed (-9) and started again on their data.
struct EtcdCluster {
    dir: TempDir,
    members: Vec<Member>,
    /// Extra etcd flags (TLS).
    extra: Vec<String>,
    tls: Option<etcd_client::TlsOptions>,
}

impl EtcdCluster {
    /// `n` members, plain http, fast elections (50ms heartbeats).
    async fn start(n: usize) -> EtcdCluster {
        EtcdCluster::start_with(n, "http", Vec::new(), None).await
    }

    async fn start_with(
        n: usize,
        scheme: &str,
        extra: Vec<String>,
        tls: Option<etcd_client::TlsOptions>,
    ) -> EtcdCluster {
        let members = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client_url: format!("{scheme}://127.0.0.1:{}", free_port()),
                peer_url: format!("http://127.0.0.1:{}", free_port()),
                id: 0,
                child: None,
            })
            .collect();
        let mut c = EtcdCluster {
            dir: tempfile::tempdir().expect("tempdir"),
            members,
            extra,
            tls,
        };
        c.spawn_all();
        c.wait_all().await;
        c
    }

    fn spawn_all(&mut self) {
        for i in 0..self.members.len() {
            self.spawn(i);
        }
    }

    fn spawn(&mut self, i: usize) {
        let initial = self
            .members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url))
            .collect::<Vec<_>>()
            .join(",");
        let m = &self.members[i];
        let data = self.dir.path().join(&m.name).display().to_string();
        let child = Command::new(etcd_binary())
            .args([
                "--name",
                &m.name,
                "--data-dir",
                &data,
                "--listen-client-urls",
                &m.client_url,
                "--advertise-client-urls",
                &m.client_url,
                "--listen-peer-urls",
                &m.peer_url,
                "--initial-advertise-peer-urls",
                &m.peer_url,
                "--initial-cluster",
                &initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "koine-passthrough",
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
                "--log-level",
                "error",
                "--logger",
                "zap",
            ])
            .args(&self.extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcd");
        self.members[i].child = Some(child);
    }

    async fn direct(&self, i: usize) -> Result<Client, etcd_client::Error> {
        let opts = self.tls.clone().map(|t| ConnectOptions::new().with_tls(t));
        Client::connect([self.members[i].client_url.as_str()], opts).await
    }

    /// Waits until every member answers and the cluster takes writes;
    /// learns the member ids.
    async fn wait_all(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for i in 0..self.members.len() {
            self.members[i].id = loop {
                if let Ok(mut c) = self.direct(i).await
                    && let Ok(st) = c.status().await
                {
                    break st.header().unwrap().member_id();
                }
                assert!(Instant::now() < deadline, "etcd member {i} not ready");
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
        }
        let mut c = self.direct(0).await.unwrap();
        while c.put("cluster-ready", "", None).await.is_err() {
            assert!(Instant::now() < deadline, "etcd cluster takes no writes");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn endpoints(&self) -> String {
        self.members
            .iter()
            .map(|m| m.client_url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    fn index_of(&self, member_id: u64) -> usize {
        self.members
            .iter()
            .position(|m| m.id == member_id)
            .unwrap_or_else(|| panic!("no member with id {member_id:x}"))
    }

    /// kill -9.
    async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].child.take() {
            let _ = child.kill().await;
        }
    }

    /// Starts a killed member again on its data and waits for it.
    async fn restart(&mut self, i: usize) {
        self.spawn(i);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(mut c) = self.direct(i).await
                && c.status().await.is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "etcd member {i} did not come back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn connect(endpoint: &str) -> Client {
    Client::connect([endpoint], None).await.expect("connect")
}

async fn next_keepalive(s: &mut LeaseKeepAliveStream) -> etcd_client::LeaseKeepAliveResponse {
    tokio::time::timeout(WAIT, s.message())
        .await
        .expect("keepalive response in time")
        .expect("keepalive stream ok")
        .expect("keepalive stream open")
}

fn status(e: etcd_client::Error) -> (Code, String) {
    match e {
        etcd_client::Error::GRpcStatus(s) => (s.code(), s.message().to_string()),
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// (key, mod revision, type, value)
type Seen = (String, i64, EventType, String);

/// Reads watch responses until an event at revision `last` or later has
/// arrived; returns the member id of the last response's header.
async fn collect_until(w: &mut WatchStream, seen: &mut Vec<Seen>, last: i64) -> u64 {
    let mut member = 0;
    while seen.last().is_none_or(|e| e.1 < last) {
        let r = next(w).await;
        assert!(!r.canceled(), "watch ended: {r:?}");
        member = r.header().unwrap().member_id();
        for e in r.events() {
            let kv = e.kv().unwrap();
            seen.push((
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
                e.event_type(),
                kv.value_str().unwrap().to_string(),
            ));
        }
    }
    member
}

/// A put through Koine, retried while the answer is `Unavailable` (the
/// election after a member dies, or a write whose connection broke);
/// returns its revision.
async fn put_retrying(c: &mut Client, key: &str, value: &str) -> i64 {
    let deadline = Instant::now() + WAIT;
    loop {
        match c.put(key, value, None).await {
            Ok(r) => return r.header().unwrap().revision(),
            Err(etcd_client::Error::GRpcStatus(s))
                if s.code() == Code::Unavailable && Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("put {key}: {e:?}"),
        }
    }
}

/// Kills the member Koine's watch stream is on, twice (the first comes
/// back before the second goes), with a watch and a keepalive stream
/// open: unary calls keep working, the keepalive stream keeps answering,
/// and the watch delivers exactly etcd's history, no gap, no duplicate,
/// without ever being cancelled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_keeps_calls_and_streams_working() {
    let mut etcd = EtcdCluster::start(3).await;
    let koine = Koine::start_on(&etcd.endpoints(), &[]).await;
    let mut c = connect(&koine.endpoint).await;
    let lease = c.lease_grant(10, None).await.unwrap().id();
    c.put("f/lease", "held", Some(PutOptions::new().with_lease(lease)))
        .await
        .unwrap();
    let (mut keeper, mut keepalives) = c.lease_keep_alive(lease).await.unwrap();
    keeper.keep_alive().await.unwrap();
    assert!(next_keepalive(&mut keepalives).await.ttl() > 0);
    let mut w = c
        .watch("f/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    let created = next(&mut w).await;
    assert!(created.created());
    let watch_id = created.watch_id();
    let from = created.header().unwrap().revision() + 1;
    let mut seen = Vec::new();
    let mut n: i64 = 0;
    let mut last = 0;
    for round in 0..2 {
        for _ in 0..3 {
            n += 1;
            last = put_retrying(&mut c, &format!("f/{n}"), &format!("v{n}")).await;
        }
        let member = collect_until(&mut w, &mut seen, last).await;
        let victim = etcd.index_of(member);
        etcd.kill(victim).await;
        // Unary calls go on, on another member.
        for _ in 0..5 {
            n += 1;
            last = put_retrying(&mut c, &format!("f/{n}"), &format!("v{n}")).await;
        }
        let g = c.get("f/", Some(GetOptions::new().with_prefix())).await;
        assert_eq!(g.unwrap().count(), n + 1, "round {round}");
        // The keepalive stream answers again.
        keeper.keep_alive().await.unwrap();
        let r = next_keepalive(&mut keepalives).await;
        assert_eq!((r.id(), r.ttl() > 0), (lease, true), "round {round}");
        // The watch delivers what was written meanwhile.
        let now = collect_until(&mut w, &mut seen, last).await;
        assert_ne!(now, member, "the watch moved to another member");
        etcd.restart(victim).await;
    }
    // Exactly etcd's history, read directly from a member.
    let live = etcd.index_of(c.status().await.unwrap().header().unwrap().member_id());
    let mut direct = etcd.direct(live).await.unwrap();
    let mut reference = direct
        .watch(
            "f/",
            Some(WatchOptions::new().with_prefix().with_start_revision(from)),
        )
        .await
        .unwrap();
    assert!(next(&mut reference).await.created());
    let mut want = Vec::new();
    collect_until(&mut reference, &mut want, last).await;
    assert_eq!(seen, want, "no gap, no duplicate");
    // Still the same watch, and it is still live.
    let rev = put_retrying(&mut c, "f/after", "x").await;
    let r = next(&mut w).await;
    assert_eq!(r.watch_id(), watch_id);
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), rev);
    let t = c.lease_time_to_live(lease, None).await.unwrap();
    assert!(t.ttl() > 0, "the lease was kept alive: {t:?}");
}

/// A client's error from etcd comes back with etcd's code and text, the
/// same as from etcd directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_errors_reach_the_client_unchanged() {
    let etcd = Etcd::start().await;
    let koine = Koine::start_on(&etcd.endpoint, &[]).await;
    let mut direct = connect(&etcd.endpoint).await;
    let mut via = connect(&koine.endpoint).await;
    for i in 0..5 {
        direct.put("c", format!("{i}"), None).await.unwrap(); // revs 2..=6
    }
    direct.compact(4, None).await.unwrap();
    direct
        .lease_grant(30, Some(LeaseGrantOptions::new().with_id(77)))
        .await
        .unwrap();

    let old = Some(GetOptions::new().with_revision(2));
    let want = status(direct.get("c", old.clone()).await.unwrap_err());
    let got = status(via.get("c", old).await.unwrap_err());
    assert_eq!(
        got,
        (
            Code::OutOfRange,
            "etcdserver: mvcc: required revision has been compacted".into()
        )
    );
    assert_eq!(got, want);

    let future = Some(GetOptions::new().with_revision(1000));
    let want = status(direct.get("c", future.clone()).await.unwrap_err());
    assert_eq!(status(via.get("c", future).await.unwrap_err()), want);

    let want = status(direct.lease_revoke(12345).await.unwrap_err());
    let got = status(via.lease_revoke(12345).await.unwrap_err());
    assert_eq!(
        got,
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
    assert_eq!(got, want);

    let dup = Some(LeaseGrantOptions::new().with_id(77));
    let want = status(direct.lease_grant(30, dup.clone()).await.unwrap_err());
    assert_eq!(status(via.lease_grant(30, dup).await.unwrap_err()), want);

    let with_lease = Some(PutOptions::new().with_lease(999));
    let want = status(direct.put("k", "v", with_lease.clone()).await.unwrap_err());
    assert_eq!(
        status(via.put("k", "v", with_lease).await.unwrap_err()),
        want
    );

    let txn = || Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::delete("d", None)]);
    let want = status(direct.txn(txn()).await.unwrap_err());
    assert_eq!(status(via.txn(txn()).await.unwrap_err()), want);

    let want = status(direct.compact(3, None).await.unwrap_err());
    assert_eq!(status(via.compact(3, None).await.unwrap_err()), want);

    let big = vec![b'x'; 1_600_000];
    let want = status(direct.put("big", big.clone(), None).await.unwrap_err());
    assert_eq!(status(via.put("big", big, None).await.unwrap_err()), want);

    // A watch from a compacted revision is cancelled as etcd cancels it.
    let mut w = via
        .watch("c", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let mut r = next(&mut w).await;
    if r.created() && !r.canceled() {
        r = next(&mut w).await;
    }
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), 4);
}

/// The scripted request sequence of `differential.rs` gets the same
/// answers through Koine as from etcd directly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passthrough_answers_like_etcd() {
    let etcd = Etcd::start().await;
    let behind = Etcd::start().await;
    let koine = Koine::start_on(&behind.endpoint, &[]).await;
    let want = crate::differential::play(&etcd.endpoint).await;
    let got = crate::differential::play(&koine.endpoint).await;
    let diffs: Vec<String> = want
        .iter()
        .zip(&got)
        .filter(|(w, g)| w != g)
        .map(|(w, g)| format!("etcd:        {w}\npassthrough: {g}"))
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n\n"));
}

/// The client's metadata (here the auth token) reaches etcd on unary
/// calls and streams; without it, etcd's own refusal comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_metadata_is_forwarded() {
    let etcd = Etcd::start().await;
    let koine = Koine::start_on(&etcd.endpoint, &[]).await;
    let mut c = connect(&koine.endpoint).await;
    c.user_add("root", "rootpw", None).await.unwrap();
    c.role_add("root").await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.auth_enable().await.unwrap();

    let want = status(
        connect(&etcd.endpoint)
            .await
            .put("k", "v", None)
            .await
            .unwrap_err(),
    );
    let got = status(
        connect(&koine.endpoint)
            .await
            .put("k", "v", None)
            .await
            .unwrap_err(),
    );
    assert_eq!(got, want);

    let opts = ConnectOptions::new().with_user("root", "rootpw");
    let mut a = Client::connect([koine.endpoint.as_str()], Some(opts))
        .await
        .unwrap();
    let mut w = a.watch("k", None).await.unwrap();
    assert!(next(&mut w).await.created());
    let rev = a
        .put("k", "v", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let r = next(&mut w).await;
    assert_eq!(r.events()[0].kv().unwrap().mod_revision(), rev);
    let (mut keeper, mut keepalives) = {
        let lease = a.lease_grant(10, None).await.unwrap().id();
        a.lease_keep_alive(lease).await.unwrap()
    };
    keeper.keep_alive().await.unwrap();
    assert!(next_keepalive(&mut keepalives).await.ttl() > 0);
    assert_eq!(a.get("k", None).await.unwrap().kvs()[0].value(), b"v");
}

/// With no etcd reachable calls fail with `Unavailable`; once etcd is up,
/// the same Koine serves them, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_etcd_is_unavailable_until_it_comes_up() {
    let mut etcd = EtcdCluster {
        dir: tempfile::tempdir().unwrap(),
        members: vec![Member {
            name: "solo".into(),
            client_url: format!("http://127.0.0.1:{}", free_port()),
            peer_url: format!("http://127.0.0.1:{}", free_port()),
            id: 0,
            child: None,
        }],
        extra: Vec::new(),
        tls: None,
    };
    let koine = Koine::start_on(&etcd.endpoints(), &[]).await;
    let mut c = connect(&koine.endpoint).await;
    let (code, _) = status(c.get("k", None).await.unwrap_err());
    assert_eq!(code, Code::Unavailable);
    let (code, _) = status(c.put("k", "v", None).await.unwrap_err());
    assert_eq!(code, Code::Unavailable);
    etcd.spawn_all();
    etcd.wait_all().await;
    c.put("k", "v", None).await.unwrap();
    assert_eq!(c.get("k", None).await.unwrap().kvs()[0].value(), b"v");
}

/// `--ca-file`, `--cert-file`, `--key-file` mean TLS to etcd, which here
/// requires client certificates; `--skip-verify` trusts any certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_etcd() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    crate::ops::make_certs(d);
    let p = |f: &str| d.join(f).display().to_string();
    let file = |f: &str| std::fs::read(d.join(f)).unwrap();
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(file("ca.pem")))
        .identity(etcd_client::Identity::from_pem(
            file("client.pem"),
            file("client.key"),
        ));
    let extra = [
        "--cert-file",
        &p("server.pem"),
        "--key-file",
        &p("server.key"),
        "--trusted-ca-file",
        &p("ca.pem"),
        "--client-cert-auth",
    ]
    .map(String::from)
    .to_vec();
    let etcd = EtcdCluster::start_with(1, "https", extra, Some(tls)).await;
    let upstream = etcd.endpoints();
    assert!(upstream.starts_with("https://"));

    let (ca, cert, key) = (p("ca.pem"), p("client.pem"), p("client.key"));
    let koine = Koine::start_on(
        &upstream,
        &["--ca-file", &ca, "--cert-file", &cert, "--key-file", &key],
    )
    .await;
    let mut c = connect(&koine.endpoint).await;
    let mut w = c.watch("t", None).await.unwrap();
    assert!(next(&mut w).await.created());
    c.put("t", "1", None).await.unwrap();
    assert_eq!(next(&mut w).await.events().len(), 1);
    assert_eq!(c.get("t", None).await.unwrap().kvs()[0].value(), b"1");

    let unverified = Koine::start_on(
        &upstream,
        &["--skip-verify", "--cert-file", &cert, "--key-file", &key],
    )
    .await;
    let mut c = connect(&unverified.endpoint).await;
    assert_eq!(c.get("t", None).await.unwrap().kvs()[0].value(), b"1");

    // etcd wants a client certificate.
    let anonymous = Koine::start_on(&upstream, &["--ca-file", &ca]).await;
    let mut c = connect(&anonymous.endpoint).await;
    let (code, _) = status(c.get("t", None).await.unwrap_err());
    assert_eq!(code, Code::Unavailable);
}

/// https endpoints without a way to verify etcd are refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_needs_a_ca() {
    use clap::Parser;
    let config =
        koine::config::Config::try_parse_from(["koine", "--endpoint", "https://127.0.0.1:1"])
            .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let err = koine::run(config, listener, async {}).await.unwrap_err();
    assert!(err.to_string().contains("--ca-file"), "{err}");
}

/// Debian's etcdctl through Koine: the commands work, and `member list`
/// shows Koine's address, not etcd's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_through_passthrough() {
    let etcd = Etcd::start().await;
    let koine = Koine::start_on(&etcd.endpoint, &[]).await;
    let e = koine.endpoint.as_str();
    assert_eq!(etcdctl(e, &["put", "foo", "bar"]).await.trim(), "OK");
    assert_eq!(etcdctl(e, &["get", "foo"]).await, "foo\nbar\n");
    let members: serde_json::Value =
        serde_json::from_str(&etcdctl(e, &["member", "list", "-w", "json"]).await).unwrap();
    assert_eq!(members["members"][0]["clientURLs"][0], koine.endpoint);
    assert_eq!(members["members"].as_array().unwrap().len(), 1);
    let addr = koine.addr.to_string();
    let status: serde_json::Value =
        serde_json::from_str(&etcdctl(&addr, &["endpoint", "status", "-w", "json"]).await).unwrap();
    assert!(
        status[0]["Status"]["version"]
            .as_str()
            .unwrap()
            .starts_with("3.4"),
        "etcd's own version: {status}"
    );
}
