//! kube-apiserver's TTL'd objects (lease_manager.go): objects on one shared
//! lease expire together with delete events; one lease kept alive for many
//! keys past its TTL, then revoked, takes every key in one revision.

use super::*;
use crate::harness::Server;
use crate::on_every_target;

/// Waits for `n` events on `w`, for up to `secs` seconds.
async fn collect_within(w: &mut WatchStream, n: usize, secs: u64) -> Vec<Ev> {
    tokio::time::timeout(Duration::from_secs(secs), collect(w, n))
        .await
        .unwrap_or_else(|_| panic!("{n} events within {secs} s"))
}

/// TestCreateWithTTL, TestGuaranteedUpdateWithTTL: objects on one shared
/// lease (as the lease manager reuses it) expire together, with delete
/// events; an update that drops the lease keeps the object.
async fn ttl_objects_expire(s: Server) {
    let mut c = s.client().await;
    let prefix = "/registry/events/default/";
    let lease = c.lease_grant(3, None).await.unwrap();
    assert_eq!(lease.ttl(), 3);
    let l = lease.id();
    let e1 = format!("{prefix}e1");
    let e2 = format!("{prefix}e2");
    let e3 = format!("{prefix}e3");
    let e4 = format!("{prefix}e4");
    create(&mut c, &e1, "ev1", l).await.unwrap(); // 2
    create(&mut c, &e2, "ev2", 0).await.unwrap(); // 3
    update(&mut c, &e2, "ev2-ttl", 3, l).await.unwrap(); // 4, now on the lease
    create(&mut c, &e3, "ev3", l).await.unwrap(); // 5
    update(&mut c, &e3, "ev3-kept", 5, 0).await.unwrap(); // 6, lease dropped
    create(&mut c, &e4, "ev4", 0).await.unwrap(); // 7
    let (obj, _) = get(&mut c, &e2).await;
    assert_eq!(obj.unwrap().lease(), l);
    assert_eq!(get(&mut c, &e3).await.0.unwrap().lease(), 0);

    let mut w = c
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(8),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let got = collect_within(&mut w, 2, 10).await;
    assert!(got.iter().all(|e| e.kind == EventType::Delete), "{got:?}");
    assert_eq!(
        got.iter().map(|e| e.key.as_str()).collect::<Vec<_>>(),
        vec![e1.as_str(), e2.as_str()]
    );
    assert_eq!(
        got.iter().map(|e| e.prev.clone()).collect::<Vec<_>>(),
        vec![Some(("ev1".into(), 2)), Some(("ev2-ttl".into(), 4))]
    );
    assert_eq!(
        (got[0].rev, got[1].rev),
        (8, 8),
        "the lease's keys go in one revision"
    );
    let (_, all) = list_all(&mut c, prefix, 10).await;
    assert_eq!(keys(&all), vec![e3.clone(), e4.clone()]);
    let t = c.lease_time_to_live(l, None).await.unwrap();
    assert_eq!(t.ttl(), -1, "the lease is gone");
    // Writing with the expired lease fails as etcd fails it.
    let e = c
        .put(e1.as_str(), "late", Some(PutOptions::new().with_lease(l)))
        .await
        .unwrap_err();
    assert_eq!(
        status(e),
        (
            Code::NotFound,
            "etcdserver: requested lease not found".into()
        )
    );
}

/// The "master lease" style (`/registry/masterleases/<ip>`, the lease
/// endpoint reconciler): one lease shared by many keys, kept alive past its
/// TTL, then revoked: every key goes in one revision, with delete events.
async fn master_lease_keepalive_revoke(s: Server) {
    let mut c = s.client().await;
    let prefix = "/registry/masterleases/";
    let l = c.lease_grant(2, None).await.unwrap().id();
    let ips: Vec<String> = (1..=5).map(|i| format!("{prefix}10.0.0.{i}")).collect();
    for ip in &ips {
        create(&mut c, ip, "endpoint", l).await.unwrap(); // 2..=6
    }
    let mut w = c
        .watch(
            prefix,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(7),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());

    let (mut keeper, mut responses) = c.lease_keep_alive(l).await.unwrap();
    let until = Instant::now() + Duration::from_millis(3500);
    while Instant::now() < until {
        keeper.keep_alive().await.unwrap();
        let r = tokio::time::timeout(WAIT, responses.message())
            .await
            .expect("keepalive answered")
            .unwrap()
            .unwrap();
        assert_eq!((r.id(), r.ttl()), (l, 2));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    let (rv, all) = list_all(&mut c, prefix, 2).await;
    assert_eq!(keys(&all), ips, "kept alive past its TTL");
    assert_eq!(rv, 6, "keepalives write nothing");
    let t = c
        .lease_time_to_live(
            l,
            Some(etcd_client::LeaseTimeToLiveOptions::new().with_keys()),
        )
        .await
        .unwrap();
    let mut attached: Vec<String> = t
        .keys()
        .iter()
        .map(|k| String::from_utf8(k.clone()).unwrap())
        .collect();
    attached.sort();
    assert_eq!(attached, ips);
    assert_eq!(t.granted_ttl(), 2);
    assert!((0..=2).contains(&t.ttl()), "ttl {}", t.ttl());

    let r = c.lease_revoke(l).await.unwrap();
    assert_eq!(r.header().unwrap().revision(), 7);
    let got = collect_within(&mut w, 5, 10).await;
    for (e, ip) in got.iter().zip(&ips) {
        assert_eq!(
            (e.kind, e.key.as_str(), e.rev),
            (EventType::Delete, ip.as_str(), 7)
        );
        let (value, rev) = e.prev.clone().expect("prev_kv");
        assert_eq!(value, "endpoint");
        assert!((2..=6).contains(&rev));
    }
    let (rv, all) = list_all(&mut c, prefix, 2).await;
    assert_eq!((rv, all.len()), (7, 0));
    keeper.keep_alive().await.unwrap();
    let r = tokio::time::timeout(WAIT, responses.message())
        .await
        .expect("keepalive answered")
        .unwrap()
        .unwrap();
    assert_eq!(r.ttl(), 0, "a revoked lease cannot be kept alive");
}

on_every_target!(ttl_objects_expire, master_lease_keepalive_revoke);
