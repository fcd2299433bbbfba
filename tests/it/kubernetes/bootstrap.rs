//! What a control plane does first: kube-apiserver's `/registry/health`
//! probe, and K3s's bootstrap keys with an external datastore.

use super::*;
use crate::harness::Server;
use crate::on_every_target;

/// R7: the `/registry/health` probe is a plain Get that succeeds whether
/// or not the key exists, and never writes.
async fn health_probe(s: Server) {
    let mut c = s.client().await;
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_secs(2), c.get("/registry/health", None))
            .await
            .expect("probe within its 2 s timeout")
            .expect("probe ok");
        assert_eq!(
            (r.kvs().len(), r.count(), r.header().unwrap().revision()),
            (0, 0, 1)
        );
    }
    c.put("/registry/health", r#"{"health":"true"}"#, None)
        .await
        .unwrap();
    let r = c.get("/registry/health", None).await.unwrap();
    assert_eq!(r.kvs()[0].value(), br#"{"health":"true"}"#);
    assert_eq!(r.header().unwrap().revision(), 2);
    // The probe key is not a prefix: /registry/healthz is not returned.
    c.put("/registry/healthz", "x", None).await.unwrap();
    let r = c.get("/registry/health", None).await.unwrap();
    assert_eq!((r.count(), r.header().unwrap().revision()), (1, 3));
    c.delete("/registry/health", None).await.unwrap();
    let r = c.get("/registry/health", None).await.unwrap();
    assert_eq!((r.count(), r.header().unwrap().revision()), (0, 4));
}

/// K3s's bootstrap data with an external datastore, through kine's client:
/// List = Range of prefix `/bootstrap` at revision 0, Create = T1 with an
/// empty failure branch, Update = T2, Delete = T3; the key is
/// `/bootstrap/<first 12 hex of sha256(token)>`.
async fn k3s_bootstrap(s: Server) {
    let mut server1 = s.client().await;
    let mut server2 = s.client().await;
    let token_a = "/bootstrap/5bd0b9a2e6f4"; // hash of the cluster token
    let token_b = "/bootstrap/c81e728d9d4c"; // hash of a rotated token
    let list = |c: &mut Client| {
        let mut c = c.clone();
        async move {
            let r = c
                .get("/bootstrap", Some(GetOptions::new().with_prefix()))
                .await
                .unwrap();
            (r.header().unwrap().revision(), r.kvs().to_vec())
        }
    };
    // kine client Create: no failure ops.
    let k3s_create = |c: &mut Client, key: &'static str, value: &'static str| {
        let mut c = c.clone();
        async move {
            let r = c
                .txn(
                    Txn::new()
                        .when([Compare::mod_revision(key, CompareOp::Equal, 0)])
                        .and_then([TxnOp::put(key, value, None)]),
                )
                .await
                .unwrap();
            if !r.succeeded() {
                assert!(r.op_responses().is_empty(), "no failure ops were asked for");
            }
            (r.succeeded(), rev_of(&r))
        }
    };

    // First start: nothing there.
    let (rv, found) = list(&mut server1).await;
    assert_eq!((rv, found.len()), (1, 0));
    server1
        .put("/registry/namespaces/kube-system", "unrelated", None)
        .await
        .unwrap(); // 2
    // Two servers with the same token start at once: one creates the data,
    // the other's create fails ("key exists") and it reads the data back.
    let ((ok1, rev1), (ok2, rev2)) = tokio::join!(
        k3s_create(&mut server1, token_a, "encrypted-bootstrap-v1"),
        k3s_create(&mut server2, token_a, "encrypted-bootstrap-v2")
    );
    assert!(ok1 ^ ok2, "exactly one create wins");
    assert_eq!((rev1, rev2), (3, 3));
    let winner = if ok1 {
        "encrypted-bootstrap-v1"
    } else {
        "encrypted-bootstrap-v2"
    };
    let (rv, found) = list(&mut server2).await;
    assert_eq!(rv, 3);
    assert_eq!(keys(&found), vec![token_a.to_string()]);
    assert_eq!(found[0].value(), winner.as_bytes());
    assert_eq!((found[0].create_revision(), found[0].version()), (3, 1));
    // A server with another token finds data under a different hash and
    // refuses to start; the datastore is untouched.
    let (rv, found) = list(&mut server2).await;
    assert!(found.iter().all(|kv| kv.key() != token_b.as_bytes()));
    assert_eq!(rv, 3);

    // Certificate rotation rewrites the data (T2 on the listed revision);
    // a concurrent stale writer fails and gets the new data.
    let seen = found[0].mod_revision();
    let rev = update(&mut server1, token_a, "encrypted-bootstrap-v3", seen, 0).await;
    assert_eq!(rev.unwrap(), 4);
    let (rv, cur) = update(&mut server2, token_a, "stale", seen, 0)
        .await
        .unwrap_err();
    assert_eq!(rv, 4);
    assert_eq!(cur.unwrap().value(), b"encrypted-bootstrap-v3");

    // Token rotation: create under the new hash, then delete the old key
    // with its revision as precondition.
    assert_eq!(
        k3s_create(&mut server1, token_b, "reencrypted").await,
        (true, 5)
    );
    let (rev, deleted, prev) = delete(&mut server1, token_a, 4).await.unwrap();
    assert_eq!((rev, deleted), (6, 1));
    assert_eq!(prev.unwrap().value(), b"encrypted-bootstrap-v3");
    let (rv, found) = list(&mut server2).await;
    assert_eq!(rv, 6);
    assert_eq!(keys(&found), vec![token_b.to_string()]);
    assert_eq!(found[0].value(), b"reencrypted");
    let g = server2
        .get("/registry/namespaces/kube-system", None)
        .await
        .unwrap();
    assert_eq!(g.kvs()[0].value(), b"unrelated");
}

on_every_target!(health_probe, k3s_bootstrap);
