//! Operability: etcd's HTTP endpoints on the client port, Prometheus
//! metrics, the gRPC health service, TLS with client certificates.

use std::path::Path;
use std::process::Command;

use crate::harness::{Koine, etcdctl_raw, http_get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_endpoints_and_metrics() {
    let k = Koine::start(&[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    c.put("a", "1", None).await.unwrap();
    let _ = c
        .get("a", Some(etcd_client::GetOptions::new().with_revision(100)))
        .await;
    let mut w = c.watch("a", None).await.unwrap();
    w.message().await.unwrap();

    let (st, body) = http_get(k.addr, "/health").await;
    assert_eq!(
        (st, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (st, body) = http_get(k.addr, "/livez").await;
    assert_eq!((st, body.as_str()), (200, "ok"));
    let (st, body) = http_get(k.addr, "/readyz?verbose").await;
    assert_eq!(st, 200);
    assert!(
        body.contains("[+]database ok") && body.contains("[+]writer ok"),
        "{body}"
    );
    let (st, body) = http_get(k.addr, "/version").await;
    assert_eq!(st, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["etcdserver"], "3.5.13");
    let (st, body) = http_get(k.addr, "/metrics").await;
    assert_eq!(st, 200);
    for want in [
        r#"grpc_server_handled_total{grpc_code="OK",grpc_method="Put",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#,
        r#"grpc_server_handled_total{grpc_code="OutOfRange",grpc_method="Range",grpc_service="etcdserverpb.KV",grpc_type="unary"} 1"#,
        r#"grpc_server_started_total{grpc_method="Watch",grpc_service="etcdserverpb.Watch",grpc_type="bidi_stream"} 1"#,
        "etcd_server_has_leader 1",
        "etcd_debugging_mvcc_current_revision 2",
        "koine_watchers 1",
        "koine_writer_batch_size_count 1",
        "etcd_disk_backend_commit_duration_seconds_count 1",
    ] {
        assert!(body.contains(want), "missing {want}\n{body}");
    }
    let size: i64 = body
        .lines()
        .find_map(|l| l.strip_prefix("etcd_mvcc_db_total_size_in_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    assert!(size > 0);
    // The gRPC health service answers SERVING for the server as a whole.
    let channel = tonic::transport::Channel::from_shared(k.endpoint.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
    let r = h
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(
        r.into_inner().status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate.
pub(crate) fn make_certs(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=koine-test-ca",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").unwrap();
    for (name, ext) in [("server", "server.ext"), ("client", "client.ext")] {
        openssl(
            dir,
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN={name}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_client_certificates() {
    let certs = tempfile::tempdir().unwrap();
    let d = certs.path();
    make_certs(d);
    let p = |f: &str| d.join(f).display().to_string();
    let (cert, key, ca) = (p("server.pem"), p("server.key"), p("ca.pem"));
    let k = Koine::start(&[
        "--server-cert-file",
        &cert,
        "--server-key-file",
        &key,
        "--trusted-ca-file",
        &ca,
    ])
    .await;
    let https = format!("https://{}", k.addr);
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(
            std::fs::read(d.join("ca.pem")).unwrap(),
        ))
        .identity(etcd_client::Identity::from_pem(
            std::fs::read(d.join("client.pem")).unwrap(),
            std::fs::read(d.join("client.key")).unwrap(),
        ));
    let mut c = etcd_client::Client::connect(
        [https.as_str()],
        Some(etcd_client::ConnectOptions::new().with_tls(tls)),
    )
    .await
    .unwrap();
    c.put("secure", "yes", None).await.unwrap();
    let m = c.member_list().await.unwrap();
    assert_eq!(m.members()[0].client_urls(), std::slice::from_ref(&https));
    // Without a client certificate the handshake is refused.
    let tls = etcd_client::TlsOptions::new().ca_certificate(etcd_client::Certificate::from_pem(
        std::fs::read(d.join("ca.pem")).unwrap(),
    ));
    let refused = async {
        let mut c = etcd_client::Client::connect(
            [https.as_str()],
            Some(etcd_client::ConnectOptions::new().with_tls(tls)),
        )
        .await?;
        c.get("secure", None).await
    }
    .await;
    assert!(
        refused.is_err(),
        "a client without a certificate got through"
    );
    // etcdctl with the same files.
    let client = (p("client.pem"), p("client.key"));
    let files = ["--cacert", &ca, "--cert", &client.0, "--key", &client.1];
    let (ok, out, err) =
        etcdctl_raw(&https, &[&files[..], &["get", "secure"]].concat(), None).await;
    assert!(ok, "{err}");
    assert_eq!(out, "secure\nyes\n");
    // `endpoint status` dials the endpoint by itself (over TLS etcdctl 3.4
    // sends a well-formed :authority there).
    let (ok, out, err) = etcdctl_raw(
        &https,
        &[&files[..], &["endpoint", "status"]].concat(),
        None,
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.starts_with(&format!("{https}, ")), "{out}");
    // HTTP/1.1 over TLS (ALPN offers http/1.1 beside h2, as etcd's does):
    // the probes and the JSON gateway, as curl --http1.1 reaches them.
    for (path, body) in [
        ("/health", None),
        ("/v3/kv/range", Some(r#"{"key":"c2VjdXJl"}"#)),
    ] {
        let mut curl = tokio::process::Command::new("curl");
        curl.args(["-s", "--http1.1", "-w", "\n%{http_version} %{http_code}"])
            .args(["--cacert", &ca, "--cert", &client.0, "--key", &client.1]);
        if let Some(b) = body {
            curl.args(["-X", "POST", "-d", b]);
        }
        let out = curl
            .arg(format!("{https}{path}"))
            .output()
            .await
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            text.ends_with("\n1.1 200"),
            "{path}: {text} {:?}",
            out.stderr
        );
        if body.is_some() {
            assert!(text.contains(r#""value":"eWVz""#), "{text}");
        }
    }
}
