//! Watch behaviour through the etcd-client crate.

use etcd_client::{EventType, GetOptions, WatchFilterType, WatchOptions, WatchStream};

use crate::harness::next_watch_response as next;
use crate::harness::{Koine, Server};
use crate::on_every_target;

/// Collects events until `n` have arrived: (type, key, mod_revision, value,
/// prev value).
type Seen = (EventType, String, i64, String, Option<String>);

async fn collect(w: &mut WatchStream, n: usize) -> Vec<Seen> {
    let mut out = Vec::new();
    while out.len() < n {
        let r = next(w).await;
        assert!(!r.canceled(), "unexpected cancel: {r:?}");
        for e in r.events() {
            let kv = e.kv().unwrap();
            out.push((
                e.event_type(),
                kv.key_str().unwrap().to_string(),
                kv.mod_revision(),
                kv.value_str().unwrap().to_string(),
                e.prev_kv().map(|p| p.value_str().unwrap().to_string()),
            ));
        }
    }
    out
}

async fn watch_live_events(s: Server) {
    let mut c = s.client().await;
    let mut w = c
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_prev_key()),
        )
        .await
        .unwrap();
    let created = next(&mut w).await;
    assert!(created.created());
    assert_eq!(created.header().unwrap().revision(), 1);
    c.put("w/a", "1", None).await.unwrap();
    c.put("other", "x", None).await.unwrap();
    c.put("w/a", "2", None).await.unwrap();
    c.delete("w/a", None).await.unwrap();
    let got = collect(&mut w, 3).await;
    assert_eq!(
        got,
        vec![
            (EventType::Put, "w/a".into(), 2, "1".into(), None),
            (
                EventType::Put,
                "w/a".into(),
                4,
                "2".into(),
                Some("1".into())
            ),
            (
                EventType::Delete,
                "w/a".into(),
                5,
                "".into(),
                Some("2".into())
            ),
        ]
    );
}

async fn watch_from_the_past(s: Server) {
    let mut c = s.client().await;
    for i in 0..10 {
        c.put(format!("h/{}", i % 3), format!("{i}"), None)
            .await
            .unwrap();
    }
    c.delete("h/", Some(etcd_client::DeleteOptions::new().with_prefix()))
        .await
        .unwrap(); // rev 12
    let mut w = c
        .watch(
            "h/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_start_revision(3),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    c.put("h/9", "live", None).await.unwrap(); // rev 13
    let got = collect(&mut w, 9 + 3 + 1).await;
    let revs: Vec<i64> = got.iter().map(|e| e.2).collect();
    let mut want: Vec<i64> = (3..=11).collect();
    want.extend([12, 12, 12, 13]);
    assert_eq!(revs, want, "history then live, no gap, no duplicate");
    assert_eq!(got[0].4.as_deref(), None, "h/1 created at rev 3");
    assert_eq!(got[2].4.as_deref(), Some("0"), "prev_kv from the log");
    assert!(
        got[9..12]
            .iter()
            .all(|e| e.0 == EventType::Delete && e.4.is_some())
    );
    assert_eq!(got[12].3, "live");
}

async fn watch_filters_and_ids(s: Server) {
    let mut c = s.client().await;
    let mut w = c
        .watch(
            "f",
            Some(
                WatchOptions::new()
                    .with_filters([WatchFilterType::NoPut])
                    .with_watch_id(7),
            ),
        )
        .await
        .unwrap();
    let r = next(&mut w).await;
    assert!(r.created());
    assert_eq!(r.watch_id(), 7);
    // A second watch on the same stream, and a duplicate id.
    w.watch(
        "f",
        Some(
            WatchOptions::new()
                .with_filters([WatchFilterType::NoDelete])
                .with_watch_id(8),
        ),
    )
    .await
    .unwrap();
    let r = next(&mut w).await;
    assert!(r.created() && r.watch_id() == 8);
    if s.is_koine() {
        // etcd 3.5+ refuses a duplicate id with a created+canceled response
        // on watch id -1 (what its mvcc WatchStream returns for a refused
        // watcher).
        w.watch("f", Some(WatchOptions::new().with_watch_id(8)))
            .await
            .unwrap();
        let r = next(&mut w).await;
        assert!(r.created() && r.canceled() && r.watch_id() == -1, "{r:?}");
        assert_eq!(
            r.cancel_reason(),
            "mvcc: duplicate watch ID provided on the WatchStream"
        );
    }
    c.put("f", "1", None).await.unwrap();
    c.delete("f", None).await.unwrap();
    let mut by_id = std::collections::BTreeMap::new();
    while by_id
        .values()
        .map(|v: &Vec<EventType>| v.len())
        .sum::<usize>()
        < 2
    {
        let r = next(&mut w).await;
        for e in r.events() {
            by_id
                .entry(r.watch_id())
                .or_insert_with(Vec::new)
                .push(e.event_type());
        }
    }
    assert_eq!(by_id[&7], vec![EventType::Delete]);
    assert_eq!(by_id[&8], vec![EventType::Put]);
    w.cancel(7).await.unwrap();
    let r = next(&mut w).await;
    assert!(r.canceled() && r.watch_id() == 7);
    c.put("f", "2", None).await.unwrap();
    let r = next(&mut w).await;
    assert_eq!(r.watch_id(), 8);
    assert_eq!(r.events().len(), 1);
}

async fn watch_compacted_revision(s: Server) {
    let mut c = s.client().await;
    for i in 0..5 {
        c.put("c", format!("{i}"), None).await.unwrap();
    }
    c.compact(4, None).await.unwrap();
    let mut w = c
        .watch("c", Some(WatchOptions::new().with_start_revision(2)))
        .await
        .unwrap();
    let mut r = next(&mut w).await;
    if r.created() && !r.canceled() {
        r = next(&mut w).await;
    }
    assert!(r.canceled(), "{r:?}");
    assert_eq!(r.compact_revision(), 4);
    // Watching from the compact revision itself works.
    let mut w = c
        .watch("c", Some(WatchOptions::new().with_start_revision(4)))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let got = collect(&mut w, 3).await;
    assert_eq!(got.iter().map(|e| e.2).collect::<Vec<_>>(), vec![4, 5, 6]);
}

async fn watch_progress_request(s: Server) {
    let mut c = s.client().await;
    c.put("p", "1", None).await.unwrap();
    let mut w = c.watch("p", None).await.unwrap();
    assert!(next(&mut w).await.created());
    c.put("q", "1", None).await.unwrap();
    w.request_progress().await.unwrap();
    let r = next(&mut w).await;
    assert!(r.events().is_empty());
    assert_eq!(
        r.header().unwrap().revision(),
        3,
        "progress carries the current revision"
    );
    if s.is_koine() {
        assert_eq!(r.watch_id(), -1, "etcd 3.5 answers with watch id -1");
    }
}

on_every_target!(
    watch_live_events,
    watch_from_the_past,
    watch_filters_and_ids,
    watch_compacted_revision,
    watch_progress_request,
);

/// Periodic progress notifications reach an idle watcher that asked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_notify_interval() {
    let k = Koine::start(&["--watch-progress-notify-interval", "200ms"]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    c.put("x", "1", None).await.unwrap();
    let mut w = c
        .watch("y", Some(WatchOptions::new().with_progress_notify()))
        .await
        .unwrap();
    let created = next(&mut w).await;
    let id = created.watch_id();
    for _ in 0..2 {
        let r = next(&mut w).await;
        assert!(r.events().is_empty());
        assert_eq!(r.watch_id(), id);
        assert_eq!(r.header().unwrap().revision(), 2);
    }
}

/// Many watchers, many concurrent writers: every watcher sees every event,
/// in revision order, exactly once.
async fn many_watchers_body(s: Server, watchers: usize, writes: usize) {
    let mut c = s.client().await;
    let mut streams = Vec::new();
    for _ in 0..watchers {
        let mut w = c
            .watch("m/", Some(WatchOptions::new().with_prefix()))
            .await
            .unwrap();
        assert!(next(&mut w).await.created());
        streams.push(w);
    }
    let readers: Vec<_> = streams
        .into_iter()
        .map(|mut w| {
            tokio::spawn(async move {
                let mut revs = Vec::with_capacity(writes);
                while revs.len() < writes {
                    let r = next(&mut w).await;
                    revs.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
                }
                revs
            })
        })
        .collect();
    let writers = 16;
    let tasks: Vec<_> = (0..writers)
        .map(|t| {
            let mut c = c.clone();
            tokio::spawn(async move {
                for i in (t..writes).step_by(writers) {
                    c.put(format!("m/{}", i % 97), format!("{i}"), None)
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let want: Vec<i64> = (2..2 + writes as i64).collect();
    for r in readers {
        assert_eq!(r.await.unwrap(), want);
    }
    let g = c
        .get(
            "m/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(g.header().unwrap().revision(), 1 + writes as i64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_watchers_ten_thousand_writes() {
    let s = Server::start(crate::harness::Target::Sqlite).await;
    many_watchers_body(s, 100, 10_000).await;
}

/// Koine restarts while a client watches; the client re-watches from the
/// last revision it saw and loses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_watch_after_restart() {
    let k = Koine::start(&[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    let mut w = c
        .watch("r/", Some(WatchOptions::new().with_prefix()))
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    for i in 0..50 {
        c.put(format!("r/{}", i % 5), format!("{i}"), None)
            .await
            .unwrap();
    }
    let mut seen: Vec<i64> = Vec::new();
    while seen.len() < 30 {
        let r = next(&mut w).await;
        seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    seen.truncate(30);
    drop(w);
    drop(c);
    let dir = k.stop().await;
    let k = Koine::start_in(dir, &[]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    let last = *seen.last().unwrap();
    let mut w = c
        .watch(
            "r/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(last + 1),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    for i in 50..60 {
        c.put(format!("r/{}", i % 5), format!("{i}"), None)
            .await
            .unwrap();
    }
    while seen.len() < 60 {
        let r = next(&mut w).await;
        seen.extend(r.events().iter().map(|e| e.kv().unwrap().mod_revision()));
    }
    assert_eq!(seen, (2..62).collect::<Vec<i64>>());
}

/// A watcher that asked for fragments gets large responses split under the
/// request size limit, each event whole, all but the last marked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragmented_watch_responses() {
    let k = Koine::start(&["--max-request-bytes", "10000"]).await;
    let mut c = etcd_client::Client::connect([k.endpoint.as_str()], None)
        .await
        .unwrap();
    for i in 0..5 {
        c.put(format!("big/{i}"), vec![b'x'; 3000], None)
            .await
            .unwrap();
    }
    let mut w = c
        .watch(
            "big/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(1)
                    .with_fragment(),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let mut events = 0;
    let mut parts = Vec::new();
    while events < 5 {
        let r = next(&mut w).await;
        events += r.events().len();
        parts.push(r.0.fragment);
    }
    assert_eq!(events, 5);
    assert!(parts.len() > 1, "split into fragments");
    assert_eq!(parts.last(), Some(&false));
    assert!(parts[..parts.len() - 1].iter().all(|f| *f));
}
