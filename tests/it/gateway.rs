//! etcd's JSON gateway, on every target, through curl: the same paths, the
//! same JSON (names as in the protos, 64-bit numbers as strings, bytes as
//! base64), the same errors, a watch as a stream of lines, auth tokens in
//! the Authorization header.

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

use crate::harness::Server;

/// POSTs `body` to `path`; the HTTP status and the JSON answer.
async fn post(s: &Server, path: &str, body: Value, token: Option<&str>) -> (u16, Value) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-X", "POST", "-w", "\n%{http_code}", "-d"])
        .arg(body.to_string())
        .arg(format!("{}{path}", s.endpoint));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: {t}")]);
    }
    let out = cmd
        .output()
        .await
        .expect("curl (the test command installs it)");
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, code) = text.rsplit_once('\n').unwrap();
    let value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (code.parse().unwrap(), value)
}

/// The (code, message) of an error answer.
fn err(v: &Value) -> (i64, &str) {
    (v["code"].as_i64().unwrap(), v["message"].as_str().unwrap())
}

// Every target but passthrough, which does not relay the gateway (yet):
// its clients reach etcd's own gateway on etcd's port.
crate::on_targets!(
    [Sqlite sqlite, Postgres postgres, MySql mysql, Etcd etcd];
    kv_calls_answer_json_as_etcd,
    watch_streams_lines_of_json,
    auth_tokens_go_in_the_authorization_header
);

async fn kv_calls_answer_json_as_etcd(s: Server) {
    // "foo" = Zm9v, "bar" = YmFy, "baz" = YmF6, "fop" = Zm9w
    let (code, put) = post(
        &s,
        "/v3/kv/put",
        json!({"key": "Zm9v", "value": "YmFy"}),
        None,
    )
    .await;
    assert_eq!(code, 200, "{put}");
    let rev: i64 = put["header"]["revision"].as_str().unwrap().parse().unwrap();
    let (_, got) = post(&s, "/v3/kv/range", json!({"key": "Zm9v"}), None).await;
    assert_eq!(got["count"], "1");
    let kv = &got["kvs"][0];
    assert_eq!(
        (
            kv["key"].as_str(),
            kv["value"].as_str(),
            kv["version"].as_str()
        ),
        (Some("Zm9v"), Some("YmFy"), Some("1"))
    );
    assert_eq!(kv["mod_revision"], rev.to_string());
    // Zero values are left out; camelCase names are accepted too.
    assert!(kv.get("lease").is_none(), "{kv}");
    let (_, counted) = post(
        &s,
        "/v3/kv/range",
        json!({"key": "Zm9v", "rangeEnd": "Zm9w", "countOnly": true}),
        None,
    )
    .await;
    assert_eq!(counted["count"], "1");
    assert!(counted.get("kvs").is_none());
    // A Txn, its compare on the value, a nested answer.
    let (_, txn) = post(
        &s,
        "/v3/kv/txn",
        json!({
            "compare": [{"key": "Zm9v", "target": "VALUE", "result": "EQUAL", "value": "YmFy"}],
            "success": [{"request_put": {"key": "Zm9v", "value": "YmF6"}}],
        }),
        None,
    )
    .await;
    assert_eq!(txn["succeeded"], true, "{txn}");
    assert!(txn["responses"][0]["response_put"].is_object(), "{txn}");
    // etcd's errors: the gRPC code and text, the HTTP status for the code.
    let (code, e) = post(&s, "/v3/kv/range", json!({"key": ""}), None).await;
    assert_eq!(
        (code, err(&e)),
        (400, (3, "etcdserver: key is not provided"))
    );
    let (code, e) = post(
        &s,
        "/v3/kv/range",
        json!({"key": "Zm9v", "revision": "9999"}),
        None,
    )
    .await;
    assert_eq!(
        (code, err(&e)),
        (
            400,
            (
                11,
                "etcdserver: mvcc: required revision is a future revision"
            )
        )
    );
    // Leases: TTL and ID as the proto names them.
    let (_, lease) = post(&s, "/v3/lease/grant", json!({"TTL": "60"}), None).await;
    assert_eq!(lease["TTL"], "60", "{lease}");
    let id = lease["ID"].as_str().unwrap().to_string();
    let (_, ttl) = post(&s, "/v3/lease/timetolive", json!({"ID": id}), None).await;
    assert_eq!(ttl["grantedTTL"], "60", "{ttl}");
    let (code, _) = post(&s, "/v3/lease/revoke", json!({"ID": id}), None).await;
    assert_eq!(code, 200);
    let (_, status) = post(&s, "/v3/maintenance/status", json!({}), None).await;
    assert!(
        status["version"].as_str().unwrap().starts_with("3."),
        "{status}"
    );
    // A lock through JSON.
    let (_, lock) = post(&s, "/v3/lock/lock", json!({"name": "bXR4"}), None).await;
    let key = lock["key"].as_str().unwrap().to_string();
    let (code, _) = post(&s, "/v3/lock/unlock", json!({"key": key}), None).await;
    assert_eq!(code, 200);
}

async fn watch_streams_lines_of_json(s: Server) {
    let mut watch = Command::new("curl")
        .args([
            "-s",
            "-N",
            "-X",
            "POST",
            "-d",
            r#"{"create_request": {"key": "Zm9v"}}"#,
        ])
        .arg(format!("{}/v3/watch", s.endpoint))
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .expect("no watch line within 10 s")
            .unwrap()
            .expect("the watch stream ended");
        serde_json::from_str(&line).unwrap()
    };
    let created = next().await;
    assert_eq!(created["result"]["created"], true, "{created}");
    post(
        &s,
        "/v3/kv/put",
        json!({"key": "Zm9v", "value": "YmFy"}),
        None,
    )
    .await;
    let event = next().await;
    let kv = &event["result"]["events"][0]["kv"];
    assert_eq!(
        (kv["key"].as_str(), kv["value"].as_str()),
        (Some("Zm9v"), Some("YmFy")),
        "{event}"
    );
    post(&s, "/v3/kv/deleterange", json!({"key": "Zm9v"}), None).await;
    let deleted = next().await;
    assert_eq!(
        deleted["result"]["events"][0]["type"], "DELETE",
        "{deleted}"
    );
}

async fn auth_tokens_go_in_the_authorization_header(s: Server) {
    for (path, body) in [
        (
            "/v3/auth/user/add",
            json!({"name": "root", "password": "pw"}),
        ),
        ("/v3/auth/role/add", json!({"name": "root"})),
        (
            "/v3/auth/user/grant",
            json!({"user": "root", "role": "root"}),
        ),
        ("/v3/auth/enable", json!({})),
    ] {
        let (code, v) = post(&s, path, body, None).await;
        assert_eq!(code, 200, "{path}: {v}");
    }
    let (code, e) = post(&s, "/v3/kv/range", json!({"key": "Zm9v"}), None).await;
    assert_eq!(
        (code, err(&e)),
        (400, (3, "etcdserver: user name is empty"))
    );
    let (code, e) = post(
        &s,
        "/v3/auth/authenticate",
        json!({"name": "root", "password": "no"}),
        None,
    )
    .await;
    assert_eq!(
        (code, err(&e)),
        (
            400,
            (
                3,
                "etcdserver: authentication failed, invalid user ID or password"
            )
        )
    );
    let (_, auth) = post(
        &s,
        "/v3/auth/authenticate",
        json!({"name": "root", "password": "pw"}),
        None,
    )
    .await;
    let token = auth["token"].as_str().unwrap().to_string();
    let (code, v) = post(&s, "/v3/kv/range", json!({"key": "Zm9v"}), Some(&token)).await;
    assert_eq!(code, 200, "{v}");
    let (code, e) = post(
        &s,
        "/v3/kv/range",
        json!({"key": "Zm9v"}),
        Some("not-a-token"),
    )
    .await;
    assert_eq!(
        (code, err(&e)),
        (401, (16, "etcdserver: invalid auth token"))
    );
    let (code, _) = post(&s, "/v3/auth/disable", json!({}), Some(&token)).await;
    assert_eq!(code, 200);
}
