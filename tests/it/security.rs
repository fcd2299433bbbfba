//! What an attacker tries: requests that cost the server memory, calls
//! without credentials, permissions sidestepped. Each test runs against
//! Koine and against real etcd as the reference (3.4 from Debian; 3.7,
//! built by scripts/kubernetes.sh, where etcd 3.5+ changed the rules:
//! those tests are `#[ignore]`d and scripts/test.sh runs them once etcd
//! 3.7 is built).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Etcd, KoineProcess};

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK string or integer length with a 7-bit prefix.
fn hpack_len(out: &mut Vec<u8>, first: u8, mut v: usize) {
    if v < 127 {
        out.push(first | v as u8);
        return;
    }
    out.push(first | 127);
    v -= 127;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// An HPACK bomb: a malformed `:authority` (the one Koine's transport
/// decodes headers for), one 4,000-byte field added to the HPACK table,
/// then its one-byte index `repeats` times — 4,000 decoded bytes per byte
/// sent. Cut into a HEADERS frame and CONTINUATIONs; the last one ends
/// the block unless `finish` is false.
fn hpack_bomb(repeats: usize, finish: bool) -> Vec<u8> {
    let mut block = vec![0x01];
    let bad = b"http://127.0.0.1:2379";
    hpack_len(&mut block, 0, bad.len());
    block.extend_from_slice(bad);
    block.push(0x40);
    hpack_len(&mut block, 0, 5);
    block.extend_from_slice(b"x-big");
    hpack_len(&mut block, 0, 4000);
    block.extend_from_slice(&[b'a'; 4000]);
    block.extend(std::iter::repeat_n(0x80 | 62, repeats));
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, c) in chunks.iter().enumerate() {
        let kind = if i == 0 { 0x1 } else { 0x9 };
        let end = finish && i + 1 == chunks.len();
        out.extend(frame(kind, if end { 0x4 } else { 0 }, 1, c));
    }
    out
}

/// Sends `bytes` on a new connection to `addr` and reads what comes back
/// until the server closes it or `linger` passes; the socket is returned
/// open if the server kept it.
async fn attack(addr: &str, bytes: Vec<u8>, linger: Duration) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    // The server may close before it has read it all.
    let _ = s.write_all(&bytes).await;
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + linger;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => return Some(s),
        }
    }
}

/// HPACK bombs (256 KiB of header block on each of 8 connections, each
/// ~260 MB decoded) and 200 connections that leave a 1 MiB header block
/// unfinished cost the server no more memory than h2 itself would hold,
/// and it goes on answering.
async fn header_blocks_cost_bounded_memory(endpoint: &str, pid: u32) {
    let addr = endpoint.trim_start_matches("http://").to_string();
    let before = rss_kib(pid);
    let bombs = (0..8).map(|_| {
        let addr = addr.clone();
        tokio::spawn(async move {
            attack(&addr, hpack_bomb(256 << 10, true), Duration::from_secs(3)).await
        })
    });
    for b in bombs {
        b.await.unwrap();
    }
    let after_bombs = rss_kib(pid);
    let mut held = Vec::new();
    for _ in 0..200 {
        let addr = addr.clone();
        held.push(tokio::spawn(async move {
            attack(
                &addr,
                hpack_bomb(1 << 20, false),
                Duration::from_millis(200),
            )
            .await
        }));
    }
    let mut open = Vec::new();
    for h in held {
        open.extend(h.await.unwrap());
    }
    let after_held = rss_kib(pid);
    let grew = |kib: u64| kib.saturating_sub(before) / 1024;
    eprintln!(
        "RSS from {} MiB: +{} MiB after the bombs, +{} MiB with {} unfinished blocks held",
        before / 1024,
        grew(after_bombs),
        grew(after_held),
        open.len()
    );
    assert!(
        grew(after_bombs) < 64 && grew(after_held) < 64,
        "RSS grew by {} MiB after the bombs, {} MiB with {} unfinished blocks held (from {} MiB)",
        grew(after_bombs),
        grew(after_held),
        open.len(),
        before / 1024
    );
    drop(open);
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    c.put("after", "attack", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_cost_bounded_memory_koine() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("state.db").display());
    let k = KoineProcess::start(&db, &[]).await;
    header_blocks_cost_bounded_memory(&k.endpoint, k.pid()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_cost_bounded_memory_etcd() {
    let e = Etcd::start().await;
    header_blocks_cost_bounded_memory(&e.endpoint, e.pid()).await;
}

/// A header block left unfinished: Koine closes the connection once
/// `BLOCK_TIMEOUT` (10 s) has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_header_block_is_not_held_forever() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("state.db").display());
    let k = KoineProcess::start(&db, &[]).await;
    let addr = k.endpoint.trim_start_matches("http://");
    let start = std::time::Instant::now();
    let kept = attack(addr, hpack_bomb(100, false), Duration::from_secs(30)).await;
    assert!(kept.is_none(), "the connection was still open after 30 s");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "closed after {took:?}"
    );
}

// ---- auth: what etcd 3.5+ refuses without (the right) credentials ----

use futures::StreamExt;
use koine::proto::etcdserverpb::{self as pb, request_op};
use koine::proto::v3lockpb;
use tonic::Code;
use tonic::transport::Channel;

use crate::harness::{Server, Target, run};

const USER_EMPTY: (Code, &str) = (Code::InvalidArgument, "etcdserver: user name is empty");
const INVALID_TOKEN: (Code, &str) = (Code::Unauthenticated, "etcdserver: invalid auth token");
const DENIED: (Code, &str) = (Code::PermissionDenied, "etcdserver: permission denied");
const OLD_REVISION: (Code, &str) = (
    Code::InvalidArgument,
    "etcdserver: revision of auth store is old",
);

/// `msg` as a request carrying `token` (none: anonymous).
fn req<T>(msg: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(t) = token {
        r.metadata_mut().insert("token", t.parse().unwrap());
    }
    r
}

fn refused<T: std::fmt::Debug>(r: Result<tonic::Response<T>, tonic::Status>, want: (Code, &str)) {
    match r {
        Ok(resp) => panic!("expected {want:?}, got {resp:?}"),
        Err(s) => assert_eq!((s.code(), s.message()), want, "{s:?}"),
    }
}

async fn channel(endpoint: &str) -> Channel {
    Channel::from_shared(endpoint.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn token(ch: &Channel, user: &str, password: &str) -> String {
    pb::auth_client::AuthClient::new(ch.clone())
        .authenticate(pb::AuthenticateRequest {
            name: user.into(),
            password: password.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .token
}

/// root (root role); alice READWRITE on the prefix /a/, bob on /b/; auth
/// on. Returns (root, alice, bob) tokens.
async fn users(endpoint: &str) -> (String, String, String) {
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.role_add("root").await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    for (user, prefix) in [("alice", "/a/"), ("bob", "/b/")] {
        c.user_add(user, format!("{user}pw"), None).await.unwrap();
        c.role_add(user).await.unwrap();
        c.role_grant_permission(
            user,
            etcd_client::Permission::read_write(prefix).with_prefix(),
        )
        .await
        .unwrap();
        c.user_grant_role(user, user).await.unwrap();
    }
    c.auth_enable().await.unwrap();
    let ch = channel(endpoint).await;
    (
        token(&ch, "root", "rootpw").await,
        token(&ch, "alice", "alicepw").await,
        token(&ch, "bob", "bobpw").await,
    )
}

fn alarm(action: pb::alarm_request::AlarmAction, alarm: pb::AlarmType) -> pb::AlarmRequest {
    pb::AlarmRequest {
        action: action as i32,
        member_id: 0,
        alarm: alarm as i32,
    }
}

/// POSTs `body` to the JSON gateway; the HTTP status and the body.
async fn gateway_post(
    endpoint: &str,
    path: &str,
    body: &[u8],
    token: Option<&str>,
) -> (u16, String) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), body).unwrap();
    let mut cmd = tokio::process::Command::new("curl");
    cmd.args(["-s", "-X", "POST", "-w", "\n%{http_code}", "--data-binary"])
        .arg(format!("@{}", file.path().display()))
        .arg(format!("{endpoint}{path}"));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd.output().await.expect("curl");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), body.to_string())
}

/// Alarm ACTIVATE and DEACTIVATE need the root role, GET a user, over
/// gRPC and the gateway; a refused alarm stops nothing.
async fn alarms_need_root(s: Server) {
    use pb::alarm_request::AlarmAction::{Activate, Deactivate, Get};
    let (root, alice, _) = users(&s.endpoint).await;
    let mut m = pb::maintenance_client::MaintenanceClient::new(channel(&s.endpoint).await);
    let corrupt = || alarm(Activate, pb::AlarmType::Corrupt);
    refused(m.alarm(req(corrupt(), None)).await, USER_EMPTY);
    refused(m.alarm(req(corrupt(), Some(&alice))).await, DENIED);
    refused(
        m.alarm(req(alarm(Activate, pb::AlarmType::Nospace), None))
            .await,
        USER_EMPTY,
    );
    refused(
        m.alarm(req(alarm(Deactivate, pb::AlarmType::Nospace), Some(&alice)))
            .await,
        DENIED,
    );
    refused(
        m.alarm(req(alarm(Get, pb::AlarmType::None), None)).await,
        USER_EMPTY,
    );
    let (code, body) = gateway_post(
        &s.endpoint,
        "/v3/maintenance/alarm",
        br#"{"action":"ACTIVATE","alarm":"CORRUPT"}"#,
        None,
    )
    .await;
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("etcdserver: user name is empty"), "{body}");
    // Nothing was raised: alice reads the list, and writes go on.
    let listed = m
        .alarm(req(alarm(Get, pb::AlarmType::None), Some(&alice)))
        .await
        .unwrap()
        .into_inner();
    assert!(listed.alarms.is_empty(), "{listed:?}");
    let mut kv = pb::kv_client::KvClient::new(channel(&s.endpoint).await);
    kv.put(req(
        pb::PutRequest {
            key: "/a/x".into(),
            value: "1".into(),
            ..Default::default()
        },
        Some(&alice),
    ))
    .await
    .unwrap();
    // root may.
    let raised = m
        .alarm(req(alarm(Activate, pb::AlarmType::Nospace), Some(&root)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(raised.alarms.len(), 1, "{raised:?}");
    m.alarm(req(alarm(Deactivate, pb::AlarmType::Nospace), Some(&root)))
        .await
        .unwrap();
}

/// A lease of bob's with bob's key /b/k attached; its id.
async fn bobs_lease(ch: &Channel, bob: &str) -> i64 {
    let id = pb::lease_client::LeaseClient::new(ch.clone())
        .lease_grant(req(pb::LeaseGrantRequest { ttl: 60, id: 0 }, Some(bob)))
        .await
        .unwrap()
        .into_inner()
        .id;
    pb::kv_client::KvClient::new(ch.clone())
        .put(req(
            pb::PutRequest {
                key: "/b/k".into(),
                value: "v".into(),
                lease: id,
                ..Default::default()
            },
            Some(bob),
        ))
        .await
        .unwrap();
    id
}

async fn lease_ids(ch: &Channel, root: &str) -> Vec<i64> {
    let mut ids: Vec<i64> = pb::lease_client::LeaseClient::new(ch.clone())
        .lease_leases(req(pb::LeaseLeasesRequest {}, Some(root)))
        .await
        .unwrap()
        .into_inner()
        .leases
        .iter()
        .map(|l| l.id)
        .collect();
    ids.sort();
    ids
}

/// The first answer of a keepalive stream sending one keepalive of `id`.
async fn keep_alive(ch: &Channel, id: i64, token: Option<&str>) -> Result<i64, tonic::Status> {
    let mut lease = pb::lease_client::LeaseClient::new(ch.clone());
    let reqs =
        futures::stream::iter([pb::LeaseKeepAliveRequest { id }]).chain(futures::stream::pending());
    let mut stream = lease.lease_keep_alive(req(reqs, token)).await?.into_inner();
    match stream.message().await? {
        Some(r) => Ok(r.ttl),
        None => panic!("keepalive stream ended without an answer"),
    }
}

/// etcd 3.5+'s rules for the calls that take no key: a user is needed
/// (a bad token is refused as such), keepalives and lease listings need
/// the permissions on the leases' keys, and a Lock without a user leaves
/// no lease behind.
async fn calls_without_a_user_are_refused(s: Server) {
    let (root, alice, bob) = users(&s.endpoint).await;
    let ch = channel(&s.endpoint).await;
    let mut lease = pb::lease_client::LeaseClient::new(ch.clone());
    let grant = || pb::LeaseGrantRequest { ttl: 60, id: 0 };
    refused(lease.lease_grant(req(grant(), None)).await, USER_EMPTY);
    refused(
        lease.lease_grant(req(grant(), Some("bogus.1"))).await,
        INVALID_TOKEN,
    );
    let id = bobs_lease(&ch, &bob).await;
    refused(
        lease
            .lease_leases(req(pb::LeaseLeasesRequest {}, None))
            .await,
        USER_EMPTY,
    );
    refused(
        lease
            .lease_leases(req(pb::LeaseLeasesRequest {}, Some(&alice)))
            .await,
        DENIED,
    );
    assert_eq!(lease_ids(&ch, &root).await, vec![id]);
    let ttl = |keys| pb::LeaseTimeToLiveRequest { id, keys };
    refused(
        lease.lease_time_to_live(req(ttl(false), None)).await,
        USER_EMPTY,
    );
    refused(
        lease.lease_time_to_live(req(ttl(true), Some(&alice))).await,
        DENIED,
    );
    lease
        .lease_time_to_live(req(ttl(false), Some(&alice)))
        .await
        .unwrap();
    let e = keep_alive(&ch, id, None).await.unwrap_err();
    assert_eq!((e.code(), e.message()), USER_EMPTY, "{e:?}");
    let e = keep_alive(&ch, id, Some(&alice)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), DENIED, "{e:?}");
    assert!(keep_alive(&ch, id, Some(&bob)).await.unwrap() > 0);
    let mut m = pb::maintenance_client::MaintenanceClient::new(ch.clone());
    refused(m.status(req(pb::StatusRequest {}, None)).await, USER_EMPTY);
    m.status(req(pb::StatusRequest {}, Some(&alice)))
        .await
        .unwrap();
    let mut cluster = pb::cluster_client::ClusterClient::new(ch.clone());
    refused(
        cluster
            .member_list(req(pb::MemberListRequest::default(), None))
            .await,
        USER_EMPTY,
    );
    cluster
        .member_list(req(pb::MemberListRequest::default(), Some(&alice)))
        .await
        .unwrap();
    // Lock without a user: refused, and no session lease is left.
    let mut lock = v3lockpb::lock_client::LockClient::new(ch.clone());
    for _ in 0..5 {
        let r = lock
            .lock(req(
                v3lockpb::LockRequest {
                    name: "/a/lock".into(),
                    lease: 0,
                },
                None,
            ))
            .await;
        refused(r, (Code::Unknown, USER_EMPTY.1));
    }
    assert_eq!(lease_ids(&ch, &root).await, vec![id]);
}

fn put_op(key: &str, lease: i64) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.to_string().into(),
            value: "v".into(),
            lease,
            ..Default::default()
        })),
    }
}

/// Attaching a key to a lease needs WRITE on the keys already on it, in a
/// Txn (either branch, nested ones too) as in a Put; refused, nothing is
/// attached and bob keeps his lease in hand.
async fn txn_puts_check_lease_keys(s: Server) {
    let (_, alice, bob) = users(&s.endpoint).await;
    let ch = channel(&s.endpoint).await;
    let id = bobs_lease(&ch, &bob).await;
    let mut kv = pb::kv_client::KvClient::new(ch.clone());
    refused(
        kv.put(req(
            pb::PutRequest {
                key: "/a/x".into(),
                value: "v".into(),
                lease: id,
                ..Default::default()
            },
            Some(&alice),
        ))
        .await,
        DENIED,
    );
    let txn = |success, failure| pb::TxnRequest {
        compare: Vec::new(),
        success,
        failure,
    };
    for t in [
        txn(vec![put_op("/a/x", id)], vec![]),
        txn(vec![], vec![put_op("/a/x", id)]),
        txn(
            vec![pb::RequestOp {
                request: Some(request_op::Request::RequestTxn(txn(
                    vec![put_op("/a/y", 0), put_op("/a/x", id)],
                    vec![],
                ))),
            }],
            vec![],
        ),
    ] {
        refused(kv.txn(req(t, Some(&alice))).await, DENIED);
    }
    let keys = pb::lease_client::LeaseClient::new(ch.clone())
        .lease_time_to_live(req(
            pb::LeaseTimeToLiveRequest { id, keys: true },
            Some(&bob),
        ))
        .await
        .unwrap()
        .into_inner()
        .keys;
    assert_eq!(keys, vec![bytes::Bytes::from("/b/k")]);
    // Alice's own lease is hers to use, in a Txn too.
    let own = pb::lease_client::LeaseClient::new(ch.clone())
        .lease_grant(req(pb::LeaseGrantRequest { ttl: 60, id: 0 }, Some(&alice)))
        .await
        .unwrap()
        .into_inner()
        .id;
    kv.txn(req(txn(vec![put_op("/a/x", own)], vec![]), Some(&alice)))
        .await
        .unwrap();
    pb::lease_client::LeaseClient::new(ch)
        .lease_revoke(req(pb::LeaseRevokeRequest { id }, Some(&bob)))
        .await
        .unwrap();
}

/// A permission of a type etcd does not know grants nothing.
async fn unknown_permission_types_grant_nothing(s: Server) {
    let mut c = etcd_client::Client::connect([s.endpoint.as_str()], None)
        .await
        .unwrap();
    c.user_add("root", "rootpw", None).await.unwrap();
    c.role_add("root").await.unwrap();
    c.user_grant_role("root", "root").await.unwrap();
    c.user_add("carol", "carolpw", None).await.unwrap();
    c.role_add("odd").await.unwrap();
    c.user_grant_role("carol", "odd").await.unwrap();
    let ch = channel(&s.endpoint).await;
    pb::auth_client::AuthClient::new(ch.clone())
        .role_grant_permission(pb::AuthRoleGrantPermissionRequest {
            name: "odd".into(),
            perm: Some(koine::proto::authpb::Permission {
                perm_type: 5,
                key: "/c".into(),
                range_end: Vec::new().into(),
            }),
        })
        .await
        .unwrap();
    c.put("/c", "1", None).await.unwrap();
    c.auth_enable().await.unwrap();
    let carol = token(&ch, "carol", "carolpw").await;
    let mut kv = pb::kv_client::KvClient::new(ch);
    let get = pb::RangeRequest {
        key: "/c".into(),
        ..Default::default()
    };
    refused(kv.range(req(get, Some(&carol))).await, DENIED);
    let put = pb::PutRequest {
        key: "/c".into(),
        value: "2".into(),
        ..Default::default()
    };
    refused(kv.put(req(put, Some(&carol))).await, DENIED);
    // Validation comes first: an empty key is "not provided", not denied.
    let empty = pb::PutRequest {
        value: "2".into(),
        ..Default::default()
    };
    refused(
        kv.put(req(empty, Some(&carol))).await,
        (Code::InvalidArgument, "etcdserver: key is not provided"),
    );
}

crate::on_targets!([Sqlite sqlite, Postgres postgres, MySql mysql];
    alarms_need_root, calls_without_a_user_are_refused, txn_puts_check_lease_keys);
crate::on_targets!([Sqlite sqlite, Postgres postgres, MySql mysql, Etcd etcd];
    unknown_permission_types_grant_nothing);

/// The same, judged by etcd 3.7 (run by scripts/test.sh once it is built).
mod etcd37 {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs ETCD37_DIR (scripts/test.sh)"]
    async fn alarms_need_root() {
        run(Target::Etcd37, super::alarms_need_root).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs ETCD37_DIR (scripts/test.sh)"]
    async fn calls_without_a_user_are_refused() {
        run(Target::Etcd37, super::calls_without_a_user_are_refused).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs ETCD37_DIR (scripts/test.sh)"]
    async fn txn_puts_check_lease_keys() {
        run(Target::Etcd37, super::txn_puts_check_lease_keys).await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs ETCD37_DIR (scripts/test.sh)"]
    async fn a_watch_from_a_negative_revision_is_cancelled() {
        run(
            Target::Etcd37,
            super::a_watch_from_a_negative_revision_is_cancelled,
        )
        .await
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs ETCD37_DIR (scripts/test.sh)"]
    async fn unknown_permission_types_grant_nothing() {
        run(
            Target::Etcd37,
            super::unknown_permission_types_grant_nothing,
        )
        .await
    }
}

// ---- JWT tokens: revision and expiry ----

/// An RSA key pair for JWTs: (private, public) in `dir`.
fn jwt_keys(dir: &std::path::Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let (private, public) = (dir.join("jwt.key"), dir.join("jwt.pub"));
    let run = |args: &[&std::ffi::OsStr]| {
        std::process::Command::new("openssl")
            .args(args)
            .output()
            .expect("openssl")
            .status
            .success()
    };
    assert!(
        run(&[
            "genrsa".as_ref(),
            "-out".as_ref(),
            private.as_os_str(),
            "2048".as_ref()
        ]) && run(&[
            "rsa".as_ref(),
            "-pubout".as_ref(),
            "-in".as_ref(),
            private.as_os_str(),
            "-out".as_ref(),
            public.as_os_str(),
        ]),
        "openssl could not make a key pair"
    );
    (private, public)
}

/// A JWT ends with the auth revision it was signed at (a password change,
/// a user deleted and added again, auth disabled and enabled again: its
/// key operations are refused as "revision of auth store is old", and a
/// fresh token works), and at its expiry, to the second (ttl=3s).
async fn jwt_tokens_end_with_their_revision_and_expiry(endpoint: &str) {
    let (root, alice, _) = users(endpoint).await;
    let ch = channel(endpoint).await;
    let mut kv = pb::kv_client::KvClient::new(ch.clone());
    let get = || pb::RangeRequest {
        key: "/a/x".into(),
        ..Default::default()
    };
    let mut auth = pb::auth_client::AuthClient::new(ch.clone());
    kv.range(req(get(), Some(&alice))).await.unwrap();
    auth.user_change_password(req(
        pb::AuthUserChangePasswordRequest {
            name: "alice".into(),
            password: "new".into(),
            hashed_password: String::new(),
        },
        Some(&root),
    ))
    .await
    .unwrap();
    refused(kv.range(req(get(), Some(&alice))).await, OLD_REVISION);
    let root = token(&ch, "root", "rootpw").await;
    let alice = token(&ch, "alice", "new").await;
    kv.range(req(get(), Some(&alice))).await.unwrap();
    auth.user_delete(req(
        pb::AuthUserDeleteRequest {
            name: "alice".into(),
        },
        Some(&root),
    ))
    .await
    .unwrap();
    let root = token(&ch, "root", "rootpw").await;
    auth.user_add(req(
        pb::AuthUserAddRequest {
            name: "alice".into(),
            password: "again".into(),
            ..Default::default()
        },
        Some(&root),
    ))
    .await
    .unwrap();
    let root = token(&ch, "root", "rootpw").await;
    auth.user_grant_role(req(
        pb::AuthUserGrantRoleRequest {
            user: "alice".into(),
            role: "alice".into(),
        },
        Some(&root),
    ))
    .await
    .unwrap();
    refused(kv.range(req(get(), Some(&alice))).await, OLD_REVISION);
    let alice = token(&ch, "alice", "again").await;
    kv.range(req(get(), Some(&alice))).await.unwrap();
    let root = token(&ch, "root", "rootpw").await;
    auth.auth_disable(req(pb::AuthDisableRequest {}, Some(&root)))
        .await
        .unwrap();
    auth.auth_enable(req(pb::AuthEnableRequest {}, None))
        .await
        .unwrap();
    refused(kv.range(req(get(), Some(&alice))).await, OLD_REVISION);
    // Expiry: valid within its 3 s, refused one second past them.
    let alice = token(&ch, "alice", "again").await;
    kv.range(req(get(), Some(&alice))).await.unwrap();
    tokio::time::sleep(Duration::from_millis(4_200)).await;
    refused(kv.range(req(get(), Some(&alice))).await, INVALID_TOKEN);
}

fn jwt_flag(dir: &std::path::Path) -> String {
    let (private, public) = jwt_keys(dir);
    format!(
        "jwt,pub-key={},priv-key={},sign-method=RS256,ttl=3s",
        public.display(),
        private.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_end_with_their_revision_and_expiry_koine() {
    let dir = tempfile::tempdir().unwrap();
    let k = crate::harness::Koine::start(&["--auth-token", &jwt_flag(dir.path())]).await;
    jwt_tokens_end_with_their_revision_and_expiry(&k.endpoint).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_tokens_end_with_their_revision_and_expiry_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let flag = jwt_flag(dir.path());
    let e = Etcd::start_args(&crate::harness::etcd_binary(), &["--auth-token", &flag]).await;
    jwt_tokens_end_with_their_revision_and_expiry(&e.endpoint).await;
}

// ---- small divergences ----

/// etcd's answers at the edges of the request space: a compare result it
/// does not know holds, a Range with the largest limit reads every key,
/// and a Lock whose name makes too large a request gets "request is too
/// large".
async fn edges_answer_as_etcd(s: Server) {
    let ch = channel(&s.endpoint).await;
    let mut kv = pb::kv_client::KvClient::new(ch.clone());
    for k in ["/e/1", "/e/2"] {
        kv.put(pb::PutRequest {
            key: k.into(),
            value: "v".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    }
    for key in ["/e/1", "/e/missing"] {
        let t = pb::TxnRequest {
            compare: vec![pb::Compare {
                result: 9,
                target: pb::compare::CompareTarget::Version as i32,
                key: key.into(),
                target_union: Some(pb::compare::TargetUnion::Version(12)),
                ..Default::default()
            }],
            ..Default::default()
        };
        let r = kv.txn(t).await.unwrap().into_inner();
        assert!(r.succeeded, "compare result 9 on {key}");
    }
    let all = kv
        .range(pb::RangeRequest {
            key: "/e/".into(),
            range_end: "/e0".into(),
            limit: i64::MAX,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((all.kvs.len(), all.more, all.count), (2, false, 2));
    let mut lock = v3lockpb::lock_client::LockClient::new(ch).max_encoding_message_size(8 << 20);
    let r = lock
        .lock(v3lockpb::LockRequest {
            name: vec![b'n'; 1_600_000].into(),
            lease: 0,
        })
        .await;
    refused(r, (Code::Unknown, "etcdserver: request is too large"));
}

crate::on_targets!([Sqlite sqlite, Postgres postgres, MySql mysql, Etcd etcd];
    edges_answer_as_etcd);

/// etcd 3.5+ cancels a watch from a negative revision as compacted (3.4
/// accepted it).
async fn a_watch_from_a_negative_revision_is_cancelled(s: Server) {
    let ch = channel(&s.endpoint).await;
    let mut watch = pb::watch_client::WatchClient::new(ch.clone());
    let create = pb::WatchRequest {
        request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
            pb::WatchCreateRequest {
                key: "/e/1".into(),
                start_revision: -1,
                ..Default::default()
            },
        )),
    };
    let mut stream = watch
        .watch(futures::stream::iter([create]).chain(futures::stream::pending()))
        .await
        .unwrap()
        .into_inner();
    let w = stream.message().await.unwrap().unwrap();
    assert!(w.created && w.canceled, "{w:?}");
    assert_eq!(w.watch_id, -1);
    assert_eq!(
        w.cancel_reason,
        "etcdserver: mvcc: required revision has been compacted"
    );
}

crate::on_targets!([Sqlite sqlite, Postgres postgres, MySql mysql];
    a_watch_from_a_negative_revision_is_cancelled);

/// The gateway takes what `--max-request-bytes` allows (a 1.6 MB value
/// under a 4 MiB limit), refuses more with etcd's JSON error, and refuses
/// a body far over any limit with a JSON error too.
async fn gateway_bodies_follow_max_request_bytes(endpoint: &str, is_koine: bool) {
    // A value of 3n bytes "vvv…" in base64 ("dnZ2" n times), at /g/big.
    let body = |n: usize| format!(r#"{{"key":"L2cvYmln","value":"{}"}}"#, "dnZ2".repeat(n / 3));
    let (code, text) = gateway_post(endpoint, "/v3/kv/put", body(1_600_002).as_bytes(), None).await;
    assert_eq!(code, 200, "{text}");
    let (code, text) = gateway_post(endpoint, "/v3/kv/put", body(4_300_002).as_bytes(), None).await;
    assert_eq!(code, 400, "{}", &text[..text.len().min(300)]);
    assert!(text.contains("etcdserver: request is too large"), "{text}");
    if is_koine {
        let (code, text) =
            gateway_post(endpoint, "/v3/kv/put", body(8_000_001).as_bytes(), None).await;
        assert_eq!(code, 400, "{}", &text[..text.len().min(300)]);
        let v: serde_json::Value = serde_json::from_str(&text).expect("a JSON error body");
        assert_eq!(v["message"], "etcdserver: request is too large");
        assert_eq!(v["code"], 3);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_bodies_follow_max_request_bytes_koine() {
    let k = crate::harness::Koine::start(&["--max-request-bytes", "4194304"]).await;
    gateway_bodies_follow_max_request_bytes(&k.endpoint, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_bodies_follow_max_request_bytes_etcd() {
    let e = Etcd::start_args(
        &crate::harness::etcd_binary(),
        &["--max-request-bytes", "4194304"],
    )
    .await;
    gateway_bodies_follow_max_request_bytes(&e.endpoint, false).await;
}

// ---- instances on one database: a revocation takes effect everywhere ----

/// Alice writes on instance B in a loop while root revokes her role on
/// instance A: B refuses her within a few milliseconds of A's answer (the
/// change's NOTIFY on PostgreSQL, the next `--poll-interval` on MySQL),
/// not at a once-a-second poll. Prints what it measured.
async fn a_revocation_reaches_the_other_instance_at_once(dsn: String) {
    let a = KoineProcess::start(&dsn, &[]).await;
    let b = KoineProcess::start(&dsn, &[]).await;
    let (root, alice, _) = users(&a.endpoint).await;
    let ch_b = channel(&b.endpoint).await;
    let put = move |alice: String| {
        let mut kv = pb::kv_client::KvClient::new(ch_b.clone());
        async move {
            kv.put(req(
                pb::PutRequest {
                    key: "/a/k".into(),
                    value: "v".into(),
                    ..Default::default()
                },
                Some(&alice),
            ))
            .await
        }
    };
    // B has seen auth enabled and takes alice's token.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while put(alice.clone()).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "B never took alice's token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = {
        let (stop, alice, put) = (stop.clone(), alice.clone(), put.clone());
        tokio::spawn(async move {
            let mut log = Vec::new();
            while !stop.is_cancelled() {
                let start = std::time::Instant::now();
                let ok = put(alice.clone()).await.is_ok();
                log.push((start, std::time::Instant::now(), ok));
            }
            log
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    pb::auth_client::AuthClient::new(channel(&a.endpoint).await)
        .user_revoke_role(req(
            pb::AuthUserRevokeRoleRequest {
                name: "alice".into(),
                role: "alice".into(),
            },
            Some(&root),
        ))
        .await
        .unwrap();
    let revoked = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.cancel();
    let log = writer.await.unwrap();
    let late: Vec<_> = log
        .iter()
        .filter(|(start, _, ok)| *ok && *start >= revoked)
        .collect();
    let window = late
        .iter()
        .map(|(_, end, _)| end.duration_since(revoked))
        .max()
        .unwrap_or_default();
    let after = log.iter().filter(|(start, _, _)| *start >= revoked).count();
    eprintln!(
        "revocation on A: {} of {after} writes on B started after it succeeded, the last ending {window:?} after it",
        late.len()
    );
    assert!(
        after > 0 && !log.last().unwrap().2,
        "B still takes alice's writes"
    );
    assert!(
        window < Duration::from_millis(250),
        "B took alice's writes for {window:?} after the revocation ({} writes)",
        late.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_other_instance_at_once_postgres() {
    a_revocation_reaches_the_other_instance_at_once(crate::dbs::fresh_postgres_dsn().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_the_other_instance_at_once_mysql() {
    a_revocation_reaches_the_other_instance_at_once(crate::dbs::fresh_mariadb_dsn().await).await;
}
