//! Property test: random sequences of Put, DeleteRange, Txn and Range
//! (current and historical, with limits) against a tiny in-memory model of
//! etcd's semantics; every response must match the model's. Seeds are fixed
//! so a failure replays; set KOINE_MODEL_SEEDS to try more.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, DeleteOptions, GetOptions, Txn, TxnOp, TxnOpResponse};

use crate::harness::Server;
use crate::on_every_target;

#[derive(Clone, Debug, PartialEq)]
struct Kv {
    create: i64,
    modr: i64,
    version: i64,
    value: String,
}

/// etcd's store as a map per revision.
struct Model {
    revision: i64,
    history: Vec<BTreeMap<String, Kv>>, // index = revision - 1
}

impl Model {
    fn new() -> Model {
        Model {
            revision: 1,
            history: vec![BTreeMap::new()],
        }
    }
    fn now(&self) -> &BTreeMap<String, Kv> {
        self.history.last().unwrap()
    }
    fn at(&self, rev: i64) -> &BTreeMap<String, Kv> {
        &self.history[(rev - 1) as usize]
    }
    /// Applies puts and deletes as one revision (if anything changes).
    fn apply(&mut self, puts: &[(String, String)], dels: &[(String, String)]) {
        let mut next = self.now().clone();
        let rev = self.revision + 1;
        let mut changed = !puts.is_empty();
        for (a, b) in dels.iter().filter(|(a, b)| a < b) {
            let keys: Vec<String> = next
                .range(a.clone()..b.clone())
                .map(|(k, _)| k.clone())
                .collect();
            changed |= !keys.is_empty();
            for k in keys {
                next.remove(&k);
            }
        }
        for (k, v) in puts {
            let e = match next.get(k) {
                Some(old) => Kv {
                    create: old.create,
                    modr: rev,
                    version: old.version + 1,
                    value: v.clone(),
                },
                None => Kv {
                    create: rev,
                    modr: rev,
                    version: 1,
                    value: v.clone(),
                },
            };
            next.insert(k.clone(), e);
        }
        if changed {
            self.revision = rev;
            self.history.push(next);
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn key(&mut self) -> String {
        format!("k{}", self.below(12))
    }
}

fn seen(kvs: &[etcd_client::KeyValue]) -> Vec<(String, Kv)> {
    kvs.iter()
        .map(|kv| {
            (
                kv.key_str().unwrap().to_string(),
                Kv {
                    create: kv.create_revision(),
                    modr: kv.mod_revision(),
                    version: kv.version(),
                    value: kv.value_str().unwrap().to_string(),
                },
            )
        })
        .collect()
}

async fn random_operations_match_the_model(s: Server) {
    let seeds: Vec<u64> = std::env::var("KOINE_MODEL_SEEDS")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.parse().ok()).collect())
        .unwrap_or_else(|| vec![0x9e3779b97f4a7c15]);
    let mut c = s.client().await;
    let mut m = Model::new();
    for seed in seeds {
        let mut rng = Rng(seed);
        for step in 0..300 {
            let ctx = format!("seed {seed:#x} step {step}");
            match rng.below(10) {
                0..=3 => {
                    let (k, v) = (rng.key(), format!("v{step}"));
                    let r = c.put(k.clone(), v.clone(), None).await.unwrap();
                    m.apply(&[(k, v)], &[]);
                    assert_eq!(r.header().unwrap().revision(), m.revision, "{ctx}");
                }
                4 => {
                    let (a, b) = (rng.key(), rng.key());
                    let r = c
                        .delete(a.clone(), Some(DeleteOptions::new().with_range(b.clone())))
                        .await
                        .unwrap();
                    let want = if a < b {
                        m.now().range(a.clone()..b.clone()).count()
                    } else {
                        0
                    };
                    m.apply(&[], &[(a, b)]);
                    assert_eq!(r.deleted() as usize, want, "{ctx}");
                    assert_eq!(r.header().unwrap().revision(), m.revision, "{ctx}");
                }
                5..=6 => {
                    // Guarded update: compare mod revision, put or read.
                    let k = rng.key();
                    let guess = if rng.below(2) == 0 {
                        m.now().get(&k).map_or(0, |e| e.modr)
                    } else {
                        rng.below(m.revision as u64 + 1) as i64
                    };
                    let v = format!("t{step}");
                    let t = Txn::new()
                        .when([Compare::mod_revision(k.clone(), CompareOp::Equal, guess)])
                        .and_then([TxnOp::put(k.clone(), v.clone(), None)])
                        .or_else([TxnOp::get(k.clone(), None)]);
                    let r = c.txn(t).await.unwrap();
                    let ok = m.now().get(&k).map_or(0, |e| e.modr) == guess;
                    assert_eq!(r.succeeded(), ok, "{ctx}");
                    if ok {
                        m.apply(&[(k, v)], &[]);
                    } else {
                        match &r.op_responses()[0] {
                            TxnOpResponse::Get(g) => {
                                let want: Vec<(String, Kv)> = m
                                    .now()
                                    .get(&k)
                                    .map(|e| (k.clone(), e.clone()))
                                    .into_iter()
                                    .collect();
                                assert_eq!(seen(g.kvs()), want, "{ctx}");
                            }
                            other => panic!("{ctx}: {other:?}"),
                        }
                    }
                    assert_eq!(r.header().unwrap().revision(), m.revision, "{ctx}");
                }
                _ => {
                    let (a, b) = (rng.key(), rng.key());
                    let limit = rng.below(4) as i64;
                    let rev = if rng.below(2) == 0 {
                        0
                    } else {
                        1 + rng.below(m.revision as u64) as i64
                    };
                    let mut opts = GetOptions::new().with_range(b.clone()).with_limit(limit);
                    if rev > 0 {
                        opts = opts.with_revision(rev);
                    }
                    let r = c.get(a.clone(), Some(opts)).await.unwrap();
                    let state = if rev > 0 { m.at(rev) } else { m.now() };
                    let all: Vec<(String, Kv)> = if a < b {
                        state
                            .range(a.clone()..b.clone())
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect()
                    } else {
                        Vec::new()
                    };
                    let take = if limit > 0 {
                        (limit as usize).min(all.len())
                    } else {
                        all.len()
                    };
                    assert_eq!(
                        seen(r.kvs()),
                        all[..take].to_vec(),
                        "{ctx}: range {a}..{b} limit {limit} rev {rev}"
                    );
                    assert_eq!(r.count() as usize, all.len(), "{ctx}");
                    assert_eq!(r.more(), take < all.len(), "{ctx}");
                    assert_eq!(r.header().unwrap().revision(), m.revision, "{ctx}");
                }
            }
        }
    }
}

on_every_target!(random_operations_match_the_model);
