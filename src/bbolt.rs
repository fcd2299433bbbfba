//! The bbolt file format, as far as etcd's backend uses it: a writer that
//! lays out a fresh, compact database bottom-up (for `Maintenance.Snapshot`)
//! and a reader that walks the buckets of any database bbolt wrote (for
//! `koine import` of an etcd snapshot).
//!
//! Layout (bbolt's, little-endian): pages of `PAGE` bytes; each starts with
//! a 16-byte header (page id u64, flags u16, element count u16, overflow
//! u32: how many further pages the page spans). Pages 0 and 1 are meta pages
//! (the newer valid one wins), then a freelist page, then B+tree pages.
//! A leaf element is (flags u32, pos u32, key size u32, value size u32),
//! a branch element (pos u32, key size u32, child page u64); `pos` counts
//! from the element to its key, the value follows the key. A bucket is a
//! leaf entry with flag 1 whose value is (root page u64, sequence u64),
//! followed by the bucket's page itself when the root is 0 (an inline
//! bucket).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;

/// The page size of the files Koine writes (bbolt takes the OS page size).
pub const PAGE: usize = 4096;

const MAGIC: u32 = 0xED0C_DAED;
const VERSION: u32 = 2;
const HEADER: usize = 16;
const ELEMENT: usize = 16;
const BRANCH: u16 = 0x01;
const LEAF: u16 = 0x02;
const META: u16 = 0x04;
const FREELIST: u16 = 0x10;
const BUCKET_FLAG: u32 = 0x01;
/// Offset of the checksum in the meta struct; the checksum covers the
/// bytes before it.
const META_CHECKSUM_AT: usize = 56;

#[derive(Debug, thiserror::Error)]
pub enum BoltError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a bbolt database: {0}")]
    Format(String),
}

pub type BoltResult<T> = Result<T, BoltError>;

fn bad<T>(what: impl Into<String>) -> BoltResult<T> {
    Err(BoltError::Format(what.into()))
}

/// 64-bit FNV-1a, bbolt's meta checksum.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

fn page_header(buf: &mut [u8], id: u64, flags: u16, count: usize, overflow: usize) {
    buf[0..8].copy_from_slice(&id.to_le_bytes());
    buf[8..10].copy_from_slice(&flags.to_le_bytes());
    buf[10..12].copy_from_slice(&(count as u16).to_le_bytes());
    buf[12..16].copy_from_slice(&(overflow as u32).to_le_bytes());
}

// ---------------------------------------------------------------- writer

/// Writes a bbolt database: buckets are added one at a time, each from
/// its entries in ascending key order (`bucket`), and `finish` writes the
/// root bucket and the meta pages.
pub struct Writer {
    file: std::io::BufWriter<File>,
    next: u64,
    buckets: Vec<(Vec<u8>, u64)>,
}

/// One bucket being written: full leaves go to the file at once; only the
/// first key and page of each leaf stay in memory for the branch levels.
pub struct BucketWriter<'a> {
    w: &'a mut Writer,
    name: Vec<u8>,
    leaf: Vec<(Vec<u8>, Vec<u8>, u32)>,
    leaf_bytes: usize,
    children: Vec<(Vec<u8>, u64)>,
    last: Option<Vec<u8>>,
}

impl Writer {
    /// Starts a database in `file` (truncated).
    pub fn new(file: File) -> BoltResult<Writer> {
        file.set_len(0)?;
        let mut file = std::io::BufWriter::with_capacity(1 << 20, file);
        file.seek(SeekFrom::Start(2 * PAGE as u64))?;
        // Page 2: an empty freelist (nothing is free in a fresh layout).
        let mut page = vec![0u8; PAGE];
        page_header(&mut page, 2, FREELIST, 0, 0);
        file.write_all(&page)?;
        Ok(Writer {
            file,
            next: 3,
            buckets: Vec::new(),
        })
    }

    /// Starts a top-level bucket; its entries must come in ascending order.
    pub fn bucket(&mut self, name: &[u8]) -> BucketWriter<'_> {
        BucketWriter {
            w: self,
            name: name.to_vec(),
            leaf: Vec::new(),
            leaf_bytes: HEADER,
            children: Vec::new(),
            last: None,
        }
    }

    /// Appends one page (with overflow pages if `body` needs them) and
    /// answers its id.
    fn page(&mut self, flags: u16, count: usize, body: &[u8]) -> BoltResult<u64> {
        let id = self.next;
        let size = HEADER + body.len();
        let pages = size.div_ceil(PAGE).max(1);
        let mut buf = vec![0u8; pages * PAGE];
        page_header(&mut buf, id, flags, count, pages - 1);
        buf[HEADER..size].copy_from_slice(body);
        self.file.write_all(&buf)?;
        self.next += pages as u64;
        Ok(id)
    }

    /// Lays out entries (key, value, flags) as one leaf page.
    fn leaf(&mut self, entries: &[(Vec<u8>, Vec<u8>, u32)]) -> BoltResult<u64> {
        let mut body = vec![0u8; ELEMENT * entries.len()];
        for (i, (k, v, flags)) in entries.iter().enumerate() {
            let at = ELEMENT * i;
            let pos = body.len() - at;
            body[at..at + 4].copy_from_slice(&flags.to_le_bytes());
            body[at + 4..at + 8].copy_from_slice(&(pos as u32).to_le_bytes());
            body[at + 8..at + 12].copy_from_slice(&(k.len() as u32).to_le_bytes());
            body[at + 12..at + 16].copy_from_slice(&(v.len() as u32).to_le_bytes());
            body.extend_from_slice(k);
            body.extend_from_slice(v);
        }
        self.page(LEAF, entries.len(), &body)
    }

    /// Lays out (first key, child page) pairs as one branch page.
    fn branch(&mut self, children: &[(Vec<u8>, u64)]) -> BoltResult<u64> {
        let mut body = vec![0u8; ELEMENT * children.len()];
        for (i, (k, child)) in children.iter().enumerate() {
            let at = ELEMENT * i;
            let pos = body.len() - at;
            body[at..at + 4].copy_from_slice(&(pos as u32).to_le_bytes());
            body[at + 4..at + 8].copy_from_slice(&(k.len() as u32).to_le_bytes());
            body[at + 8..at + 16].copy_from_slice(&child.to_le_bytes());
            body.extend_from_slice(k);
        }
        self.page(BRANCH, children.len(), &body)
    }

    /// Builds branch levels over `children` until one page remains.
    fn tree(&mut self, mut children: Vec<(Vec<u8>, u64)>) -> BoltResult<u64> {
        while children.len() > 1 {
            let mut level = Vec::new();
            let mut group: Vec<(Vec<u8>, u64)> = Vec::new();
            let mut bytes = HEADER;
            for child in children {
                let add = ELEMENT + child.0.len();
                if !group.is_empty() && bytes + add > PAGE {
                    let first = group[0].0.clone();
                    level.push((first, self.branch(&group)?));
                    group.clear();
                    bytes = HEADER;
                }
                bytes += add;
                group.push(child);
            }
            let first = group[0].0.clone();
            level.push((first, self.branch(&group)?));
            children = level;
        }
        Ok(children[0].1)
    }

    /// Writes the root bucket and the two meta pages; answers the file
    /// (positioned at its end) and its length.
    pub fn finish(mut self) -> BoltResult<(File, u64)> {
        let mut buckets = std::mem::take(&mut self.buckets);
        buckets.sort();
        let entries: Vec<_> = buckets
            .iter()
            .map(|(name, root)| {
                let mut v = root.to_le_bytes().to_vec();
                v.extend_from_slice(&0u64.to_le_bytes());
                (name.clone(), v, BUCKET_FLAG)
            })
            .collect();
        let root = self.leaf(&entries)?;
        let high = self.next;
        for (id, txid) in [(0u64, 1u64), (1, 2)] {
            let mut page = vec![0u8; PAGE];
            page_header(&mut page, id, META, 0, 0);
            let m = &mut page[HEADER..HEADER + 64];
            m[0..4].copy_from_slice(&MAGIC.to_le_bytes());
            m[4..8].copy_from_slice(&VERSION.to_le_bytes());
            m[8..12].copy_from_slice(&(PAGE as u32).to_le_bytes());
            // flags (0) at 12..16; root bucket: page, sequence 0.
            m[16..24].copy_from_slice(&root.to_le_bytes());
            m[32..40].copy_from_slice(&2u64.to_le_bytes());
            m[40..48].copy_from_slice(&high.to_le_bytes());
            m[48..56].copy_from_slice(&txid.to_le_bytes());
            let sum = fnv1a64(&m[..META_CHECKSUM_AT]);
            m[56..64].copy_from_slice(&sum.to_le_bytes());
            self.file.seek(SeekFrom::Start(id * PAGE as u64))?;
            self.file.write_all(&page)?;
        }
        let mut file = self.file.into_inner().map_err(|e| e.into_error())?;
        let len = high * PAGE as u64;
        file.seek(SeekFrom::Start(len))?;
        Ok((file, len))
    }
}

impl BucketWriter<'_> {
    /// Adds an entry; keys must ascend strictly.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> BoltResult<()> {
        if self.last.as_deref().is_some_and(|last| last >= key) {
            return bad("bucket keys out of order");
        }
        self.last = Some(key.to_vec());
        let add = ELEMENT + key.len() + value.len();
        if !self.leaf.is_empty() && self.leaf_bytes + add > PAGE {
            self.flush()?;
        }
        self.leaf_bytes += add;
        self.leaf.push((key.to_vec(), value.to_vec(), 0));
        Ok(())
    }

    fn flush(&mut self) -> BoltResult<()> {
        let first = self.leaf[0].0.clone();
        let id = self.w.leaf(&self.leaf)?;
        self.children.push((first, id));
        self.leaf.clear();
        self.leaf_bytes = HEADER;
        Ok(())
    }

    /// Writes what is left of the bucket and its branch pages.
    pub fn finish(mut self) -> BoltResult<()> {
        if !self.leaf.is_empty() || self.children.is_empty() {
            self.flush_or_empty()?;
        }
        let children = std::mem::take(&mut self.children);
        let root = self.w.tree(children)?;
        let name = std::mem::take(&mut self.name);
        self.w.buckets.push((name, root));
        Ok(())
    }

    fn flush_or_empty(&mut self) -> BoltResult<()> {
        if self.leaf.is_empty() {
            let id = self.w.leaf(&[])?;
            self.children.push((Vec::new(), id));
            Ok(())
        } else {
            self.flush()
        }
    }
}

// ---------------------------------------------------------------- reader

/// Called with each (key, value) of a bucket.
pub type EntryFn<'a> = dyn FnMut(&[u8], &[u8]) -> BoltResult<()> + 'a;
/// Called with each leaf element: key, value, flags.
type ElementFn<'a> = dyn FnMut(&[u8], &[u8], u32) -> BoltResult<()> + 'a;

/// Reads a bbolt database file.
pub struct Reader {
    file: File,
    page_size: usize,
    root: u64,
    high: u64,
}

impl Reader {
    /// Opens `file`, checking the meta pages.
    pub fn open(file: File) -> BoltResult<Reader> {
        let mut first = vec![0u8; HEADER + 64];
        file.read_exact_at(&mut first, 0)?;
        // Page 0 torn: bbolt tries the usual page size for page 1.
        let page_size = meta_fields(&first[HEADER..]).map_or(PAGE, |m| m.page_size);
        let mut best: Option<MetaFields> = None;
        for id in 0..2u64 {
            let mut buf = vec![0u8; HEADER + 64];
            if file.read_exact_at(&mut buf, id * page_size as u64).is_err() {
                continue;
            }
            if let Ok(m) = meta_fields(&buf[HEADER..])
                && best.as_ref().is_none_or(|b| m.txid > b.txid)
            {
                best = Some(m);
            }
        }
        let Some(meta) = best else {
            return bad("no valid meta page");
        };
        Ok(Reader {
            file,
            page_size: meta.page_size,
            root: meta.root,
            high: meta.high,
        })
    }

    fn page(&self, id: u64) -> BoltResult<Vec<u8>> {
        if id < 2 || id >= self.high {
            return bad(format!("page {id} out of range"));
        }
        let at = id * self.page_size as u64;
        let mut buf = vec![0u8; self.page_size];
        self.file.read_exact_at(&mut buf, at)?;
        let overflow = u32_at(&buf, 12) as usize;
        if overflow > 0 {
            buf.resize(self.page_size * (overflow + 1), 0);
            self.file
                .read_exact_at(&mut buf[self.page_size..], at + self.page_size as u64)?;
        }
        if u64_at(&buf, 0) != id {
            return bad(format!("page {id} has id {}", u64_at(&buf, 0)));
        }
        Ok(buf)
    }

    /// The names of the top-level buckets.
    #[cfg(test)]
    pub fn buckets(&self) -> BoltResult<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.walk(Root::Page(self.root), &mut |k, _, flags| {
            if flags & BUCKET_FLAG != 0 {
                names.push(k.to_vec());
            }
            Ok(())
        })?;
        Ok(names)
    }

    /// Calls `f` with each entry (key, value) of the top-level bucket
    /// `name`, in key order; answers false when there is no such bucket.
    pub fn for_each(&self, name: &[u8], f: &mut EntryFn<'_>) -> BoltResult<bool> {
        let Some(page) = self.bucket_root(name)? else {
            return Ok(false);
        };
        self.walk(Root::Inline(page), &mut |k, v, flags| {
            if flags & BUCKET_FLAG == 0 {
                f(k, v)?;
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// The last key of the top-level bucket `name` (following the last
    /// child of each branch page), if it has any.
    pub fn last_key(&self, name: &[u8]) -> BoltResult<Option<Vec<u8>>> {
        let Some(mut page) = self.bucket_root(name)? else {
            return Ok(None);
        };
        loop {
            let flags = u16_at(&page, 8);
            let count = u16_at(&page, 10) as usize;
            if count == 0 {
                return Ok(None);
            }
            let at = HEADER + ELEMENT * (count - 1);
            if at + ELEMENT > page.len() {
                return bad("element past the page");
            }
            if flags & BRANCH != 0 {
                page = self.page(u64_at(&page, at + 8))?;
            } else {
                let pos = at + u32_at(&page, at + 4) as usize;
                let ksize = u32_at(&page, at + 8) as usize;
                if pos + ksize > page.len() {
                    return bad("entry past the page");
                }
                return Ok(Some(page[pos..pos + ksize].to_vec()));
            }
        }
    }

    /// The root page of a top-level bucket (inline buckets included).
    fn bucket_root(&self, name: &[u8]) -> BoltResult<Option<Vec<u8>>> {
        let mut found: Option<Vec<u8>> = None;
        self.walk(Root::Page(self.root), &mut |k, v, flags| {
            if flags & BUCKET_FLAG != 0 && k == name {
                found = Some(v.to_vec());
            }
            Ok(())
        })?;
        let Some(header) = found else {
            return Ok(None);
        };
        if header.len() < 16 {
            return bad("short bucket header");
        }
        let root = u64_at(&header, 0);
        Ok(Some(if root == 0 {
            header[16..].to_vec()
        } else {
            self.page(root)?
        }))
    }

    fn walk(&self, root: Root, f: &mut ElementFn<'_>) -> BoltResult<()> {
        let page = match root {
            Root::Page(id) => self.page(id)?,
            Root::Inline(bytes) => bytes,
        };
        if page.len() < HEADER {
            return bad("short page");
        }
        let flags = u16_at(&page, 8);
        let count = u16_at(&page, 10) as usize;
        for i in 0..count {
            let at = HEADER + ELEMENT * i;
            if at + ELEMENT > page.len() {
                return bad("element past the page");
            }
            if flags & BRANCH != 0 {
                let child = u64_at(&page, at + 8);
                self.walk(Root::Page(child), f)?;
            } else if flags & LEAF != 0 {
                let eflags = u32_at(&page, at);
                let pos = at + u32_at(&page, at + 4) as usize;
                let ksize = u32_at(&page, at + 8) as usize;
                let vsize = u32_at(&page, at + 12) as usize;
                if pos + ksize + vsize > page.len() {
                    return bad("entry past the page");
                }
                f(
                    &page[pos..pos + ksize],
                    &page[pos + ksize..pos + ksize + vsize],
                    eflags,
                )?;
            } else {
                return bad(format!("unexpected page flags {flags:#x}"));
            }
        }
        Ok(())
    }
}

enum Root {
    Page(u64),
    Inline(Vec<u8>),
}

struct MetaFields {
    page_size: usize,
    root: u64,
    high: u64,
    txid: u64,
}

fn meta_fields(m: &[u8]) -> BoltResult<MetaFields> {
    if u32_at(m, 0) != MAGIC {
        return bad("bad magic");
    }
    if u32_at(m, 4) != VERSION {
        return bad("unsupported version");
    }
    if u64_at(m, 56) != fnv1a64(&m[..META_CHECKSUM_AT]) {
        return bad("meta checksum mismatch");
    }
    let page_size = u32_at(m, 8) as usize;
    if !(1024..=65536).contains(&page_size) {
        return bad("bad page size");
    }
    Ok(MetaFields {
        page_size,
        root: u64_at(m, 16),
        high: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_buckets_read_back_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut w = Writer::new(file).unwrap();
        let mut big = w.bucket(b"key");
        let mut expect = Vec::new();
        for i in 0u32..20_000 {
            let k = format!("/registry/pods/ns/pod-{i:08}").into_bytes();
            // Every 1000th value spans overflow pages.
            let v = vec![i as u8; if i % 1000 == 0 { 9000 } else { 40 }];
            big.put(&k, &v).unwrap();
            expect.push((k, v));
        }
        assert!(big.put(b"/a", b"out of order").is_err());
        big.finish().unwrap();
        w.bucket(b"empty").finish().unwrap();
        let mut meta = w.bucket(b"meta");
        meta.put(b"consistent_index", &7u64.to_be_bytes()).unwrap();
        meta.finish().unwrap();
        let (_, len) = w.finish().unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), len);

        let r = Reader::open(File::open(&path).unwrap()).unwrap();
        assert_eq!(
            r.buckets().unwrap(),
            vec![b"empty".to_vec(), b"key".to_vec(), b"meta".to_vec()]
        );
        let mut got = Vec::new();
        assert!(
            r.for_each(b"key", &mut |k, v| {
                got.push((k.to_vec(), v.to_vec()));
                Ok(())
            })
            .unwrap()
        );
        assert_eq!(got, expect);
        assert_eq!(
            r.last_key(b"key").unwrap(),
            expect.last().map(|e| e.0.clone())
        );
        assert_eq!(r.last_key(b"empty").unwrap(), None);
        let mut n = 0;
        assert!(
            r.for_each(b"empty", &mut |_, _| {
                n += 1;
                Ok(())
            })
            .unwrap()
        );
        assert_eq!(n, 0);
        assert!(!r.for_each(b"missing", &mut |_, _| Ok(())).unwrap());
    }
}
