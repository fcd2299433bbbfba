//! Defects an outside attack found, each reproduced from outside: a full
//! disk, metrics that any client could grow, bursts that closed the HTTP/2
//! connection, TLS silently weaker than asked, watch streams that ended
//! with OK, probes that lied or hung, and etcd's answers to odd requests.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use koine::proto::etcdserverpb as pb;
use tonic::Code;

use crate::dbs::Postgres;
use crate::harness::{Koine, http_get, wait_ready};

/// A tmpfs of `size` mounted on a temp dir, unmounted when dropped: a disk
/// that fills up.
struct SmallDisk {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("fs");
        std::fs::create_dir(&path).expect("mount point");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .status()
            .expect("run mount");
        assert!(
            status.success(),
            "mounting a tmpfs failed: the full-disk test needs root (as CI runs)"
        );
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

async fn client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("connect")
}

fn status_of(e: etcd_client::Error) -> tonic::Status {
    match e {
        etcd_client::Error::GRpcStatus(s) => s,
        other => panic!("expected a gRPC status, got {other:?}"),
    }
}

/// A full disk fails writes with etcd's "database space exceeded", health
/// says the writer cannot write, and once space is freed writes (and lease
/// grants) work again without a restart; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_fails_writes_until_space_is_freed() {
    // The filler is what is freed later: as much as SQLite may need to
    // checkpoint its WAL into the database file (up to 4 MiB) and go on.
    let disk = SmallDisk::mount("16m");
    let filler = disk.path.join("filler");
    std::fs::write(&filler, vec![0u8; 10 << 20]).expect("filler");
    let k = Koine::start_on(
        &format!("sqlite://{}", disk.path.join("state.db").display()),
        &[],
    )
    .await;
    wait_ready(&k.endpoint).await;
    let mut c = client(&k.endpoint).await;
    let value = vec![b'x'; 256 << 10];
    let mut acked = Vec::new();
    let mut full = None;
    for i in 0..100 {
        match c.put(format!("fill/{i}"), value.clone(), None).await {
            Ok(_) => acked.push(format!("fill/{i}")),
            Err(e) => {
                full = Some(status_of(e));
                break;
            }
        }
    }
    let full = full.expect("the disk never filled");
    assert_eq!(
        (full.code(), full.message()),
        (
            Code::ResourceExhausted,
            "etcdserver: mvcc: database space exceeded"
        )
    );
    let (code, body) = http_get(k.addr, "/health").await;
    assert_eq!(code, 503, "health while no write can succeed: {body}");
    assert!(body.contains("writer"), "{body}");
    let (code, body) = http_get(k.addr, "/readyz?verbose").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("[-]writer failed"), "{body}");

    std::fs::remove_file(&filler).expect("free space");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match c.put("after", "1", None).await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "writes still fail after space was freed: {e:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    c.lease_grant(60, None).await.expect("lease grant");
    let (code, body) = http_get(k.addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    for key in &acked {
        let got = c.get(key.as_str(), None).await.unwrap();
        assert_eq!(got.kvs().len(), 1, "{key} was acknowledged, then lost");
    }
}

/// Unknown paths are 404 (not an empty 200), and while the database is
/// frozen the probes answer 503 within a few seconds, not the 7 s request
/// timeout; `/metrics` does not wait on the database at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_promptly_and_unknown_paths_are_404() {
    let pg = Postgres::start().await;
    let k = Koine::start_on(&pg.dsn("koine"), &[]).await;
    wait_ready(&k.endpoint).await;
    for path in ["/healthz", "/health/", "/../etc/passwd", "/nope"] {
        let (code, body) = http_get(k.addr, path).await;
        assert_eq!(code, 404, "{path}: {body}");
    }
    let (code, _) = http_get(k.addr, "/health").await;
    assert_eq!(code, 200);
    pg.pause();
    for path in ["/health", "/readyz", "/livez"] {
        let started = Instant::now();
        let (code, body) = tokio::time::timeout(Duration::from_secs(5), http_get(k.addr, path))
            .await
            .unwrap_or_else(|_| panic!("{path} did not answer within 5 s"));
        assert_eq!(code, 503, "{path} with the database frozen: {body}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }
    let (code, body) = tokio::time::timeout(Duration::from_secs(2), http_get(k.addr, "/metrics"))
        .await
        .expect("/metrics waited on the frozen database");
    assert_eq!(code, 200);
    assert!(body.contains("grpc_server_started_total") || body.contains("process_"));
    pg.resume();
}

/// A raw gRPC client, for paths and payloads no etcd client would send.
async fn raw(endpoint: &str) -> tonic::client::Grpc<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .expect("connect");
    tonic::client::Grpc::new(channel).max_encoding_message_size(usize::MAX)
}

async fn unary_at<M: prost::Message + Default + 'static>(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    path: &str,
    msg: M,
) -> Result<pb::RangeResponse, tonic::Status> {
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::try_from(path.to_string()).unwrap();
    grpc.unary(
        tonic::Request::new(msg),
        path,
        tonic_prost::ProstCodec::<M, pb::RangeResponse>::default(),
    )
    .await
    .map(|r| r.into_inner())
}

/// Calls of methods and services Koine does not serve get grpc-go's
/// Unimplemented texts, and all of them share one metric label: no client
/// can grow `/metrics` without bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_methods_are_unimplemented_and_share_one_metric_label() {
    let k = Koine::start(&[]).await;
    wait_ready(&k.endpoint).await;
    let mut grpc = raw(&k.endpoint).await;
    for i in 0..200 {
        let e = unary_at(
            &mut grpc,
            &format!("/x{i}.Svc/M{i}"),
            pb::RangeRequest::default(),
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        assert_eq!(e.message(), format!("unknown service x{i}.Svc"));
    }
    let e = unary_at(
        &mut grpc,
        "/etcdserverpb.KV/Nope",
        pb::RangeRequest::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::Unimplemented,
            "unknown method Nope for service etcdserverpb.KV"
        )
    );
    // A method of etcd's API answers (and is counted as itself).
    unary_at(
        &mut grpc,
        "/etcdserverpb.Auth/AuthStatus",
        pb::AuthStatusRequest::default(),
    )
    .await
    .expect("AuthStatus");
    let (_, metrics) = http_get(k.addr, "/metrics").await;
    let started: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("grpc_server_started_total{"))
        .collect();
    assert!(
        started.iter().all(|l| !l.contains("x1")),
        "a metric series per unknown path: {started:?}"
    );
    let unknown = started
        .iter()
        .find(|l| l.contains(r#"grpc_method="unknown""#))
        .expect("unknown calls counted under one label");
    // The 200 unknown services and KV/Nope (Auth/AuthStatus is a method of
    // etcd's API, counted as itself).
    assert!(unknown.ends_with(" 201"), "{unknown}");
}

/// A unary request over the receive limit gets grpc-go's
/// ResourceExhausted text, naming etcd's limit (1.5 MiB + 512 KiB).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_are_resource_exhausted() {
    let k = Koine::start(&[]).await;
    wait_ready(&k.endpoint).await;
    let mut grpc = raw(&k.endpoint).await;
    let limit = 1572864 + 512 * 1024;
    for size in [3 << 20, 16 << 20] {
        let e = unary_at(
            &mut grpc,
            "/etcdserverpb.KV/Range",
            pb::RangeRequest {
                key: vec![b'k'; size].into(),
                ..Default::default()
            },
        )
        .await
        .unwrap_err();
        assert_eq!(e.code(), Code::ResourceExhausted, "{size}: {e:?}");
        assert!(
            e.message()
                .starts_with("grpc: received message larger than max (")
                && e.message().ends_with(&format!(" vs. {limit})")),
            "{size}: {}",
            e.message()
        );
    }
}

/// Starts Koine with `flags` on a fresh SQLite file; returns the startup
/// error (it must fail, not serve).
async fn startup_error(flags: &[&str]) -> String {
    use clap::Parser;
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("state.db").display());
    let mut argv = vec!["koine", "--endpoint", &db];
    argv.extend_from_slice(flags);
    let config = koine::config::Config::try_parse_from(argv).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        koine::run(config, listener, std::future::pending()),
    )
    .await
    .expect("startup must fail, not serve")
    .expect_err("startup must fail")
    .to_string()
}

/// Client certificates asked for but impossible: Koine refuses to start
/// rather than serve plaintext to anyone. A missing file is named.
#[tokio::test]
async fn tls_flags_that_cannot_be_honoured_stop_startup() {
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, "never read: the refusal comes first").unwrap();
    let ca = ca.display().to_string();
    let e = startup_error(&["--trusted-ca-file", &ca]).await;
    assert!(e.contains("--trusted-ca-file"), "{e}");
    let missing = dir.path().join("missing-key.pem").display().to_string();
    let e = startup_error(&["--server-cert-file", &ca, "--server-key-file", &missing]).await;
    assert!(
        e.contains("--server-key-file") && e.contains("missing-key.pem"),
        "{e}"
    );
    // TLS to the database too: named at once, not retried forever.
    let e = startup_error(&["--ca-file", &missing]).await;
    assert!(
        e.contains("--ca-file") && e.contains("missing-key.pem"),
        "{e}"
    );
}

/// Waits for the next message of a response stream, for up to 30 s.
async fn within<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("answer within 30 s")
}

/// Sends `messages` on one gRPC stream of a raw HTTP/2 connection, each in
/// a DATA frame of its own (as grpc-go sends them; tonic's clients merge
/// them), then reads until `want` answers arrived. A second stream on the
/// same connection then makes a unary Range. Panics on a GOAWAY.
async fn raw_burst<M: prost::Message + Send + 'static>(
    addr: std::net::SocketAddr,
    path: &str,
    messages: Vec<M>,
    want: usize,
) {
    use prost::Message;
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    // A large receive window on our side: h2 budgets the small frames it
    // buffers by it, and etcd's answers are small frames too.
    let (mut h2, conn) = h2::client::Builder::new()
        .initial_connection_window_size(64 << 20)
        .handshake(tcp)
        .await
        .expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let frame = |m: &dyn Fn(&mut Vec<u8>)| {
        let mut body = Vec::new();
        m(&mut body);
        let mut out = vec![0u8];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend(body);
        bytes::Bytes::from(out)
    };
    let request = |path: &str| {
        http::Request::post(format!("http://{addr}{path}"))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .unwrap()
    };
    let (resp, mut send) = h2.send_request(request(path), false).unwrap();
    let sender = tokio::spawn(async move {
        for m in messages {
            let data = frame(&|b| m.encode(b).unwrap());
            send.reserve_capacity(data.len());
            send.send_data(data, false).unwrap();
        }
        send
    });
    let mut body = within(resp).await.expect("response headers").into_body();
    let mut bytes = 0usize;
    let mut answers = 0;
    let mut buf = Vec::<u8>::new();
    while answers < want {
        let chunk = within(body.data())
            .await
            .unwrap_or_else(|| panic!("stream ended after {answers} answers"))
            .unwrap_or_else(|e| panic!("stream failed after {answers} answers: {e}"));
        bytes += chunk.len();
        let _ = body.flow_control().release_capacity(chunk.len());
        buf.extend_from_slice(&chunk);
        // Count whole gRPC messages.
        while buf.len() >= 5 {
            let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
            if buf.len() < 5 + len {
                break;
            }
            buf.drain(..5 + len);
            answers += 1;
        }
    }
    let _send = sender.await.unwrap();
    // The connection is alive: another stream on it works.
    let (resp, mut send) = h2
        .send_request(request("/etcdserverpb.KV/Range"), false)
        .unwrap();
    let range = pb::RangeRequest {
        key: "burst".into(),
        ..Default::default()
    };
    send.send_data(frame(&|b| range.encode(b).unwrap()), true)
        .unwrap();
    let resp = within(resp).await.expect("a unary call after the burst");
    assert_eq!(resp.status(), 200);
    assert!(
        !conn.is_finished(),
        "the connection was closed ({bytes} bytes read)"
    );
}

/// Bursts of small messages on one stream, one DATA frame each as grpc-go
/// sends them — 3,000 LeaseKeepAlives, 10,000 WatchCreateRequests (kube-
/// apiserver multiplexes its watches on few connections) — are all
/// answered, and the connection's other streams keep working.
async fn bursts_of_small_frames(s: crate::harness::Server) {
    let addr: std::net::SocketAddr = s
        .endpoint
        .trim_start_matches("http://")
        .parse()
        .expect("endpoint address");
    let mut c = s.client().await;
    let lease = c.lease_grant(60, None).await.unwrap().id();
    let keepalives = vec![pb::LeaseKeepAliveRequest { id: lease }; 3000];
    raw_burst(addr, "/etcdserverpb.Lease/LeaseKeepAlive", keepalives, 3000).await;
    let creates: Vec<pb::WatchRequest> = (0..10_000)
        .map(|i| pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: format!("burst/{i}").into(),
                    start_revision: 1,
                    ..Default::default()
                },
            )),
        })
        .collect();
    raw_burst(addr, "/etcdserverpb.Watch/Watch", creates, 10_000).await;
}

mod bursts {
    use crate::harness::{Target, run};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sqlite() {
        run(Target::Sqlite, super::bursts_of_small_frames).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn etcd() {
        run(Target::Etcd, super::bursts_of_small_frames).await
    }
}

/// A client that closes its sending side after creating a watch still
/// gets the events, as from etcd.
async fn watch_outlives_half_close(s: crate::harness::Server) {
    let mut c = s.client().await;
    let (tx, mut rx) = c.watch("hc", None).await.unwrap().split();
    let r = within(rx.message()).await.unwrap().unwrap();
    assert!(r.created());
    drop(tx);
    tokio::time::sleep(Duration::from_millis(300)).await;
    c.put("hc", "1", None).await.unwrap();
    let r = within(rx.message())
        .await
        .expect("watch stream ok")
        .expect("watch stream still open after the half-close");
    assert_eq!(r.events().len(), 1, "{r:?}");
    assert_eq!(r.events()[0].kv().unwrap().value(), b"1");
}

/// etcd accepts Compact(0) on a store never compacted.
async fn compact_zero(s: crate::harness::Server) {
    let mut c = s.client().await;
    c.put("a", "1", None).await.unwrap();
    c.compact(0, None).await.expect("Compact(0)");
    assert_eq!(c.get("a", None).await.unwrap().kvs().len(), 1);
}

/// Keys as long as etcd stores are stored on every database (no index
/// holds a key, so none limits its length) and read back whole.
async fn long_keys(s: crate::harness::Server) {
    let mut c = s.client().await;
    let key = |n: usize| (0..n).map(|i| (i % 251) as u8 + 1).collect::<Vec<u8>>();
    for n in [2000, 3500, 100_000] {
        c.put(key(n), "v", None).await.expect("a long key");
        let got = c.get(key(n), None).await.unwrap();
        assert_eq!(got.kvs()[0].key(), &key(n)[..]);
    }
}

/// Txns nested a little are evaluated; nested very deep they are refused
/// with etcd's "too many operations" (etcd's op budget shrinks with every
/// level; Koine's decoder stops at 50 levels), never an internal error.
async fn deeply_nested_txns(s: crate::harness::Server) {
    use etcd_client::{Txn, TxnOp};
    let mut c = s.client().await;
    let nested = |depth: usize| {
        let mut t = Txn::new().and_then([TxnOp::put("nested", "v", None)]);
        for _ in 0..depth {
            t = Txn::new().and_then([TxnOp::txn(t)]);
        }
        t
    };
    let r = c.txn(nested(10)).await.expect("a Txn nested 10 deep");
    assert!(r.succeeded());
    let e = status_of(c.txn(nested(300)).await.unwrap_err());
    assert_eq!(
        (e.code(), e.message()),
        (
            Code::InvalidArgument,
            "etcdserver: too many operations in txn request"
        )
    );
}

crate::on_every_target!(
    watch_outlives_half_close,
    compact_zero,
    long_keys,
    deeply_nested_txns
);

/// A prost message whose field 1 (a WatchRequest's create_request) holds
/// bytes that are no WatchCreateRequest.
#[derive(Clone, PartialEq, prost::Message)]
struct Garbage {
    #[prost(bytes = "vec", tag = "1")]
    create: Vec<u8>,
}

/// An undecodable or oversized message on a Watch stream ends it with an
/// error status, not OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreadable_watch_messages_end_the_stream_with_an_error() {
    let k = Koine::start(&[]).await;
    wait_ready(&k.endpoint).await;
    for (what, msg, code) in [
        (
            "undecodable",
            Garbage { create: vec![0x08] },
            Code::Internal,
        ),
        (
            "16 MiB",
            Garbage {
                create: vec![0x0a; 16 << 20],
            },
            Code::ResourceExhausted,
        ),
    ] {
        let mut grpc = raw(&k.endpoint).await;
        grpc.ready().await.unwrap();
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tx.send(msg).await.unwrap();
        let resp = grpc
            .streaming(
                tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
                http::uri::PathAndQuery::from_static("/etcdserverpb.Watch/Watch"),
                tonic_prost::ProstCodec::<Garbage, pb::WatchResponse>::default(),
            )
            .await;
        let status = match resp {
            Err(status) => status,
            Ok(resp) => {
                let mut stream = resp.into_inner();
                match within(stream.message()).await {
                    Err(status) => status,
                    Ok(other) => panic!("{what}: the stream ended with {other:?}, not an error"),
                }
            }
        };
        assert_eq!(status.code(), code, "{what}: {status:?}");
        drop(tx);
    }
}

/// A SQLite file damaged in the middle: reads of the damaged part fail
/// with etcd's "corrupt cluster", and health reports it from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_sqlite_file_is_reported_by_health() {
    let k = Koine::start(&[]).await;
    wait_ready(&k.endpoint).await;
    let mut c = client(&k.endpoint).await;
    for i in 0..2000 {
        c.put(format!("k/{i:05}"), vec![b'v'; 500], None)
            .await
            .unwrap();
    }
    drop(c);
    let dir = k.stop().await;
    let db = dir.path().join("state.db");
    let mut bytes = std::fs::read(&db).unwrap();
    // The middle half: pages of both the log and the current table.
    let (from, to) = (bytes.len() / 4, bytes.len() * 3 / 4);
    for b in &mut bytes[from..to] {
        *b = 0x5a;
    }
    std::fs::write(&db, bytes).unwrap();
    let k = Koine::start_in(dir, &[]).await;
    wait_ready(&k.endpoint).await;
    let mut c = client(&k.endpoint).await;
    let mut damaged = None;
    for _ in 0..3 {
        match c
            .get("k/", Some(etcd_client::GetOptions::new().with_prefix()))
            .await
        {
            Err(e) => {
                damaged = Some(status_of(e));
                break;
            }
            Ok(r) => assert!(r.kvs().len() <= 2000),
        }
    }
    let damaged = damaged.expect("reading the damaged pages never failed");
    assert_eq!(
        (damaged.code(), damaged.message()),
        (Code::DataLoss, "etcdserver: corrupt cluster")
    );
    let (code, body) = http_get(k.addr, "/health").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("corrupt"), "{body}");
}

/// Where the proxy cuts a write transaction's COMMIT.
#[derive(Clone, Copy, PartialEq)]
enum Cut {
    /// Forward it, then close: the database commits, Koine never hears.
    AfterCommit,
    /// Close without forwarding: the database rolls back.
    BeforeCommit,
}

/// A TCP proxy between Koine and its database that, once armed, cuts the
/// connection of the next write transaction at its COMMIT. Koine's writer
/// begins with a plain `BEGIN` and ends with `COMMIT`, both sent as text
/// (PostgreSQL simple query 'Q'; MySQL COM_QUERY); reads begin otherwise.
struct CutProxy {
    addr: std::net::SocketAddr,
    armed: Arc<std::sync::Mutex<Option<Cut>>>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
}

use std::sync::Arc;

impl CutProxy {
    async fn start(upstream: std::net::SocketAddr, mysql: bool) -> CutProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let armed = Arc::new(std::sync::Mutex::new(None));
        let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (begin, commit): (&[u8], &[u8]) = if mysql {
            (b"\x06\x00\x00\x00\x03BEGIN", b"\x07\x00\x00\x00\x03COMMIT")
        } else {
            (
                b"Q\x00\x00\x00\x0aBEGIN\x00",
                b"Q\x00\x00\x00\x0bCOMMIT\x00",
            )
        };
        let (a, c) = (armed.clone(), cuts.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = tokio::net::TcpStream::connect(upstream).await else {
                    continue;
                };
                tokio::spawn(relay(client, server, begin, commit, a.clone(), c.clone()));
            }
        });
        CutProxy { addr, armed, cuts }
    }

    fn arm(&self, cut: Cut) {
        *self.armed.lock().unwrap() = Some(cut);
    }

    fn cuts(&self) -> usize {
        self.cuts.load(std::sync::atomic::Ordering::SeqCst)
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn relay(
    client: tokio::net::TcpStream,
    server: tokio::net::TcpStream,
    begin: &'static [u8],
    commit: &'static [u8],
    armed: Arc<std::sync::Mutex<Option<Cut>>>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut cr, mut cw) = client.into_split();
    let (mut sr, mut sw) = server.into_split();
    let back = tokio::spawn(async move { tokio::io::copy(&mut sr, &mut cw).await });
    let mut buf = vec![0u8; 64 << 10];
    let mut writing = false;
    loop {
        let n = match cr.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        if contains(chunk, begin) {
            writing = true;
        }
        let cut = if writing && contains(chunk, commit) {
            writing = false;
            armed.lock().unwrap().take()
        } else {
            None
        };
        if cut.is_some() {
            // Nothing more reaches Koine from here on: not the COMMIT's
            // answer either.
            back.abort();
        }
        if cut != Some(Cut::BeforeCommit) && sw.write_all(chunk).await.is_err() {
            break;
        }
        if cut.is_some() {
            cuts.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // Let the database take the COMMIT, then cut both ways.
            tokio::time::sleep(Duration::from_millis(50)).await;
            break;
        }
    }
    back.abort();
}

/// The create Txn kube-apiserver sends: [MOD(key) == 0] → [Put].
async fn create(
    c: &mut etcd_client::Client,
    key: &str,
) -> Result<etcd_client::TxnResponse, etcd_client::Error> {
    use etcd_client::{Compare, CompareOp, Txn, TxnOp};
    c.txn(
        Txn::new()
            .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
            .and_then([TxnOp::put(key, "v", None)]),
    )
    .await
}

/// The connection to the database breaks during COMMIT. Koine asks the
/// database whether the batch committed and answers the truth: a create
/// that committed is reported as succeeded, once (not re-applied, not
/// reported as failed); one that did not is reported as failed, nothing of
/// it applied, and the client's retry creates it once.
async fn commit_cut(dsn: &str, db: std::net::SocketAddr, mysql: bool) {
    let proxy = CutProxy::start(db, mysql).await;
    let dsn = dsn.replace(&db.to_string(), &proxy.addr.to_string());
    let k = Koine::start_on(&dsn, &[]).await;
    wait_ready(&k.endpoint).await;
    let mut c = client(&k.endpoint).await;
    let before = c.put("before", "1", None).await.unwrap();
    let before = before.header().unwrap().revision();

    proxy.arm(Cut::AfterCommit);
    let r = create(&mut c, "kept").await.expect("a committed create");
    assert_eq!(proxy.cuts(), 1, "the proxy never cut a COMMIT");
    assert!(r.succeeded(), "a committed create reported as failed");
    let revision = r.header().unwrap().revision();
    assert_eq!(revision, before + 1);
    let got = c.get("kept", None).await.unwrap();
    assert_eq!(got.kvs()[0].version(), 1, "applied more than once");
    assert_eq!(got.kvs()[0].mod_revision(), revision);

    proxy.arm(Cut::BeforeCommit);
    let e = create(&mut c, "retried").await.unwrap_err();
    assert_eq!(proxy.cuts(), 2, "the proxy never cut a COMMIT");
    assert_eq!(status_of(e).code(), Code::Unavailable);
    assert!(c.get("retried", None).await.unwrap().kvs().is_empty());
    let r = create(&mut c, "retried").await.expect("the retry");
    assert!(r.succeeded());
    // Revisions stayed dense: the rolled-back batch used none.
    assert_eq!(r.header().unwrap().revision(), before + 2);
}

fn db_addr(dsn: &str) -> std::net::SocketAddr {
    let rest = dsn.split_once('@').expect("user@host").1;
    rest.split('/').next().unwrap().parse().expect("host:port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_commit_is_resolved_postgres() {
    let pg = Postgres::start().await;
    let dsn = pg.dsn("koine");
    commit_cut(&dsn, db_addr(&dsn), false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_commit_is_resolved_mysql() {
    let db = crate::dbs::MariaDb::start().await;
    let dsn = db.dsn("koine");
    commit_cut(&dsn, db_addr(&dsn), true).await;
}
