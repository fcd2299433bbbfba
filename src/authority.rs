//! Accepting the malformed HTTP/2 `:authority` some etcd clients send.
//!
//! etcdctl 3.4 dials each endpoint of `endpoint status`, `endpoint hash`
//! and `endpoint hashkv` by its URL, so the request's `:authority` is
//! `http://127.0.0.1:2379`; clientv3 3.5.0 sends `#initially=[...]` on
//! every call. etcd's server (grpc-go) ignores the header. h2, under
//! tonic, resets such a stream with PROTOCOL_ERROR before any service sees
//! it, so those commands failed against Koine.
//!
//! [`AuthorityFix`] sits between a client connection and h2. It decodes
//! the first header block of an HTTP/2 connection (HPACK, with the
//! `loona-hpack` decoder): when that block's `:authority` is well formed or
//! absent — every other client — it hands the connection over untouched,
//! and from then on each read goes straight to the socket. When it is
//! malformed, every header block of the connection is decoded and encoded
//! again without the bad `:authority` (an HTTP/2 request may omit it; the
//! service never reads it), as literals that leave h2's HPACK table empty.
//! Anything it cannot follow (a plain HTTP/1.1 request, a header block
//! HPACK cannot decode) is handed over as it came, for h2 or hyper to judge.
//!
//! Under TLS (tonic's, around this wrapper) it sees no preface and hands
//! the stream over at once; etcdctl 3.4 sends a well-formed authority
//! there (`tls_with_client_certificates` checks `endpoint status`).
//!
//! It holds no more than h2 would, as h2 bounds it: a header block is
//! buffered up to [`MAX_BLOCK`] bytes (a HEADERS frame and the
//! CONTINUATIONs h2 accepts for a [`MAX_HEADER_LIST`] list), decoding
//! stops keeping fields once their decoded size (RFC 7541's size, name
//! and value plus 32 per field, what h2 limits) passes [`MAX_HEADER_LIST`] — HPACK
//! lets a small block expand a thousandfold — and a header block must be
//! complete within [`BLOCK_TIMEOUT`] of its first byte, or the connection
//! is closed. A block over either limit is handed over as it came, and h2
//! refuses it as it refuses any other.

use std::borrow::Cow;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

/// What every HTTP/2 client sends first.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const FRAME_HEADER: usize = 9;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The largest frame h2 accepts unless told otherwise (SETTINGS default).
const MAX_FRAME: usize = 16_384;
/// The largest decoded header list the server accepts (hyper's default,
/// set explicitly on the listener by `serve.rs`).
pub const MAX_HEADER_LIST: usize = 16 << 10;
/// The most bytes of one header block held while it is incomplete: a
/// HEADERS frame and five CONTINUATIONs, what h2 accepts for a header list
/// of [`MAX_HEADER_LIST`] in frames of [`MAX_FRAME`]. A larger block is
/// handed over unread (h2 refuses it).
const MAX_BLOCK: usize = 6 * (FRAME_HEADER + MAX_FRAME);
/// How long a header block may take from its first byte to its last.
pub const BLOCK_TIMEOUT: Duration = Duration::from_secs(10);

enum Mode {
    /// Waiting for the HTTP/2 preface.
    Preface,
    /// HTTP/2, until the first header block says which of the others.
    Sniff,
    /// The client sends malformed authorities: every block is re-encoded.
    Fix,
    /// Bytes pass as they come.
    Raw,
}

/// A client connection whose malformed `:authority` headers are dropped
/// before h2 reads them (see the module documentation).
pub struct AuthorityFix<T> {
    inner: T,
    mode: Mode,
    /// Bytes read from `inner` not yet handed to the reader; the first
    /// `ready` of them are final.
    buf: BytesMut,
    ready: usize,
    /// Payload bytes of a frame passed through that are still to come.
    skip: usize,
    decoder: Option<Box<loona_hpack::Decoder<'static>>>,
    /// When the bytes held now (an unfinished frame header or header
    /// block) must be complete.
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> AuthorityFix<T> {
        AuthorityFix {
            inner,
            mode: Mode::Preface,
            buf: BytesMut::new(),
            ready: 0,
            skip: 0,
            decoder: None,
            deadline: None,
        }
    }

    /// Moves `ready` over every byte of `buf` that can be handed on,
    /// rewriting complete header blocks where the mode says so.
    fn process(&mut self) {
        loop {
            let pending = &self.buf[self.ready..];
            if self.skip > 0 {
                let n = self.skip.min(pending.len());
                self.ready += n;
                self.skip -= n;
                if self.skip > 0 {
                    return;
                }
                continue;
            }
            match self.mode {
                Mode::Raw => {
                    self.ready = self.buf.len();
                    return;
                }
                Mode::Preface => {
                    let n = pending.len().min(PREFACE.len());
                    if pending[..n] != PREFACE[..n] {
                        self.mode = Mode::Raw;
                    } else if n == PREFACE.len() {
                        self.ready += n;
                        self.mode = Mode::Sniff;
                    } else {
                        return;
                    }
                }
                Mode::Sniff | Mode::Fix => {
                    let Some((len, kind, _)) = frame_header(pending) else {
                        return;
                    };
                    if kind != HEADERS {
                        self.ready += FRAME_HEADER;
                        self.skip = len;
                        continue;
                    }
                    let end = match block_end(pending) {
                        Block::Complete(end) => end,
                        Block::Partial if pending.len() <= MAX_BLOCK => return,
                        Block::Partial | Block::Invalid => {
                            self.mode = Mode::Raw;
                            continue;
                        }
                    };
                    let block = pending[..end].to_vec();
                    match self.rewrite(&block) {
                        Some(frames) => {
                            let rest = self.buf.split_off(self.ready + end);
                            self.buf.truncate(self.ready);
                            self.buf.extend_from_slice(&frames);
                            self.ready = self.buf.len();
                            self.buf.extend_from_slice(&rest);
                        }
                        None => self.ready += end,
                    }
                }
            }
        }
    }

    /// A complete header block (its HEADERS and CONTINUATION frames): the
    /// frames to send instead, or `None` to send it as it is.
    fn rewrite(&mut self, frames: &[u8]) -> Option<Vec<u8>> {
        let (stream, flags, fragment) = fragment(frames)?;
        let decoder = self
            .decoder
            .get_or_insert_with(|| Box::new(loona_hpack::Decoder::new()));
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
        let mut malformed = false;
        let mut size = 0usize;
        let decoded = decoder.decode_with_cb(&fragment, |name: Cow<[u8]>, value: Cow<[u8]>| {
            // Past the limit nothing is looked at or kept: the decoder
            // still runs to the end of the block, borrowing each field.
            if size > MAX_HEADER_LIST {
                return;
            }
            size += name.len() + value.len() + 32;
            if size > MAX_HEADER_LIST {
                fields = Vec::new();
                return;
            }
            if &*name == b":authority" && http::uri::Authority::try_from(&*value).is_err() {
                malformed = true;
                return;
            }
            fields.push((name.into_owned(), value.into_owned()));
        });
        if decoded.is_err() || size > MAX_HEADER_LIST {
            // h2 will say what is wrong with it (a header list too large,
            // or one it cannot decode).
            self.mode = Mode::Raw;
            self.decoder = None;
            return None;
        }
        if let Mode::Sniff = self.mode {
            if !malformed {
                self.mode = Mode::Raw;
                self.decoder = None;
                return None;
            }
            tracing::debug!("client sends a malformed :authority; dropping it");
            self.mode = Mode::Fix;
        }
        Some(encode_block(stream, flags & END_STREAM, &fields))
    }
}

/// A frame's payload length, type and flags, once its header is in.
fn frame_header(b: &[u8]) -> Option<(usize, u8, u8)> {
    if b.len() < FRAME_HEADER {
        return None;
    }
    let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
    Some((len, b[3], b[4]))
}

enum Block {
    Complete(usize),
    Partial,
    Invalid,
}

/// Where the header block starting at `b` (a HEADERS frame) ends: after
/// the frame that carries END_HEADERS.
fn block_end(b: &[u8]) -> Block {
    let mut pos = 0;
    loop {
        let Some((len, kind, flags)) = frame_header(&b[pos..]) else {
            return Block::Partial;
        };
        if (pos == 0) != (kind == HEADERS) || (pos > 0 && kind != CONTINUATION) {
            return Block::Invalid;
        }
        if b.len() < pos + FRAME_HEADER + len {
            return Block::Partial;
        }
        pos += FRAME_HEADER + len;
        if flags & END_HEADERS != 0 {
            return Block::Complete(pos);
        }
    }
}

/// The stream id, the HEADERS flags and the HPACK fragment of a complete
/// header block, without padding or priority.
fn fragment(frames: &[u8]) -> Option<(u32, u8, Vec<u8>)> {
    let stream = u32::from_be_bytes(frames[5..9].try_into().ok()?) & 0x7fff_ffff;
    let flags = frames[4];
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < frames.len() {
        let (len, kind, f) = frame_header(&frames[pos..])?;
        let mut payload = &frames[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
        if kind == HEADERS {
            if f & PADDED != 0 {
                let pad = usize::from(*payload.first()?);
                payload = payload.get(1..payload.len().checked_sub(pad)?)?;
            }
            if f & PRIORITY != 0 {
                payload = payload.get(5..)?;
            }
        }
        out.extend_from_slice(payload);
        pos += FRAME_HEADER + len;
    }
    Some((stream, flags, out))
}

/// HPACK integer with an `n`-bit prefix whose high bits are `first`.
fn put_int(out: &mut Vec<u8>, first: u8, n: u32, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// The fields as literals without indexing, with literal names (h2's HPACK
/// table stays as it is), cut into a HEADERS frame and CONTINUATIONs.
fn encode_block(stream: u32, end_stream: u8, fields: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        put_int(&mut block, 0, 7, name.len());
        block.extend_from_slice(name);
        put_int(&mut block, 0, 7, value.len());
        block.extend_from_slice(value);
    }
    // An empty block still needs its HEADERS frame.
    let frames = block.len().div_ceil(MAX_FRAME).max(1);
    let mut out = Vec::with_capacity(block.len() + FRAME_HEADER * frames);
    for i in 0..frames {
        let chunk = &block[i * MAX_FRAME..block.len().min((i + 1) * MAX_FRAME)];
        let (kind, mut flags) = if i == 0 {
            (HEADERS, end_stream)
        } else {
            (CONTINUATION, 0)
        };
        if i + 1 == frames {
            flags |= END_HEADERS;
        }
        let len = chunk.len();
        out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
        out.extend_from_slice(&stream.to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.ready > 0 {
                let n = this.ready.min(out.remaining());
                out.put_slice(&this.buf[..n]);
                this.buf.advance(n);
                this.ready -= n;
                return Poll::Ready(Ok(()));
            }
            if let Mode::Raw = this.mode
                && this.buf.is_empty()
            {
                return Pin::new(&mut this.inner).poll_read(cx, out);
            }
            if let Some(deadline) = this.deadline.as_mut()
                && deadline.as_mut().poll(cx).is_ready()
            {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "HTTP/2 header block not complete in time",
                )));
            }
            let mut chunk = [0u8; 8192];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                // End of stream: whatever is held goes as it is.
                this.mode = Mode::Raw;
                this.skip = 0;
                this.deadline = None;
                this.ready = this.buf.len();
                if this.ready == 0 {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.buf.extend_from_slice(read.filled());
            this.process();
            if this.buf.len() == this.ready {
                this.deadline = None;
            } else if this.deadline.is_none() {
                this.deadline = Some(Box::pin(tokio::time::sleep(BLOCK_TIMEOUT)));
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for AuthorityFix<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Client bytes: the preface, then HEADERS blocks HPACK-encoded by a
    /// stateful encoder (dynamic table in use, as grpc-go's).
    fn client_bytes(authorities: &[&[u8]]) -> Vec<u8> {
        let mut enc = loona_hpack::Encoder::new();
        let mut out = PREFACE.to_vec();
        for (i, a) in authorities.iter().enumerate() {
            let block = enc.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/etcdserverpb.Maintenance/Status"),
                (b":authority", a),
                (b"content-type", b"application/grpc"),
            ]);
            let stream = (2 * i + 1) as u32;
            out.extend_from_slice(&encode_raw(stream, &block));
            // A DATA frame between blocks passes through.
            out.extend_from_slice(&[0, 0, 2, 0, 1]);
            out.extend_from_slice(&stream.to_be_bytes());
            out.extend_from_slice(b"hi");
        }
        out
    }

    /// One HEADERS frame carrying `block` as it is, padded.
    fn encode_raw(stream: u32, block: &[u8]) -> Vec<u8> {
        let len = block.len() + 1 + 3;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, HEADERS];
        f.push(END_HEADERS | PADDED);
        f.extend_from_slice(&stream.to_be_bytes());
        f.push(3);
        f.extend_from_slice(block);
        f.extend_from_slice(&[0, 0, 0]);
        f
    }

    /// What h2 would decode from the bytes `AuthorityFix` hands on, read
    /// in pieces of `step` bytes.
    async fn through(bytes: Vec<u8>, step: usize) -> (Vec<u8>, Vec<Vec<(Vec<u8>, Vec<u8>)>>) {
        use tokio::io::AsyncReadExt;
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut fix = AuthorityFix::new(server);
        let writer = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for c in bytes.chunks(step) {
                client.write_all(c).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut got = Vec::new();
        fix.read_to_end(&mut got).await.unwrap();
        writer.await.unwrap();
        assert_eq!(&got[..PREFACE.len()], PREFACE);
        let mut dec = loona_hpack::Decoder::new();
        let mut blocks = Vec::new();
        let mut pos = PREFACE.len();
        while pos < got.len() {
            let Block::Complete(end) = block_end(&got[pos..]) else {
                let (len, _, _) = frame_header(&got[pos..]).unwrap();
                pos += FRAME_HEADER + len;
                continue;
            };
            let (_, _, frag) = fragment(&got[pos..pos + end]).unwrap();
            blocks.push(dec.decode(&frag).unwrap().into_iter().collect::<Vec<_>>());
            pos += end;
        }
        (got, blocks)
    }

    #[tokio::test]
    async fn malformed_authority_is_dropped_from_every_block() {
        let bytes = client_bytes(&[
            b"#initially=[http://127.0.0.1:2379;http://127.0.0.2:2379]",
            b"http://127.0.0.1:2379",
            b"ok:1",
        ]);
        for step in [1, 7, 4096] {
            let (_, blocks) = through(bytes.clone(), step).await;
            assert_eq!(blocks.len(), 3);
            for b in &blocks[..2] {
                assert!(b.iter().all(|(n, _)| n != b":authority"), "{b:?}");
                assert!(b.contains(&(
                    b":path".to_vec(),
                    b"/etcdserverpb.Maintenance/Status".to_vec()
                )));
            }
            assert!(blocks[2].contains(&(b":authority".to_vec(), b"ok:1".to_vec())));
        }
    }

    #[tokio::test]
    async fn wellformed_connections_pass_untouched() {
        let bytes = client_bytes(&[b"127.0.0.1:2379", b"http://later-ones-are-not-read"]);
        let (got, _) = through(bytes.clone(), 5).await;
        assert_eq!(got, bytes);
        let http1 = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        let (mut client, server) = tokio::io::duplex(1024);
        let mut fix = AuthorityFix::new(server);
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        client.write_all(&http1).await.unwrap();
        drop(client);
        let mut got = Vec::new();
        fix.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, http1);
    }

    /// A header block that inserts one 4,000-byte field into the HPACK
    /// table and then names it by index `repeats` times (one byte each),
    /// after a malformed `:authority`: decoded, ~4,000 times its size.
    pub(crate) fn hpack_bomb(repeats: usize) -> Vec<u8> {
        let mut block = Vec::new();
        // :authority (static index 1), literal without indexing.
        let bad = b"http://127.0.0.1:2379";
        block.push(0x01);
        put_int(&mut block, 0, 7, bad.len());
        block.extend_from_slice(bad);
        // x-big: 4,000 bytes, literal with incremental indexing (index 62).
        block.push(0x40);
        put_int(&mut block, 0, 7, 5);
        block.extend_from_slice(b"x-big");
        put_int(&mut block, 0, 7, 4000);
        block.extend_from_slice(&[b'a'; 4000]);
        block.extend(std::iter::repeat_n(0x80 | 62, repeats));
        let mut out = PREFACE.to_vec();
        let frames = block.len().div_ceil(MAX_FRAME);
        for (i, chunk) in block.chunks(MAX_FRAME).enumerate() {
            let kind = if i == 0 { HEADERS } else { CONTINUATION };
            let flags = if i + 1 == frames { END_HEADERS } else { 0 };
            let len = chunk.len();
            out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
            out.extend_from_slice(&1u32.to_be_bytes());
            out.extend_from_slice(chunk);
        }
        out
    }

    #[tokio::test]
    async fn header_lists_over_the_limit_are_handed_over_unread() {
        // 60 KiB of block, ~240 MB decoded: within MAX_BLOCK, so decoded,
        // but nothing past MAX_HEADER_LIST is kept and the block goes to
        // h2 as it came (h2 refuses it).
        let bytes = hpack_bomb(60_000);
        assert!(bytes.len() < MAX_BLOCK);
        let mut fix = AuthorityFix::new(tokio::io::empty());
        fix.buf.extend_from_slice(&bytes);
        fix.process();
        assert!(matches!(fix.mode, Mode::Raw));
        assert!(fix.decoder.is_none());
        assert_eq!(fix.ready, bytes.len());
        assert_eq!(&fix.buf[..], &bytes[..]);
        // Larger than h2 buffers: not decoded at all.
        let bytes = hpack_bomb(1 << 20);
        let mut fix = AuthorityFix::new(tokio::io::empty());
        fix.buf
            .extend_from_slice(&bytes[..MAX_BLOCK + PREFACE.len() + 1]);
        fix.process();
        assert!(matches!(fix.mode, Mode::Raw));
        assert!(fix.decoder.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unfinished_header_block_closes_the_connection_in_time() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut fix = AuthorityFix::new(server);
        let bytes = hpack_bomb(10);
        // All but the last byte: the block stays incomplete.
        client.write_all(&bytes[..bytes.len() - 1]).await.unwrap();
        let start = tokio::time::Instant::now();
        let mut got = Vec::new();
        let err = fix.read_to_end(&mut got).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert_eq!(start.elapsed(), BLOCK_TIMEOUT);
        // A block that completes in time passes.
        let (mut client, server) = tokio::io::duplex(1 << 16);
        let mut fix = AuthorityFix::new(server);
        let good = client_bytes(&[b"127.0.0.1:2379"]);
        let (head, tail) = good.split_at(PREFACE.len() + 20);
        client.write_all(head).await.unwrap();
        let mut first = vec![0u8; PREFACE.len()];
        fix.read_exact(&mut first).await.unwrap();
        tokio::time::sleep(BLOCK_TIMEOUT / 2).await;
        client.write_all(tail).await.unwrap();
        drop(client);
        let mut rest = Vec::new();
        fix.read_to_end(&mut rest).await.unwrap();
        assert_eq!([first, rest].concat(), good);
    }

    #[test]
    fn long_blocks_are_cut_into_continuations() {
        let fields = vec![(b"x-big".to_vec(), vec![b'a'; 40_000])];
        let frames = encode_block(3, END_STREAM, &fields);
        let Block::Complete(end) = block_end(&frames) else {
            panic!("incomplete")
        };
        assert_eq!(end, frames.len());
        assert_eq!(frames[3], HEADERS);
        assert_eq!(frames[4], END_STREAM);
        let (_, _, frag) = fragment(&frames).unwrap();
        let got = loona_hpack::Decoder::new().decode(&frag).unwrap();
        assert_eq!(got, fields);
    }
}
