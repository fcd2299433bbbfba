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
    // SQL mode has no Auth service.
    let e = unary_at(
        &mut grpc,
        "/etcdserverpb.Auth/AuthStatus",
        pb::AuthStatusRequest::default(),
    )
    .await
    .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unimplemented, "unknown service etcdserverpb.Auth")
    );
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
    assert!(e.contains("missing-key.pem"), "{e}");
}
