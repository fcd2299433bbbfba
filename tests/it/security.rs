//! What an attacker tries: requests that cost the server memory, calls
//! without credentials, permissions sidestepped. Each test runs against
//! Koine and against real etcd as the reference (3.4 from Debian; 3.7,
//! built by scripts/kubernetes.sh, where etcd 3.5+ changed the rules:
//! those tests are `#[ignore]`d and scripts/test.sh runs them once etcd
//! 3.7 is built).

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Etcd, KoineProcess};

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS")
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// HPACK string or integer length with a 7-bit prefix.
fn hpack_len(out: &mut Vec<u8>, first: u8, mut v: usize) {
    if v < 127 {
        out.push(first | v as u8);
        return;
    }
    out.push(first | 127);
    v -= 127;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// An HPACK bomb: a malformed `:authority` (the one Koine's transport
/// decodes headers for), one 4,000-byte field added to the HPACK table,
/// then its one-byte index `repeats` times — 4,000 decoded bytes per byte
/// sent. Cut into a HEADERS frame and CONTINUATIONs; the last one ends
/// the block unless `finish` is false.
fn hpack_bomb(repeats: usize, finish: bool) -> Vec<u8> {
    let mut block = vec![0x01];
    let bad = b"http://127.0.0.1:2379";
    hpack_len(&mut block, 0, bad.len());
    block.extend_from_slice(bad);
    block.push(0x40);
    hpack_len(&mut block, 0, 5);
    block.extend_from_slice(b"x-big");
    hpack_len(&mut block, 0, 4000);
    block.extend_from_slice(&[b'a'; 4000]);
    block.extend(std::iter::repeat_n(0x80 | 62, repeats));
    let mut out = PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[])); // SETTINGS
    let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
    for (i, c) in chunks.iter().enumerate() {
        let kind = if i == 0 { 0x1 } else { 0x9 };
        let end = finish && i + 1 == chunks.len();
        out.extend(frame(kind, if end { 0x4 } else { 0 }, 1, c));
    }
    out
}

/// Sends `bytes` on a new connection to `addr` and reads what comes back
/// until the server closes it or `linger` passes; the socket is returned
/// open if the server kept it.
async fn attack(addr: &str, bytes: Vec<u8>, linger: Duration) -> Option<TcpStream> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    // The server may close before it has read it all.
    let _ = s.write_all(&bytes).await;
    let mut buf = vec![0u8; 65536];
    let deadline = tokio::time::Instant::now() + linger;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return None,
            Ok(Ok(_)) => {}
            Err(_) => return Some(s),
        }
    }
}

/// HPACK bombs (256 KiB of header block on each of 8 connections, each
/// ~260 MB decoded) and 200 connections that leave a 1 MiB header block
/// unfinished cost the server no more memory than h2 itself would hold,
/// and it goes on answering.
async fn header_blocks_cost_bounded_memory(endpoint: &str, pid: u32) {
    let addr = endpoint.trim_start_matches("http://").to_string();
    let before = rss_kib(pid);
    let bombs = (0..8).map(|_| {
        let addr = addr.clone();
        tokio::spawn(async move {
            attack(&addr, hpack_bomb(256 << 10, true), Duration::from_secs(3)).await
        })
    });
    for b in bombs {
        b.await.unwrap();
    }
    let after_bombs = rss_kib(pid);
    let mut held = Vec::new();
    for _ in 0..200 {
        let addr = addr.clone();
        held.push(tokio::spawn(async move {
            attack(
                &addr,
                hpack_bomb(1 << 20, false),
                Duration::from_millis(200),
            )
            .await
        }));
    }
    let mut open = Vec::new();
    for h in held {
        open.extend(h.await.unwrap());
    }
    let after_held = rss_kib(pid);
    let grew = |kib: u64| kib.saturating_sub(before) / 1024;
    assert!(
        grew(after_bombs) < 64 && grew(after_held) < 64,
        "RSS grew by {} MiB after the bombs, {} MiB with {} unfinished blocks held (from {} MiB)",
        grew(after_bombs),
        grew(after_held),
        open.len(),
        before / 1024
    );
    drop(open);
    let mut c = etcd_client::Client::connect([endpoint], None)
        .await
        .unwrap();
    c.put("after", "attack", None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_cost_bounded_memory_koine() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("state.db").display());
    let k = KoineProcess::start(&db, &[]).await;
    header_blocks_cost_bounded_memory(&k.endpoint, k.pid()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_blocks_cost_bounded_memory_etcd() {
    let e = Etcd::start().await;
    header_blocks_cost_bounded_memory(&e.endpoint, e.pid()).await;
}

/// A header block left unfinished: Koine closes the connection once
/// `BLOCK_TIMEOUT` (10 s) has passed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_header_block_is_not_held_forever() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("state.db").display());
    let k = KoineProcess::start(&db, &[]).await;
    let addr = k.endpoint.trim_start_matches("http://");
    let start = std::time::Instant::now();
    let kept = attack(addr, hpack_bomb(100, false), Duration::from_secs(30)).await;
    assert!(kept.is_none(), "the connection was still open after 30 s");
    let took = start.elapsed();
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "closed after {took:?}"
    );
}
