//! etcd's server-side Lock and Election services, on every target, through
//! the etcd-client crate's typed clients: locks are taken in order and
//! passed on when released or when the holder's lease goes; an election's
//! leader is the earliest candidate, proclaims, is observed, resigns.

use std::time::Duration;

use etcd_client::{LeaderKey, LockOptions, ProclaimOptions, ResignOptions};
use tonic::Code;

use crate::harness::Server;
use crate::on_every_target;

on_every_target!(
    locks_are_taken_in_order_and_passed_on,
    elections_elect_observe_and_resign
);

async fn locks_are_taken_in_order_and_passed_on(s: Server) {
    let mut c = s.client().await;
    let l1 = c.lease_grant(60, None).await.unwrap().id();
    let l2 = c.lease_grant(60, None).await.unwrap().id();
    let first = c
        .lock("mtx", Some(LockOptions::new().with_lease(l1)))
        .await
        .unwrap();
    assert_eq!(first.key(), format!("mtx/{l1:x}").as_bytes());
    // The second waits while the first holds the lock...
    let mut c2 = s.client().await;
    let second = tokio::spawn(async move {
        c2.lock("mtx", Some(LockOptions::new().with_lease(l2)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "a second holder got the lock");
    // ...and gets it when the first unlocks.
    c.unlock(first.key()).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the lock was not passed on")
        .unwrap()
        .unwrap();
    assert_eq!(got, format!("mtx/{l2:x}").as_bytes());
    // A lease that goes releases its lock.
    let l3 = c.lease_grant(60, None).await.unwrap().id();
    let mut c3 = s.client().await;
    let third = tokio::spawn(async move {
        c3.lock("mtx", Some(LockOptions::new().with_lease(l3)))
            .await
            .map(|r| r.key().to_vec())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!third.is_finished());
    c.lease_revoke(l2).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("a revoked lease kept its lock")
        .unwrap()
        .unwrap();
    assert_eq!(got, format!("mtx/{l3:x}").as_bytes());
    // A lease that does not exist is etcd's error (code Unknown: etcd's
    // lock server returns its client's error as a plain error).
    let e = c
        .lock("other", Some(LockOptions::new().with_lease(0x7777)))
        .await
        .unwrap_err();
    match e {
        etcd_client::Error::GRpcStatus(st) => assert_eq!(
            (st.code(), st.message()),
            (Code::Unknown, "etcdserver: requested lease not found")
        ),
        other => panic!("{other:?}"),
    }
}

async fn elections_elect_observe_and_resign(s: Server) {
    let mut c = s.client().await;
    let e = match c.leader("job").await.unwrap_err() {
        etcd_client::Error::GRpcStatus(st) => st,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unknown, "election: no leader")
    );
    let l1 = c.lease_grant(60, None).await.unwrap().id();
    let l2 = c.lease_grant(60, None).await.unwrap().id();
    let won = c.campaign("job", "one", l1).await.unwrap();
    let leader: LeaderKey = won.leader().unwrap().clone();
    assert_eq!(leader.key(), format!("job/{l1:x}").as_bytes());
    assert_eq!(leader.lease(), l1);
    let now = c.leader("job").await.unwrap();
    assert_eq!(now.kv().unwrap().value(), b"one");
    let mut observe = c.observe("job").await.unwrap();
    let seen = observe.message().await.unwrap().unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"one");
    // A second candidate waits.
    let mut c2 = s.client().await;
    let second = tokio::spawn(async move {
        c2.campaign("job", "two", l2)
            .await
            .map(|r| r.leader().unwrap().clone())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!second.is_finished(), "two leaders at once");
    // The leader proclaims; observers see it.
    c.proclaim(
        "one'",
        Some(ProclaimOptions::new().with_leader(leader.clone())),
    )
    .await
    .unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(10), observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"one'");
    // It resigns: the second candidate leads, observers see the new leader.
    c.resign(Some(ResignOptions::new().with_leader(leader.clone())))
        .await
        .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), second)
        .await
        .expect("the second candidate was not elected")
        .unwrap()
        .unwrap();
    assert_eq!(next.key(), format!("job/{l2:x}").as_bytes());
    let seen = tokio::time::timeout(Duration::from_secs(10), observe.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(seen.kv().unwrap().value(), b"two");
    // The old leader can no longer proclaim.
    let e = match c
        .proclaim("stale", Some(ProclaimOptions::new().with_leader(leader)))
        .await
        .unwrap_err()
    {
        etcd_client::Error::GRpcStatus(st) => st,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        (e.code(), e.message()),
        (Code::Unknown, "election: not leader")
    );
}
