//! Debian's etcdctl (3.4) against Koine: the commands operators type, with
//! JSON output parsed rather than pretty text matched.

use serde_json::Value;

use crate::harness::{Koine, etcdctl, etcdctl_raw};

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("bad json {s:?}: {e}"))
}

fn b64(s: &str) -> String {
    // etcdctl's JSON output base64-encodes keys and values.
    const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = s.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, b)| acc | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_kv_commands() {
    let k = Koine::start(&[]).await;
    let e = k.endpoint.as_str();
    assert_eq!(etcdctl(e, &["put", "foo", "bar"]).await.trim(), "OK");
    assert_eq!(etcdctl(e, &["put", "foo/1", "one"]).await.trim(), "OK");
    assert_eq!(etcdctl(e, &["get", "foo"]).await, "foo\nbar\n");
    let g = json(&etcdctl(e, &["get", "foo", "--prefix", "-w", "json"]).await);
    assert_eq!(g["count"], 2);
    assert_eq!(g["kvs"][0]["key"], b64("foo"));
    assert_eq!(g["kvs"][1]["value"], b64("one"));
    assert_eq!(g["header"]["revision"], 3);
    assert_eq!(
        etcdctl(e, &["get", "foo", "--prefix", "--keys-only"]).await,
        "foo\n\nfoo/1\n\n"
    );
    assert_eq!(etcdctl(e, &["get", "foo", "--rev=2"]).await, "foo\nbar\n");
    let c = json(&etcdctl(e, &["get", "", "--from-key", "--keys-only", "-w", "json"]).await);
    assert_eq!(c["count"], 2);
    assert_eq!(etcdctl(e, &["del", "foo", "--prefix"]).await.trim(), "2");
    // txn from stdin: compares, blank, success ops, blank, failure ops, blank.
    let (ok, out, err) = etcdctl_raw(
        e,
        &["txn"],
        Some("mod(\"k\") = \"0\"\n\nput k created\n\nget k\n\n"),
    )
    .await;
    assert!(ok, "{err}");
    assert_eq!(out, "SUCCESS\n\nOK\n");
    let (_, out, _) = etcdctl_raw(
        e,
        &["txn"],
        Some("mod(\"k\") = \"0\"\n\nput k created\n\nget k\n\n"),
    )
    .await;
    assert_eq!(out, "FAILURE\n\nk\ncreated\n");
    let out = etcdctl(e, &["compaction", "4"]).await;
    assert_eq!(out.trim(), "compacted revision 4");
    let (ok, _, err) = etcdctl_raw(e, &["get", "k", "--rev=2"], None).await;
    assert!(!ok);
    assert!(
        err.contains("etcdserver: mvcc: required revision has been compacted"),
        "{err}"
    );
    let (ok, _, err) = etcdctl_raw(e, &["put", "", "v"], None).await;
    assert!(!ok && err.contains("key is not provided"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cluster_and_maintenance() {
    let k = Koine::start(&[]).await;
    // etcdctl 3.4 dials each endpoint of `endpoint status/hash/hashkv`
    // with the URL as the HTTP/2 :authority when it has a scheme (which
    // h2 alone would reset); both forms work.
    etcdctl(&k.endpoint, &["put", "k", "v"]).await;
    let bare = k.addr.to_string();
    for e in [k.endpoint.as_str(), bare.as_str()] {
        let st = json(&etcdctl(e, &["endpoint", "status", "-w", "json"]).await);
        let st = &st[0]["Status"];
        assert_eq!(st["version"], "3.5.13");
        assert!(st["dbSize"].as_i64().unwrap() > 0);
        assert_eq!(st["leader"], st["header"]["member_id"]);
        let h = json(&etcdctl(e, &["endpoint", "hashkv", "-w", "json"]).await);
        assert!(h[0]["HashKV"]["hash"].as_u64().unwrap() > 0, "{h}");
        // etcdctl 3.4 prints the health line on stderr.
        let (ok, out, err) = etcdctl_raw(e, &["endpoint", "health"], None).await;
        assert!(ok && (out + &err).contains("is healthy"), "{err}");
    }
    let e = k.endpoint.as_str();
    let m = json(&etcdctl(e, &["member", "list", "-w", "json"]).await);
    assert_eq!(m["members"].as_array().unwrap().len(), 1);
    assert_eq!(m["members"][0]["clientURLs"][0], k.endpoint);
    assert_eq!(m["members"][0]["name"], "koine");
    assert_eq!(etcdctl(e, &["alarm", "list"]).await, "");
    let (ok, _, err) = etcdctl_raw(
        e,
        &["member", "add", "x", "--peer-urls=http://127.0.0.1:1"],
        None,
    )
    .await;
    assert!(!ok && err.contains("Unimplemented"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_lease_commands() {
    let k = Koine::start(&[]).await;
    let e = k.endpoint.as_str();
    let g = json(&etcdctl(e, &["lease", "grant", "60", "-w", "json"]).await);
    let id = g["ID"].as_i64().unwrap();
    assert_eq!(g["TTL"], 60);
    let hex = format!("{id:x}");
    assert_eq!(
        etcdctl(e, &["put", "leased", "v", "--lease", &hex])
            .await
            .trim(),
        "OK"
    );
    let t = json(&etcdctl(e, &["lease", "timetolive", &hex, "--keys", "-w", "json"]).await);
    assert_eq!(t["granted-ttl"], 60);
    assert!((55..=60).contains(&t["ttl"].as_i64().unwrap()));
    assert_eq!(t["keys"][0], b64("leased"));
    let l = etcdctl(e, &["lease", "list"]).await;
    assert!(l.contains(&hex), "{l}");
    let ka = etcdctl(e, &["lease", "keep-alive", "--once", &hex]).await;
    assert!(ka.contains("keepalived with TTL(60)"), "{ka}");
    let r = etcdctl(e, &["lease", "revoke", &hex]).await;
    assert!(r.contains("revoked"), "{r}");
    assert_eq!(etcdctl(e, &["get", "leased"]).await, "");
    let (ok, _, err) = etcdctl_raw(e, &["lease", "revoke", &hex], None).await;
    assert!(!ok && err.contains("requested lease not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_watch_and_compaction() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let k = Koine::start(&[]).await;
    let e = k.endpoint.as_str();
    etcdctl(e, &["put", "w", "1"]).await;
    etcdctl(e, &["put", "w", "2"]).await;
    let mut child = tokio::process::Command::new("/usr/bin/etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", e, "watch", "w", "--rev=2", "--prev-kv"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    etcdctl(e, &["del", "w"]).await;
    let mut got = Vec::new();
    while got.len() < 10 {
        let line = tokio::time::timeout(std::time::Duration::from_secs(10), lines.next_line())
            .await
            .expect("watch output in time")
            .unwrap()
            .unwrap();
        got.push(line);
    }
    // PUT w 1, PUT w 2 (prev 1), DELETE w (prev 2), as etcdctl prints them.
    assert_eq!(
        got,
        ["PUT", "w", "1", "PUT", "w", "1", "w", "2", "DELETE", "w"]
    );
    child.kill().await.unwrap();
    assert_eq!(
        etcdctl(e, &["compaction", "--physical", "3"]).await.trim(),
        "compacted revision 3"
    );
    let (ok, _, err) = etcdctl_raw(e, &["watch", "w", "--rev=2"], None).await;
    assert!(!ok || err.contains("compacted"), "{err}");
}
