//! `koine bench`: a load generator for any etcd v3 endpoint (Koine or a
//! real etcd), with workloads shaped like kube-apiserver's: `create` =
//! Txn(mod_revision == 0 → put 1 KiB); `update` = get + Txn(mod_revision ==
//! seen → put); `get` = one key; `list` = a paginated list of 10,000 keys
//! (limit 500, later pages pinned to the first's revision), in lists/s;
//! `count` = count-only over 10,000 keys; `lease` = grant TTL 60 + put with
//! the lease; `mixed` = 20 % create, 50 % update, 10 % delete-if-unchanged,
//! 15 % get, 5 % list; `watch` = `--watchers` watchers and `--watch-rate`
//! puts/s, latency from sending the put to each watcher receiving it (its
//! "clients" column is the number of watchers). Every value read back is
//! checked.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, ValueEnum};
use serde::Serialize;
use tonic::transport::Channel;

use crate::proto::etcdserverpb::{
    self as pb, compare, kv_client::KvClient, lease_client::LeaseClient, request_op,
    watch_client::WatchClient,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Plain puts to random keys.
    Put,
    /// Txn(mod_revision == 0 -> put), new keys.
    Create,
    /// Get, then Txn(mod_revision == seen -> put).
    Update,
    /// Single-key gets.
    Get,
    /// Full paginated list of the key set (limit 500, pinned revision).
    List,
    /// Count-only over the key set.
    Count,
    /// Lease grant (TTL 60) + put with that lease.
    Lease,
    /// 20% create, 50% update, 10% delete-if-unchanged, 15% get, 5% list.
    Mixed,
    /// Watch latency: N watchers, puts at a fixed rate.
    Watch,
    /// Loading the key set (`--keys` x `--history` puts in Txns of 64), in
    /// puts/s; measured once.
    Load,
    /// Compact(current revision, physical) over the loaded history, in
    /// revisions removed per second; measured once.
    Compact,
}

#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Endpoint to load (http://host:port).
    #[arg(long, default_value = "http://127.0.0.1:2379")]
    pub endpoint: String,
    /// Workloads to run, in order.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "create,update,get,list"
    )]
    pub workload: Vec<Workload>,
    /// Concurrent clients (a list runs each workload at each level; the
    /// watch workload has `--watchers` instead and runs once).
    #[arg(long, value_delimiter = ',', default_value = "16")]
    pub clients: Vec<usize>,
    /// How long each measurement runs.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Value size in bytes.
    #[arg(long, default_value_t = 1024)]
    pub value_size: usize,
    /// Keys pre-loaded for update/get/list/count/mixed.
    #[arg(long, default_value_t = 10_000)]
    pub keys: usize,
    /// Times the pre-load writes every key (a history of keys x history
    /// revisions); servers refusing multi-put Txns get one.
    #[arg(long, default_value_t = 1)]
    pub history: usize,
    /// The list workload lists the first N keys only, as one namespace of
    /// a large cluster (0: the whole key set).
    #[arg(long, default_value_t = 0)]
    pub list_keys: usize,
    /// Watchers for the watch workload.
    #[arg(long, default_value_t = 100)]
    pub watchers: usize,
    /// Puts per second for the watch workload.
    #[arg(long, default_value_t = 100)]
    pub watch_rate: u64,
    /// For the watch workload: send the puts here (another instance) and
    /// watch on `--endpoint`, to measure cross-instance latency.
    #[arg(long)]
    pub write_endpoint: Option<String>,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Label for this run (e.g. "koine-sqlite"), shown in the output.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Processes whose CPU time (user + system, with their children's:
    /// PostgreSQL's backends) each measurement reports per operation —
    /// the server, its database server.
    #[arg(long, value_delimiter = ',')]
    pub cpu_pids: Vec<u32>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchResult {
    pub label: String,
    pub workload: Workload,
    pub clients: usize,
    pub ops: u64,
    pub errors: u64,
    pub seconds: f64,
    pub ops_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU microseconds per operation of each of `--cpu-pids`, in order.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cpu_us_per_op: Vec<f64>,
}

const PREFIX: &str = "/bench/";
/// The pre-loaded key set lives under `KEYS` .. `KEYS_END`.
const KEYS: &str = "/bench/k/";
const KEYS_END: &str = "/bench/k0";

fn key(i: usize) -> Bytes {
    Bytes::from(format!("{KEYS}{i:08}"))
}

/// A value that names its key, so reads can be checked.
fn value(key: &[u8], size: usize) -> Bytes {
    let mut v = Vec::with_capacity(size.max(key.len()));
    v.extend_from_slice(key);
    while v.len() < size {
        v.push(b'.');
    }
    Bytes::from(v)
}

fn check(kv: &crate::proto::mvccpb::KeyValue) -> anyhow::Result<()> {
    anyhow::ensure!(
        kv.value.starts_with(&kv.key),
        "value read for {:?} does not match its key",
        String::from_utf8_lossy(&kv.key)
    );
    Ok(())
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let channel = Channel::from_shared(args.endpoint.clone())?
        .tcp_nodelay(true)
        .connect()
        .await?;
    let mut results = Vec::new();
    for &workload in &args.workload {
        // The watch workload's load is its watchers and put rate, not
        // client levels: one measurement.
        let levels: &[usize] = match workload {
            Workload::Watch => &[args.watchers],
            Workload::Load | Workload::Compact => &[1],
            _ => &args.clients,
        };
        for &clients in levels {
            let r = match workload {
                Workload::Watch => watch_latency(&args, channel.clone()).await?,
                Workload::Load | Workload::Compact => {
                    once(&args, channel.clone(), workload).await?
                }
                _ => load(&args, channel.clone(), workload, clients).await?,
            };
            if !args.json {
                eprintln!(
                    "{:<8} {:>4} clients: {:>9.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  ({} ops, {} errors)",
                    format!("{:?}", r.workload).to_lowercase(),
                    r.clients,
                    r.ops_per_sec,
                    r.p50_ms,
                    r.p99_ms,
                    r.ops,
                    r.errors
                );
            }
            results.push(r);
        }
    }
    if args.json {
        let out = serde_json::to_string_pretty(&results)?;
        std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes())?;
        std::io::Write::write_all(&mut std::io::stdout(), b"\n")?;
    } else {
        print_table(&results);
    }
    Ok(())
}

fn print_table(results: &[BenchResult]) {
    let mut out = String::from(
        "| label | workload | clients | ops/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        out.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {} |\n",
            r.label,
            format!("{:?}", r.workload).to_lowercase(),
            r.clients,
            r.ops_per_sec,
            r.p50_ms,
            r.p99_ms,
            r.errors
        ));
    }
    let _ = std::io::Write::write_all(&mut std::io::stdout(), out.as_bytes());
}

/// The load and compact workloads: one timed operation over the whole key
/// set, reported as puts (revisions) per second.
async fn once(
    args: &BenchArgs,
    channel: Channel,
    workload: Workload,
) -> anyhow::Result<BenchResult> {
    let mut kv = KvClient::new(channel).max_decoding_message_size(64 << 20);
    let began = Instant::now();
    let ops = if workload == Workload::Load {
        preload(&kv, args.keys, args.value_size, args.history).await?
    } else {
        let current = kv
            .range(pb::RangeRequest {
                key: Bytes::from(KEYS),
                count_only: true,
                ..Default::default()
            })
            .await?
            .into_inner()
            .header
            .map_or(0, |h| h.revision);
        kv.compact(pb::CompactionRequest {
            revision: current,
            physical: true,
        })
        .await?;
        current as u64
    };
    let took = began.elapsed();
    let mut r = summarize(&args.label, workload, 1, vec![took], 0, took.as_secs_f64());
    r.ops = ops;
    r.ops_per_sec = ops as f64 / took.as_secs_f64();
    Ok(r)
}

/// Puts the pre-loaded key set (in parallel txns of 64 puts), `history`
/// times; answers the puts made.
async fn preload(
    kv: &KvClient<Channel>,
    keys: usize,
    size: usize,
    history: usize,
) -> anyhow::Result<u64> {
    let existing = kv
        .clone()
        .range(pb::RangeRequest {
            key: Bytes::from(KEYS),
            range_end: Bytes::from(KEYS_END),
            count_only: true,
            ..Default::default()
        })
        .await?
        .into_inner()
        .count;
    if existing as usize >= keys {
        return Ok(0);
    }
    let chunks: Vec<Vec<usize>> = (0..keys)
        .collect::<Vec<_>>()
        .chunks(64)
        .map(<[usize]>::to_vec)
        .collect();
    // One Txn of 64 puts per chunk; a server that refuses that shape (kine
    // accepts only kube-apiserver's) gets one create Txn per key.
    let probe = put_txn(kv.clone(), vec![chunks[0][0]], size, false).await;
    let single = matches!(&probe, Err(s) if s.code() == tonic::Code::InvalidArgument);
    if !single {
        probe?;
    }
    let rounds = if single { 1 } else { history.max(1) };
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..rounds {
        for chunk in &chunks {
            if single {
                for &i in chunk {
                    tasks.spawn(put_txn(kv.clone(), vec![i], size, true));
                    drain(&mut tasks, 64).await?;
                }
            } else {
                tasks.spawn(put_txn(kv.clone(), chunk.clone(), size, false));
                drain(&mut tasks, 16).await?;
            }
        }
    }
    drain(&mut tasks, 0).await?;
    Ok((keys * rounds) as u64)
}

/// Waits until at most `left` preload tasks run, failing on an error.
async fn drain(
    tasks: &mut tokio::task::JoinSet<Result<(), tonic::Status>>,
    left: usize,
) -> anyhow::Result<()> {
    while tasks.len() > left {
        if let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    Ok(())
}

/// Puts `keys` in one Txn; `create`: only if absent (the one-key
/// create shape every etcd-compatible server accepts).
async fn put_txn(
    mut kv: KvClient<Channel>,
    keys: Vec<usize>,
    size: usize,
    create: bool,
) -> Result<(), tonic::Status> {
    let compare = match (create, keys.as_slice()) {
        (true, [i]) => vec![mod_equals(&key(*i), 0)],
        _ => vec![],
    };
    let success = keys.iter().map(|&i| put_op(&key(i), size)).collect();
    kv.txn(pb::TxnRequest {
        compare,
        success,
        failure: vec![],
    })
    .await?;
    Ok(())
}

/// Runs `workload` with `clients` concurrent clients for the duration.
async fn load(
    args: &BenchArgs,
    channel: Channel,
    workload: Workload,
    clients: usize,
) -> anyhow::Result<BenchResult> {
    let kv = KvClient::new(channel.clone()).max_decoding_message_size(64 << 20);
    if workload != Workload::Create && workload != Workload::Put && workload != Workload::Lease {
        preload(&kv, args.keys, args.value_size, args.history).await?;
    }
    let list_end = match args.list_keys {
        n if n > 0 && n < args.keys => key(n),
        _ => Bytes::from(KEYS_END),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_ticks(&args.cpu_pids);
    let start = Instant::now();
    let run_id: u64 = rand::random::<u32>() as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for c in 0..clients {
        let mut client = Client {
            kv: kv.clone(),
            lease: LeaseClient::new(channel.clone()),
            keys: args.keys,
            list_end: list_end.clone(),
            size: args.value_size,
            seq: 0,
            name: format!("{PREFIX}new/{run_id}/{c}/"),
            rng: rand::random(),
        };
        let stop = stop.clone();
        let done = done.clone();
        tasks.spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                match client.op(workload).await {
                    Ok(()) => lat.push(t.elapsed()),
                    Err(e) => {
                        errors += 1;
                        if errors <= 3 {
                            tracing::warn!(error = %e, "bench op failed");
                        }
                    }
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (lat, errors)
        });
    }
    let progress = {
        let done = done.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut last = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = done.load(Ordering::Relaxed);
                eprint!("\r  {:?} x{clients}: {} ops/s   ", workload, now - last);
                last = now;
            }
            eprint!("\r");
        })
    };
    tokio::time::sleep(args.duration).await;
    stop.store(true, Ordering::Relaxed);
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        let (l, e) = r?;
        lat.extend(l);
        errors += e;
    }
    let seconds = start.elapsed().as_secs_f64();
    let cpu_after = cpu_ticks(&args.cpu_pids);
    let _ = progress.await;
    let mut r = summarize(&args.label, workload, clients, lat, errors, seconds);
    let hz = clock_ticks_per_second();
    r.cpu_us_per_op = cpu_before
        .iter()
        .zip(&cpu_after)
        .map(|(b, a)| a.saturating_sub(*b) as f64 / hz * 1e6 / r.ops.max(1) as f64)
        .collect();
    Ok(r)
}

/// The unit of /proc's CPU times.
#[allow(unsafe_code)]
fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf only reads a constant of the system.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// CPU clock ticks (user + system) each process has used, with what its
/// children used: the exited ones it waited for, and the live ones.
fn cpu_ticks(pids: &[u32]) -> Vec<u64> {
    // Fields after the command's closing parenthesis: state is 3, ppid 4,
    // utime 14, stime 15, cutime 16, cstime 17 (proc(5)).
    fn stat(pid: &str) -> Option<Vec<u64>> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let rest = &text[text.rfind(')')? + 2..];
        Some(
            rest.split(' ')
                .map(|f| f.parse().unwrap_or(0))
                .collect::<Vec<u64>>(),
        )
    }
    let field = |f: &[u64], n: usize| f.get(n - 3).copied().unwrap_or(0);
    let all: Vec<Vec<u64>> = match std::fs::read_dir("/proc") {
        Ok(dir) => dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                let name = name.to_str()?;
                name.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| stat(name))?
            })
            .collect(),
        Err(_) => Vec::new(),
    };
    pids.iter()
        .map(|&pid| {
            let own = stat(&pid.to_string()).map_or(0, |f| {
                field(&f, 14) + field(&f, 15) + field(&f, 16) + field(&f, 17)
            });
            let children: u64 = all
                .iter()
                .filter(|f| field(f, 4) == pid as u64)
                .map(|f| field(f, 14) + field(f, 15))
                .sum();
            own + children
        })
        .collect()
}

fn summarize(
    label: &str,
    workload: Workload,
    clients: usize,
    mut lat: Vec<Duration>,
    errors: u64,
    seconds: f64,
) -> BenchResult {
    lat.sort();
    let pct = |p: f64| -> f64 {
        if lat.is_empty() {
            return 0.0;
        }
        let i = ((lat.len() as f64 * p) as usize).min(lat.len() - 1);
        lat[i].as_secs_f64() * 1000.0
    };
    BenchResult {
        label: label.to_string(),
        workload,
        clients,
        ops: lat.len() as u64,
        errors,
        seconds,
        ops_per_sec: lat.len() as f64 / seconds,
        p50_ms: pct(0.5),
        p99_ms: pct(0.99),
        cpu_us_per_op: Vec::new(),
    }
}

struct Client {
    kv: KvClient<Channel>,
    lease: LeaseClient<Channel>,
    keys: usize,
    /// Where the list workload's range ends.
    list_end: Bytes,
    size: usize,
    seq: u64,
    name: String,
    rng: u64,
}

impl Client {
    fn random_key(&mut self) -> Bytes {
        // xorshift: cheap and good enough to spread load.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        key((self.rng % self.keys.max(1) as u64) as usize)
    }

    fn new_key(&mut self) -> Bytes {
        self.seq += 1;
        Bytes::from(format!("{}{}", self.name, self.seq))
    }

    async fn op(&mut self, workload: Workload) -> anyhow::Result<()> {
        match workload {
            Workload::Put => {
                let k = self.random_key();
                self.kv
                    .put(pb::PutRequest {
                        value: value(&k, self.size),
                        key: k,
                        ..Default::default()
                    })
                    .await?;
            }
            Workload::Create => self.create().await?,
            Workload::Update => self.update().await?,
            Workload::Get => self.get().await?,
            Workload::List => self.list().await?,
            Workload::Count => {
                let r = self
                    .kv
                    .range(pb::RangeRequest {
                        key: Bytes::from(KEYS),
                        range_end: Bytes::from(KEYS_END),
                        count_only: true,
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                anyhow::ensure!(
                    r.count >= self.keys as i64,
                    "count {} below key set",
                    r.count
                );
            }
            Workload::Lease => {
                let l = self
                    .lease
                    .lease_grant(pb::LeaseGrantRequest { ttl: 60, id: 0 })
                    .await?
                    .into_inner();
                let k = self.new_key();
                self.kv
                    .put(pb::PutRequest {
                        value: value(&k, self.size),
                        key: k,
                        lease: l.id,
                        ..Default::default()
                    })
                    .await?;
            }
            Workload::Mixed => {
                let dice = self.rng % 100;
                self.random_key();
                match dice {
                    0..20 => self.create().await?,
                    20..70 => self.update().await?,
                    70..80 => self.delete_if_unchanged().await?,
                    80..95 => self.get().await?,
                    _ => self.list().await?,
                }
            }
            Workload::Watch | Workload::Load | Workload::Compact => measured_once()?,
        }
        Ok(())
    }

    async fn create(&mut self) -> anyhow::Result<()> {
        let k = self.new_key();
        let r = self
            .kv
            .txn(pb::TxnRequest {
                compare: vec![mod_equals(&k, 0)],
                success: vec![put_op(&k, self.size)],
                failure: vec![],
            })
            .await?
            .into_inner();
        anyhow::ensure!(r.succeeded, "create of a new key failed");
        Ok(())
    }

    async fn update(&mut self) -> anyhow::Result<()> {
        let k = self.random_key();
        let seen = self.read(&k).await?.map_or(0, |kv| kv.mod_revision);
        // Losing a race to another client is normal: that is an op too.
        self.kv
            .txn(pb::TxnRequest {
                compare: vec![mod_equals(&k, seen)],
                success: vec![put_op(&k, self.size)],
                failure: vec![get_op(&k)],
            })
            .await?;
        Ok(())
    }

    async fn delete_if_unchanged(&mut self) -> anyhow::Result<()> {
        let k = self.random_key();
        let Some(kv) = self.read(&k).await? else {
            return Ok(());
        };
        self.kv
            .txn(pb::TxnRequest {
                compare: vec![mod_equals(&k, kv.mod_revision)],
                success: vec![pb::RequestOp {
                    request: Some(request_op::Request::RequestDeleteRange(
                        pb::DeleteRangeRequest {
                            key: k.clone(),
                            ..Default::default()
                        },
                    )),
                }],
                failure: vec![get_op(&k)],
            })
            .await?;
        Ok(())
    }

    async fn get(&mut self) -> anyhow::Result<()> {
        let k = self.random_key();
        self.read(&k).await?;
        Ok(())
    }

    /// Reads one key and checks its value.
    async fn read(
        &mut self,
        key: &Bytes,
    ) -> anyhow::Result<Option<crate::proto::mvccpb::KeyValue>> {
        let r = self
            .kv
            .range(pb::RangeRequest {
                key: key.clone(),
                ..Default::default()
            })
            .await?
            .into_inner();
        let kv = r.kvs.into_iter().next();
        if let Some(kv) = &kv {
            check(kv)?;
        }
        Ok(kv)
    }

    /// A full paginated list, as the apiserver does: limit 500, the first
    /// page's revision pinned for the rest.
    async fn list(&mut self) -> anyhow::Result<()> {
        let end = self.list_end.clone();
        let mut start = Bytes::from(KEYS);
        let mut revision = 0;
        let mut seen = 0;
        loop {
            let r = self
                .kv
                .range(pb::RangeRequest {
                    key: start.clone(),
                    range_end: end.clone(),
                    limit: 500,
                    revision,
                    ..Default::default()
                })
                .await?
                .into_inner();
            if revision == 0 {
                revision = r.header.map_or(0, |h| h.revision);
            }
            for kv in &r.kvs {
                check(kv)?;
            }
            seen += r.kvs.len();
            match (r.more, r.kvs.last()) {
                (true, Some(last)) => {
                    let mut next = last.key.to_vec();
                    next.push(0);
                    start = Bytes::from(next);
                }
                _ => break,
            }
        }
        anyhow::ensure!(seen > 0, "empty list");
        Ok(())
    }
}

fn measured_once() -> anyhow::Result<()> {
    anyhow::bail!("the watch, load and compact workloads are measured separately")
}

fn mod_equals(key: &Bytes, rev: i64) -> pb::Compare {
    pb::Compare {
        result: compare::CompareResult::Equal as i32,
        target: compare::CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(compare::TargetUnion::ModRevision(rev)),
        range_end: Bytes::new(),
    }
}

/// The read kube-apiserver puts in the else branch of its conditional
/// updates and deletes.
fn get_op(key: &Bytes) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestRange(pb::RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    }
}

fn put_op(key: &Bytes, size: usize) -> pb::RequestOp {
    pb::RequestOp {
        request: Some(request_op::Request::RequestPut(pb::PutRequest {
            key: key.clone(),
            value: value(key, size),
            ..Default::default()
        })),
    }
}

/// Watch latency: `watchers` streams on one prefix, puts at `watch_rate`
/// per second carrying their send time; latency is measured from the put
/// being sent to each watcher receiving the event. Every watcher must see
/// every put, in order.
async fn watch_latency(args: &BenchArgs, channel: Channel) -> anyhow::Result<BenchResult> {
    use futures::StreamExt;
    let prefix = format!("{PREFIX}watch/{}/", rand::random::<u32>());
    let epoch = Instant::now();
    let total = (args.watch_rate as f64 * args.duration.as_secs_f64()) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(args.watchers.max(1));
    for _ in 0..args.watchers {
        let mut wc = WatchClient::new(channel.clone());
        let prefix = prefix.clone();
        let ready = ready_tx.clone();
        tasks.spawn(async move {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            let mut end = prefix.clone().into_bytes();
            if let Some(last) = end.last_mut() {
                *last += 1;
            }
            tx.send(pb::WatchRequest {
                request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                    pb::WatchCreateRequest {
                        key: Bytes::from(prefix),
                        range_end: Bytes::from(end),
                        ..Default::default()
                    },
                )),
            })
            .await?;
            let mut stream = wc
                .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
                .await?
                .into_inner();
            let mut lat = Vec::new();
            let mut last_rev = 0;
            let mut seen = 0;
            while seen < total {
                let Some(msg) = stream.next().await else {
                    anyhow::bail!("watch stream ended");
                };
                let msg = msg?;
                if msg.created {
                    let _ = ready.send(()).await;
                }
                let now = epoch.elapsed();
                for ev in msg.events {
                    let kv = ev.kv.unwrap_or_default();
                    anyhow::ensure!(kv.mod_revision > last_rev, "event out of order");
                    last_rev = kv.mod_revision;
                    let sent: u64 = std::str::from_utf8(&kv.value)?
                        .trim_end_matches('.')
                        .parse()?;
                    lat.push(now.saturating_sub(Duration::from_micros(sent)));
                    seen += 1;
                }
            }
            drop(tx);
            Ok::<_, anyhow::Error>(lat)
        });
    }
    drop(ready_tx);
    for _ in 0..args.watchers {
        ready_rx.recv().await;
    }
    let mut kv = match &args.write_endpoint {
        Some(e) => KvClient::new(Channel::from_shared(e.clone())?.connect().await?),
        None => KvClient::new(channel.clone()),
    };
    let gap = Duration::from_secs_f64(1.0 / args.watch_rate.max(1) as f64);
    let start = Instant::now();
    for i in 0..total {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let sent = epoch.elapsed().as_micros() as u64;
        kv.put(pb::PutRequest {
            key: Bytes::from(format!("{prefix}{}", i % 100)),
            value: Bytes::from(format!("{sent}")),
            ..Default::default()
        })
        .await?;
    }
    let mut lat = Vec::new();
    let mut errors = 0;
    while let Some(r) = tasks.join_next().await {
        match r? {
            Ok(l) => lat.extend(l),
            Err(e) => {
                errors += 1;
                tracing::warn!(error = %e, "watcher failed");
            }
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(summarize(
        &args.label,
        Workload::Watch,
        args.watchers,
        lat,
        errors,
        seconds,
    ))
}
