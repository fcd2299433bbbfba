//! kine's configmap load test, with a checker: 16 clients doing creates,
//! updates with conflicts, deletes with preconditions and paginated lists
//! on 40 objects, while a watch records every change; afterwards no
//! acknowledged update is lost, no deleted object reappears, and the watch
//! replays to the final state.

use super::*;
use crate::harness::Server;
use crate::on_every_target;

const CM: &str = "/registry/configmaps/load-test/";
const NAMES: u64 = 40;
const CLIENTS: usize = 16;
const LOAD_FOR: Duration = Duration::from_secs(3);

/// xorshift64*: enough randomness for an op mix, no dependency.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// An acknowledged write: its revision, key and new value (`None`: delete).
#[derive(Debug, Clone, PartialEq)]
struct Ack {
    rev: i64,
    key: String,
    value: Option<Vec<u8>>,
}

/// A read: at header revision `rev`, `key` was `(mod revision, value)`.
#[derive(Debug)]
struct Obs {
    rev: i64,
    key: String,
    kv: Option<(i64, Vec<u8>)>,
}

/// A whole paginated list at revision `rev`: (key, mod revision).
#[derive(Debug)]
struct Snap {
    rev: i64,
    items: Vec<(String, i64)>,
}

#[derive(Default)]
struct Log {
    acks: Vec<Ack>,
    obs: Vec<Obs>,
    snaps: Vec<Snap>,
    conflicts: usize,
}

impl Log {
    fn saw(&mut self, rev: i64, key: &str, kv: &Option<KeyValue>) {
        self.obs.push(Obs {
            rev,
            key: key.to_string(),
            kv: kv
                .as_ref()
                .map(|kv| (kv.mod_revision(), kv.value().to_vec())),
        });
    }
}

/// One client's share of the load: 20 % create (or read if it exists),
/// 50 % update (re-read on conflict, create on not found), 20 % delete
/// with a resourceVersion precondition, 10 % paginated list.
async fn load_client(mut c: Client, id: usize, until: Instant) -> Log {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ ((id as u64 + 1) << 17));
    let mut log = Log::default();
    let mut seq = 0u64;
    let mut value = |rng: &mut Rng| {
        seq += 1;
        let pad = 32 + rng.below(480) as usize;
        let mut v = format!("c{id}-n{seq}-").into_bytes();
        v.extend((0..pad).map(|i| b'a' + ((i as u64 + seq) % 26) as u8));
        v
    };
    while Instant::now() < until {
        let key = format!("{CM}test-{:02}", rng.below(NAMES));
        let dice = rng.below(100);
        if dice < 20 {
            let v = value(&mut rng);
            match create(&mut c, &key, v.clone(), 0).await {
                Ok(rev) => log.acks.push(Ack {
                    rev,
                    key,
                    value: Some(v),
                }),
                Err((rev, kv)) => log.saw(rev, &key, &kv),
            }
        } else if dice < 70 {
            let (mut cur, rv) = get(&mut c, &key).await;
            log.saw(rv, &key, &cur);
            for _ in 0..5 {
                let v = value(&mut rng);
                let result = match &cur {
                    None => create(&mut c, &key, v.clone(), 0).await,
                    Some(kv) => update(&mut c, &key, v.clone(), kv.mod_revision(), 0).await,
                };
                match result {
                    Ok(rev) => {
                        log.acks.push(Ack {
                            rev,
                            key: key.clone(),
                            value: Some(v),
                        });
                        break;
                    }
                    Err((rev, kv)) => {
                        log.conflicts += 1;
                        log.saw(rev, &key, &kv);
                        cur = kv;
                    }
                }
            }
        } else if dice < 90 {
            let (cur, rv) = get(&mut c, &key).await;
            log.saw(rv, &key, &cur);
            let Some(cur) = cur else { continue };
            match delete(&mut c, &key, cur.mod_revision()).await {
                Ok((rev, deleted, prev)) => {
                    assert_eq!(deleted, 1);
                    let prev = prev.expect("prev_kv");
                    assert_eq!(
                        (prev.mod_revision(), prev.value()),
                        (cur.mod_revision(), cur.value()),
                        "deleted what the precondition named"
                    );
                    log.acks.push(Ack {
                        rev,
                        key,
                        value: None,
                    });
                }
                Err((rev, kv)) => {
                    log.conflicts += 1;
                    log.saw(rev, &key, &kv);
                }
            }
        } else {
            let (rev, items) = list_all(&mut c, CM, 7).await;
            log.snaps.push(Snap {
                rev,
                items: items
                    .iter()
                    .map(|kv| (kv.key_str().unwrap().to_string(), kv.mod_revision()))
                    .collect(),
            });
        }
    }
    log
}

/// The state of one key while replaying the watch stream.
#[derive(Debug, Clone, PartialEq)]
struct Obj {
    value: Vec<u8>,
    create: i64,
    rev: i64,
    version: i64,
}

/// An event as the load watcher records it (values are binary-safe).
#[derive(Debug, Clone)]
struct LoadEv {
    kind: EventType,
    key: String,
    value: Vec<u8>,
    create: i64,
    rev: i64,
    version: i64,
    prev: Option<(Vec<u8>, i64)>,
}

async fn configmap_load(s: Server) {
    let mut c = s.client().await;
    // Some objects before the list the watch starts from.
    for i in 0..20 {
        create(&mut c, &format!("{CM}test-{i:02}"), format!("seed-{i}"), 0)
            .await
            .unwrap();
    }
    c.put("/registry/configmaps/other/x", "other namespace", None)
        .await
        .unwrap();
    let (rv0, initial) = list_all(&mut c, CM, 7).await;
    assert_eq!((rv0, initial.len()), (22, 20));

    // The reflector: watch from the list's revision + 1, recording all.
    let mut w = c
        .watch(
            CM,
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_prev_key()
                    .with_progress_notify()
                    .with_start_revision(rv0 + 1),
            ),
        )
        .await
        .unwrap();
    assert!(next(&mut w).await.created());
    let target = Arc::new(AtomicI64::new(i64::MAX));
    let watcher = {
        let target = target.clone();
        tokio::spawn(async move {
            let mut events: Vec<LoadEv> = Vec::new();
            loop {
                let last = events.last().map_or(rv0, |e| e.rev);
                if last >= target.load(Ordering::SeqCst) {
                    return events;
                }
                let Ok(r) = tokio::time::timeout(Duration::from_millis(200), w.message()).await
                else {
                    continue;
                };
                let r = r.expect("watch ok").expect("watch open");
                assert!(!r.canceled(), "watch canceled: {r:?}");
                for e in r.events() {
                    let kv = e.kv().unwrap();
                    events.push(LoadEv {
                        kind: e.event_type(),
                        key: kv.key_str().unwrap().to_string(),
                        value: kv.value().to_vec(),
                        create: kv.create_revision(),
                        rev: kv.mod_revision(),
                        version: kv.version(),
                        prev: e.prev_kv().map(|p| (p.value().to_vec(), p.mod_revision())),
                    });
                }
            }
        })
    };

    let until = Instant::now() + LOAD_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| tokio::spawn(load_client(c.clone(), id, until)))
        .collect();
    let mut acks = Vec::new();
    let mut obs = Vec::new();
    let mut snaps = Vec::new();
    let mut conflicts = 0;
    for t in clients {
        let log = t.await.expect("load client");
        acks.extend(log.acks);
        obs.extend(log.obs);
        snaps.extend(log.snaps);
        conflicts += log.conflicts;
    }
    let final_rev = c
        .get("/registry/health", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    target.store(final_rev, Ordering::SeqCst);
    let events = tokio::time::timeout(WAIT, watcher)
        .await
        .expect("watcher reaches the final revision")
        .unwrap();
    let (list_rev, final_list) = list_all(&mut c, CM, 7).await;
    assert_eq!(list_rev, final_rev, "no writes after the load");
    eprintln!(
        "{:?}: {} writes, {} conflicts, {} reads, {} lists, {} events",
        s.target,
        acks.len(),
        conflicts,
        obs.len(),
        snaps.len(),
        events.len()
    );
    assert!(
        acks.len() >= 50,
        "the load made progress: {} writes",
        acks.len()
    );
    assert!(acks.iter().any(|a| a.value.is_none()), "some deletes");
    assert!(!snaps.is_empty(), "some lists");

    // Every write has its own revision: acknowledged revisions are exactly
    // rv0+1 ..= final, and so are the watch's, strictly increasing.
    acks.sort_by_key(|a| a.rev);
    let ack_revs: Vec<i64> = acks.iter().map(|a| a.rev).collect();
    let all_revs: Vec<i64> = (rv0 + 1..=final_rev).collect();
    assert_eq!(
        ack_revs, all_revs,
        "acknowledged revisions are dense and unique"
    );
    let ev_revs: Vec<i64> = events.iter().map(|e| e.rev).collect();
    assert!(
        ev_revs.windows(2).all(|w| w[0] < w[1]),
        "watch revisions strictly increase"
    );
    assert_eq!(ev_revs, all_revs, "the watch saw every revision once");
    // No lost update, no phantom event: the watch stream is exactly the
    // acknowledged writes.
    for (a, e) in acks.iter().zip(&events) {
        let kind = if a.value.is_some() {
            EventType::Put
        } else {
            EventType::Delete
        };
        assert_eq!(
            (a.rev, a.key.as_str(), kind),
            (e.rev, e.key.as_str(), e.kind),
            "event for the write at {}",
            a.rev
        );
        if let Some(v) = &a.value {
            assert!(
                e.value == *v,
                "value of the write at {}: watched {:?}, written {:?}",
                a.rev,
                String::from_utf8_lossy(&e.value),
                String::from_utf8_lossy(v)
            );
        }
    }

    // Replay the watch over the initial list, checking every event's
    // create revision, version and prev_kv against the replayed state, and
    // every read and list made during the load against the state at its
    // revision.
    let mut state: BTreeMap<String, Obj> = initial
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                Obj {
                    value: kv.value().to_vec(),
                    create: kv.create_revision(),
                    rev: kv.mod_revision(),
                    version: kv.version(),
                },
            )
        })
        .collect();
    obs.sort_by_key(|o| o.rev);
    snaps.sort_by_key(|s| s.rev);
    let (mut oi, mut si) = (0, 0);
    let mut check_reads = |state: &BTreeMap<String, Obj>, upto: i64| {
        while oi < obs.len() && obs[oi].rev <= upto {
            let o = &obs[oi];
            let want = state.get(&o.key).map(|s| (s.rev, s.value.clone()));
            assert!(
                o.kv == want,
                "read of {} at {} saw {:?}, state is {:?}",
                o.key,
                o.rev,
                o.kv.as_ref().map(|kv| kv.0),
                want.map(|kv| kv.0)
            );
            oi += 1;
        }
        while si < snaps.len() && snaps[si].rev <= upto {
            let want: Vec<(String, i64)> = state.iter().map(|(k, s)| (k.clone(), s.rev)).collect();
            assert_eq!(snaps[si].items, want, "list at {}", snaps[si].rev);
            si += 1;
        }
    };
    check_reads(&state, rv0);
    for e in &events {
        let old = state.get(&e.key).cloned();
        match e.kind {
            EventType::Put => {
                let new = match &old {
                    None => {
                        assert_eq!(e.prev, None, "a create has no prev_kv: {e:?}");
                        Obj {
                            value: e.value.clone(),
                            create: e.rev,
                            rev: e.rev,
                            version: 1,
                        }
                    }
                    Some(o) => {
                        assert_eq!(
                            e.prev,
                            Some((o.value.clone(), o.rev)),
                            "prev_kv at {}",
                            e.rev
                        );
                        Obj {
                            value: e.value.clone(),
                            create: o.create,
                            rev: e.rev,
                            version: o.version + 1,
                        }
                    }
                };
                assert_eq!(
                    (e.create, e.version),
                    (new.create, new.version),
                    "create revision and version at {}",
                    e.rev
                );
                state.insert(e.key.clone(), new);
            }
            EventType::Delete => {
                let o = old.unwrap_or_else(|| panic!("delete of a missing key at {}", e.rev));
                assert_eq!(
                    e.prev,
                    Some((o.value.clone(), o.rev)),
                    "prev_kv at {}",
                    e.rev
                );
                state.remove(&e.key);
            }
        }
        check_reads(&state, e.rev);
    }
    check_reads(&state, i64::MAX);

    // The final list is the replayed state…
    let listed: BTreeMap<String, Obj> = final_list
        .iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                Obj {
                    value: kv.value().to_vec(),
                    create: kv.create_revision(),
                    rev: kv.mod_revision(),
                    version: kv.version(),
                },
            )
        })
        .collect();
    assert!(
        listed == state,
        "final list differs from the replayed watch"
    );
    // …and, no phantom key: exactly the keys whose last acknowledged write
    // was a create or update, with that write's value.
    let mut by_acks: BTreeMap<String, Vec<u8>> = initial
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv.value().to_vec()))
        .collect();
    for a in &acks {
        match &a.value {
            Some(v) => by_acks.insert(a.key.clone(), v.clone()),
            None => by_acks.remove(&a.key),
        };
    }
    let final_values: BTreeMap<String, Vec<u8>> =
        listed.into_iter().map(|(k, o)| (k, o.value)).collect();
    assert!(
        final_values == by_acks,
        "final list keys {:?} != keys of the last acknowledged writes {:?}",
        final_values.keys().collect::<Vec<_>>(),
        by_acks.keys().collect::<Vec<_>>()
    );
    // The other namespace was not touched.
    let g = c.get("/registry/configmaps/other/x", None).await.unwrap();
    assert_eq!(g.kvs()[0].mod_revision(), 22);
}

on_every_target!(configmap_load);
