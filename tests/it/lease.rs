//! Leases through the etcd-client crate: grant, keepalive, expiry, revoke.

use std::time::Duration;

use etcd_client::{EventType, LeaseGrantOptions, PutOptions, WatchOptions};

use crate::harness::Server;
use crate::on_every_target;

async fn lease_expiry_deletes_keys(s: Server) {
    let mut c = s.client().await;
    let lease = c.lease_grant(1, None).await.unwrap();
    assert_eq!(lease.ttl(), 2, "TTLs below the minimum are raised to it");
    c.put("e/1", "a", Some(PutOptions::new().with_lease(lease.id())))
        .await
        .unwrap();
    c.put("e/2", "b", Some(PutOptions::new().with_lease(lease.id())))
        .await
        .unwrap();
    c.put("e/3", "kept", None).await.unwrap();
    let mut w = c
        .watch(
            "e/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    w.message().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(15), w.message())
        .await
        .expect("expiry in time")
        .unwrap()
        .unwrap();
    let evs = r.events();
    assert_eq!(evs.len(), 2, "both keys go in one revision: {r:?}");
    assert!(
        evs.iter()
            .all(|e| e.event_type() == EventType::Delete && e.prev_kv().is_some())
    );
    assert_eq!(
        evs[0].kv().unwrap().mod_revision(),
        evs[1].kv().unwrap().mod_revision()
    );
    let g = c
        .get("e/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(g.kvs().len(), 1);
    let t = c.lease_time_to_live(lease.id(), None).await.unwrap();
    assert_eq!(t.ttl(), -1);
}

async fn lease_keepalive_and_revoke(s: Server) {
    let mut c = s.client().await;
    let lease = c
        .lease_grant(2, Some(LeaseGrantOptions::new().with_id(4242)))
        .await
        .unwrap();
    assert_eq!(lease.id(), 4242);
    c.put("k", "v", Some(PutOptions::new().with_lease(4242)))
        .await
        .unwrap();
    let (mut keeper, mut responses) = c.lease_keep_alive(4242).await.unwrap();
    for _ in 0..8 {
        keeper.keep_alive().await.unwrap();
        let r = responses.message().await.unwrap().unwrap();
        assert_eq!((r.id(), r.ttl()), (4242, 2));
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        c.get("k", None).await.unwrap().kvs().len(),
        1,
        "kept alive past its TTL"
    );
    let t = c
        .lease_time_to_live(
            4242,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    assert_eq!(t.granted_ttl(), 2);
    assert_eq!(t.keys(), [b"k".to_vec()]);
    let leases = c.leases().await.unwrap();
    assert!(leases.leases().iter().any(|l| l.id() == 4242));
    let rev = c.get("k", None).await.unwrap().header().unwrap().revision();
    let r = c.lease_revoke(4242).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), rev + 1);
    assert!(c.get("k", None).await.unwrap().kvs().is_empty());
    // Keepalive of an unknown lease answers TTL 0.
    keeper.keep_alive().await.unwrap();
    let r = responses.message().await.unwrap().unwrap();
    assert_eq!(r.ttl(), 0);
    let e = c
        .lease_grant(10, Some(LeaseGrantOptions::new().with_id(7)))
        .await;
    assert!(e.is_ok());
    let e = c
        .lease_grant(10, Some(LeaseGrantOptions::new().with_id(7)))
        .await
        .unwrap_err();
    match e {
        etcd_client::Error::GRpcStatus(st) => {
            assert_eq!(st.code(), tonic::Code::FailedPrecondition);
            assert_eq!(st.message(), "etcdserver: lease already exists");
        }
        other => panic!("{other:?}"),
    }
}

on_every_target!(lease_expiry_deletes_keys, lease_keepalive_and_revoke);
