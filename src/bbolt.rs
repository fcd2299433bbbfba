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
    /// What is wrong with the file, and where.
    #[error("{0}")]
    Format(String),
    /// A caller's callback stopped the walk (the caller has the reason).
    #[error("stopped")]
    Stopped,
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

/// How many levels a bucket's B+tree may have. bbolt keeps at least two
/// children in each branch page, so no real tree comes near it; a crafted
/// chain of branch pages stops here.
const MAX_DEPTH: usize = 64;
/// The meta struct's bytes as the reader reads them.
const META_BYTES: usize = HEADER + 64;
/// What errors call the bucket the meta page points to.
const ROOT_BUCKET: &str = "the root bucket";

/// Reads a bbolt database file, trusting nothing in it. Before a page is
/// read, the reference to it is checked: its id and its overflow pages lie
/// inside the file, and no page is read twice in one walk of a bucket's
/// tree (a cycle or a page shared by two branches is an error), so a walk
/// reads each page of the file at most once and never allocates from a
/// count it has not checked against the file's length. Each error says
/// which page is wrong, in which bucket, and why.
pub struct Reader {
    file: File,
    page_size: usize,
    /// The pages in use (the meta page's high-water mark); `open` checked
    /// that the file holds them all.
    pages: u64,
    /// The root bucket's page.
    root: u64,
    /// Bytes read from pages so far (the tests bound it by the file size).
    #[cfg(test)]
    read: std::cell::Cell<u64>,
}

impl Reader {
    /// Opens `file`, checking the meta pages and that the file holds every
    /// page the newer valid one counts.
    pub fn open(file: File) -> BoltResult<Reader> {
        let len = file
            .metadata()
            .map_err(|e| BoltError::Format(format!("reading the file's length: {e}")))?
            .len();
        if len < META_BYTES as u64 {
            return bad(format!(
                "not a bbolt database: the file is {len} bytes, too short for a meta page"
            ));
        }
        let mut buf = [0u8; META_BYTES];
        read_exact_at(&file, &mut buf, 0, "meta page 0")?;
        // Page 0 torn: bbolt tries the usual page size for page 1.
        let page_size = meta_fields(&buf[HEADER..]).map_or(PAGE, |m| m.page_size);
        let mut best: Option<MetaFields> = None;
        let mut why = Vec::new();
        for id in 0..2u64 {
            let at = id * page_size as u64;
            if at + META_BYTES as u64 > len {
                why.push(format!("meta page {id} lies past the end of the file"));
                continue;
            }
            read_exact_at(&file, &mut buf, at, &format!("meta page {id}"))?;
            match meta_fields(&buf[HEADER..]) {
                Ok(m) => {
                    if best.as_ref().is_none_or(|b| m.txid > b.txid) {
                        best = Some(m);
                    }
                }
                Err(e) => why.push(format!("meta page {id}: {e}")),
            }
        }
        let Some(meta) = best else {
            return bad(format!(
                "not a bbolt database: no valid meta page ({})",
                why.join("; ")
            ));
        };
        let in_file = len / meta.page_size as u64;
        if meta.high > in_file {
            return bad(format!(
                "truncated: the meta page (transaction {}) counts {} pages of {} bytes, the file holds {in_file} ({len} bytes)",
                meta.txid, meta.high, meta.page_size
            ));
        }
        if meta.root < 2 || meta.root >= meta.high {
            return bad(format!(
                "the meta page (transaction {}) puts the root bucket at page {}, outside the database's {} pages",
                meta.txid, meta.root, meta.high
            ));
        }
        Ok(Reader {
            file,
            page_size: meta.page_size,
            pages: meta.high,
            root: meta.root,
            #[cfg(test)]
            read: std::cell::Cell::new(0),
        })
    }

    /// Reads page `id` (with its overflow pages) for a walk that has read
    /// the pages in `seen`; `from` is what refers to it. Every check comes
    /// before the read it guards.
    fn page(&self, id: u64, from: &Ref<'_>, seen: &mut Seen) -> BoltResult<Page> {
        if id < 2 {
            return bad(format!("{from} refers to page {id}, a meta page"));
        }
        if id >= self.pages {
            return bad(format!(
                "{from} refers to page {id}, past the end of the file ({} pages)",
                self.pages
            ));
        }
        if seen.has(id) {
            return bad(format!("{from} refers to page {id} again"));
        }
        let at = id * self.page_size as u64;
        let mut buf = vec![0u8; self.page_size];
        self.read_at(&mut buf, at, id)?;
        let bucket = from.bucket;
        let header_id = u64_at(&buf, 0);
        if header_id != id {
            return bad(format!(
                "page {id} (in {bucket}) has id {header_id} in its header"
            ));
        }
        let overflow = u64::from(u32_at(&buf, 12));
        // id < pages, so the subtraction holds; id + overflow must be a page.
        if overflow >= self.pages - id {
            return bad(format!(
                "page {id} (in {bucket}) overflow {overflow} runs past the end of the file ({} pages)",
                self.pages
            ));
        }
        if let Some(p) = (id + 1..=id + overflow).find(|p| seen.has(*p)) {
            return bad(format!(
                "page {id} (in {bucket}) overflow {overflow} covers page {p}, which {bucket} has read already"
            ));
        }
        for p in id..=id + overflow {
            seen.set(p);
        }
        if overflow > 0 {
            // Bounded: the pages are in the file and read once per walk.
            buf.resize(self.page_size * (overflow as usize + 1), 0);
            self.read_at(&mut buf[self.page_size..], at + self.page_size as u64, id)?;
        }
        Page::parse(Some(id), buf, bucket)
    }

    fn read_at(&self, buf: &mut [u8], at: u64, id: u64) -> BoltResult<()> {
        #[cfg(test)]
        self.read.set(self.read.get() + buf.len() as u64);
        read_exact_at(&self.file, buf, at, &format!("page {id}"))
    }

    /// The names of the top-level buckets.
    pub fn buckets(&self) -> BoltResult<Vec<Vec<u8>>> {
        let mut names = Vec::new();
        self.walk(Root::Page(self.root), ROOT_BUCKET, &mut |k, _, flags| {
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
        let Some(root) = self.bucket_root(name)? else {
            return Ok(false);
        };
        self.walk(root, &bucket_label(name), &mut |k, v, flags| {
            if flags & BUCKET_FLAG == 0 {
                f(k, v)?;
            }
            Ok(())
        })?;
        Ok(true)
    }

    /// Where a top-level bucket's tree starts (inline buckets included).
    fn bucket_root(&self, name: &[u8]) -> BoltResult<Option<Root>> {
        let mut found: Option<Vec<u8>> = None;
        self.walk(Root::Page(self.root), ROOT_BUCKET, &mut |k, v, flags| {
            if flags & BUCKET_FLAG != 0 && k == name {
                found = Some(v.to_vec());
            }
            Ok(())
        })?;
        let Some(header) = found else {
            return Ok(None);
        };
        if header.len() < 16 {
            return bad(format!(
                "{}'s header is {} bytes, shorter than 16",
                bucket_label(name),
                header.len()
            ));
        }
        let root = u64_at(&header, 0);
        Ok(Some(if root == 0 {
            Root::Inline(header[16..].to_vec())
        } else {
            Root::Page(root)
        }))
    }

    /// Calls `f` with each leaf element of the tree at `root`, in order,
    /// depth first without recursion; `bucket` names the tree in errors.
    fn walk(&self, root: Root, bucket: &str, f: &mut ElementFn<'_>) -> BoltResult<()> {
        let mut seen = Seen::new(self.pages);
        let first = match root {
            Root::Page(id) => self.page(
                id,
                &Ref {
                    bucket,
                    parent: None,
                },
                &mut seen,
            )?,
            Root::Inline(bytes) => Page::parse(None, bytes, bucket)?,
        };
        // The pages from the root down, each with its next element.
        let mut stack = vec![(first, 0usize)];
        let mut last: Option<Vec<u8>> = None;
        while let Some((page, next)) = stack.last_mut() {
            let i = *next;
            if i == page.count {
                stack.pop();
                continue;
            }
            *next += 1;
            if page.branch {
                let child = page.child(i, bucket)?;
                let parent = page.id;
                if stack.len() >= MAX_DEPTH {
                    return bad(format!(
                        "{} refers to page {child} more than {MAX_DEPTH} levels below the root",
                        Ref { bucket, parent }
                    ));
                }
                let page = self.page(child, &Ref { bucket, parent }, &mut seen)?;
                stack.push((page, 0));
            } else {
                let (k, v, flags) = page.entry(i, bucket)?;
                if last.as_deref().is_some_and(|prev| prev >= k) {
                    return bad(format!(
                        "{} element {i}: its key is not after the key before it",
                        page.name(bucket)
                    ));
                }
                f(k, v, flags)?;
                let l = last.get_or_insert_with(Vec::new);
                l.clear();
                l.extend_from_slice(k);
            }
        }
        Ok(())
    }

    /// Bytes read from pages since the reader was opened.
    #[cfg(test)]
    fn bytes_read(&self) -> u64 {
        self.read.get()
    }
}

fn read_exact_at(file: &File, buf: &mut [u8], at: u64, what: &str) -> BoltResult<()> {
    file.read_exact_at(buf, at).map_err(|e| {
        let end = at + buf.len() as u64;
        BoltError::Format(format!("reading {what} (bytes {at} to {end}): {e}"))
    })
}

/// `bucket "name"`, for errors.
fn bucket_label(name: &[u8]) -> String {
    format!("bucket \"{}\"", name.escape_ascii())
}

enum Root {
    Page(u64),
    Inline(Vec<u8>),
}

/// What refers to a page: the root of a bucket or a branch page of it.
struct Ref<'a> {
    bucket: &'a str,
    parent: Option<u64>,
}

impl std::fmt::Display for Ref<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.parent {
            Some(p) => write!(f, "page {p} (branch of {})", self.bucket),
            None => write!(f, "the root of {}", self.bucket),
        }
    }
}

/// The pages one walk has read: a bit per page of the database.
struct Seen(Vec<u64>);

impl Seen {
    fn new(pages: u64) -> Seen {
        Seen(vec![0; pages.div_ceil(64) as usize])
    }
    fn has(&self, id: u64) -> bool {
        self.0[(id / 64) as usize] & (1 << (id % 64)) != 0
    }
    fn set(&mut self, id: u64) {
        self.0[(id / 64) as usize] |= 1 << (id % 64);
    }
}

/// A branch or leaf page whose element array fits in its bytes.
struct Page {
    /// `None`: an inline bucket's page.
    id: Option<u64>,
    bytes: Vec<u8>,
    branch: bool,
    count: usize,
}

impl Page {
    fn parse(id: Option<u64>, bytes: Vec<u8>, bucket: &str) -> BoltResult<Page> {
        let name = page_name(id, bucket);
        if bytes.len() < HEADER {
            return bad(format!(
                "{name} is {} bytes, shorter than a page header",
                bytes.len()
            ));
        }
        let flags = u16_at(&bytes, 8);
        let branch = match flags {
            BRANCH => true,
            LEAF => false,
            _ => {
                return bad(format!(
                    "{name} has flags {flags:#x}, neither a branch nor a leaf page"
                ));
            }
        };
        let count = usize::from(u16_at(&bytes, 10));
        if HEADER + ELEMENT * count > bytes.len() {
            return bad(format!(
                "{name} has {count} elements, more than its {} bytes hold",
                bytes.len()
            ));
        }
        if branch && count == 0 {
            return bad(format!("{name} is a branch page without elements"));
        }
        if branch && id.is_none() {
            return bad(format!(
                "{name} is a branch page (an inline bucket is a single leaf)"
            ));
        }
        Ok(Page {
            id,
            bytes,
            branch,
            count,
        })
    }

    fn name(&self, bucket: &str) -> String {
        page_name(self.id, bucket)
    }

    /// A branch element's child page, its key checked to lie in the page.
    fn child(&self, i: usize, bucket: &str) -> BoltResult<u64> {
        let at = HEADER + ELEMENT * i;
        let start = at as u64 + u64::from(u32_at(&self.bytes, at));
        let ksize = u64::from(u32_at(&self.bytes, at + 4));
        if start + ksize > self.bytes.len() as u64 {
            return bad(format!(
                "{} element {i}: its key ({ksize} bytes at {start}) runs past the page's {} bytes",
                self.name(bucket),
                self.bytes.len()
            ));
        }
        Ok(u64_at(&self.bytes, at + 8))
    }

    /// A leaf element: key, value, flags.
    fn entry(&self, i: usize, bucket: &str) -> BoltResult<(&[u8], &[u8], u32)> {
        let at = HEADER + ELEMENT * i;
        let flags = u32_at(&self.bytes, at);
        let start = at as u64 + u64::from(u32_at(&self.bytes, at + 4));
        let ksize = u64::from(u32_at(&self.bytes, at + 8));
        let vsize = u64::from(u32_at(&self.bytes, at + 12));
        if start + ksize + vsize > self.bytes.len() as u64 {
            return bad(format!(
                "{} element {i}: its key and value ({ksize} and {vsize} bytes at {start}) run past the page's {} bytes",
                self.name(bucket),
                self.bytes.len()
            ));
        }
        // In range of the page, so each fits a usize.
        let (start, ksize, vsize) = (start as usize, ksize as usize, vsize as usize);
        Ok((
            &self.bytes[start..start + ksize],
            &self.bytes[start + ksize..start + ksize + vsize],
            flags,
        ))
    }
}

/// `page 9 (in bucket "key")`, or an inline bucket's page, for errors.
fn page_name(id: Option<u64>, bucket: &str) -> String {
    match id {
        Some(id) => format!("page {id} (in {bucket})"),
        None => format!("the inline page of {bucket}"),
    }
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
        return bad(format!("unsupported version {}", u32_at(m, 4)));
    }
    if u64_at(m, 56) != fnv1a64(&m[..META_CHECKSUM_AT]) {
        return bad("meta checksum mismatch");
    }
    let page_size = u32_at(m, 8) as usize;
    if !(1024..=65536).contains(&page_size) {
        return bad(format!("bad page size {page_size}"));
    }
    Ok(MetaFields {
        page_size,
        root: u64_at(m, 16),
        high: u64_at(m, 40),
        txid: u64_at(m, 48),
    })
}

/// Byte surgery on databases the writer made, for the tests of crafted
/// files here and in `snapshot.rs`.
#[cfg(test)]
pub(crate) mod craft {
    use super::*;

    pub fn put_u16(b: &mut [u8], at: usize, v: u16) {
        b[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u32(b: &mut [u8], at: usize, v: u32) {
        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
    pub fn put_u64(b: &mut [u8], at: usize, v: u64) {
        b[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    /// The pages of a database the writer made (no trailer).
    pub fn pages(b: &[u8]) -> u64 {
        (b.len() / PAGE) as u64
    }

    /// Where page `id` starts.
    pub fn page_at(id: u64) -> usize {
        id as usize * PAGE
    }

    /// Where element `i` of page `id` starts.
    pub fn element(id: u64, i: usize) -> usize {
        page_at(id) + HEADER + ELEMENT * i
    }

    pub fn count(b: &[u8], id: u64) -> usize {
        usize::from(u16_at(b, page_at(id) + 10))
    }

    pub fn is_branch(b: &[u8], id: u64) -> bool {
        u16_at(b, page_at(id) + 8) == BRANCH
    }

    pub fn set_overflow(b: &mut [u8], id: u64, overflow: u32) {
        put_u32(b, page_at(id) + 12, overflow);
    }

    /// Child `i` of branch page `id`.
    pub fn child(b: &[u8], id: u64, i: usize) -> u64 {
        u64_at(b, element(id, i) + 8)
    }

    pub fn set_child(b: &mut [u8], id: u64, i: usize, child: u64) {
        put_u64(b, element(id, i) + 8, child);
    }

    /// The offset of the bucket header (root page, sequence) of top-level
    /// bucket `name` in the root bucket's leaf.
    pub fn bucket_header(b: &[u8], name: &[u8]) -> usize {
        let root = u64_at(b, PAGE + HEADER + 16);
        for i in 0..count(b, root) {
            let at = element(root, i);
            let pos = at + u32_at(b, at + 4) as usize;
            let ksize = u32_at(b, at + 8) as usize;
            if &b[pos..pos + ksize] == name {
                return pos + ksize;
            }
        }
        panic!("no bucket {}", name.escape_ascii());
    }

    /// The root page of top-level bucket `name`.
    pub fn bucket_root(b: &[u8], name: &[u8]) -> u64 {
        u64_at(b, bucket_header(b, name))
    }

    pub fn set_bucket_root(b: &mut [u8], name: &[u8], page: u64) {
        let at = bucket_header(b, name);
        put_u64(b, at, page);
    }

    /// Runs `f` on another thread and waits at most 20 s for it, so that
    /// a reader that loops fails the test instead of hanging it.
    pub fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(std::time::Duration::from_secs(20))
            .expect("the reader has not answered in 20 s")
    }

    /// Where the value of leaf element `i` of page `id` starts.
    pub fn value_at(b: &[u8], id: u64, i: usize) -> usize {
        let at = element(id, i);
        at + u32_at(b, at + 4) as usize + u32_at(b, at + 8) as usize
    }

    /// Recomputes both meta pages' checksums.
    pub fn fix_meta(b: &mut [u8]) {
        for id in 0..2 {
            let at = page_at(id) + HEADER;
            let sum = fnv1a64(&b[at..at + META_CHECKSUM_AT]);
            put_u64(b, at + META_CHECKSUM_AT, sum);
        }
    }

    /// Sets both meta pages' high-water mark.
    pub fn set_high(b: &mut [u8], high: u64) {
        for id in 0..2 {
            put_u64(b, page_at(id) + HEADER + 40, high);
        }
        fix_meta(b);
    }

    /// Appends a branch page (empty keys) over `children`; answers its id.
    pub fn append_branch(b: &mut Vec<u8>, children: &[u64]) -> u64 {
        let id = pages(b);
        let mut page = vec![0u8; PAGE];
        page_header(&mut page, id, BRANCH, children.len(), 0);
        for (i, c) in children.iter().enumerate() {
            let at = HEADER + ELEMENT * i;
            let pos = (children.len() - i) * ELEMENT;
            page[at..at + 4].copy_from_slice(&(pos as u32).to_le_bytes());
            page[at + 8..at + 16].copy_from_slice(&c.to_le_bytes());
        }
        b.extend_from_slice(&page);
        set_high(b, id + 1);
        id
    }

    /// Makes bucket `name`'s root a DAG three levels deep: each level a
    /// branch page whose 255 elements all refer to the page below, the
    /// bucket's old root at the bottom, which a walk that does not see
    /// the sharing reaches 255^3 times. Answers the lowest new page and
    /// the old root: a depth-first walk sees the sharing there first.
    pub fn dag(b: &mut Vec<u8>, name: &[u8]) -> (u64, u64) {
        let old = bucket_root(b, name);
        let lowest = append_branch(b, &[old; 255]);
        let mut below = lowest;
        for _ in 0..2 {
            below = append_branch(b, &[below; 255]);
        }
        set_bucket_root(b, name, below);
        (lowest, old)
    }
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

    use super::craft::*;
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};

    /// A database of three buckets: "key", `entries` entries (about 53 a
    /// leaf, under one branch page from 2 leaves on), "lease" and "meta",
    /// a few entries each. Answers its bytes.
    fn sample(path: &Path, entries: u32) -> Vec<u8> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        let mut w = Writer::new(file).unwrap();
        let mut b = w.bucket(b"key");
        for i in 0..entries {
            b.put(format!("/registry/{i:010}").as_bytes(), &[i as u8; 40])
                .unwrap();
        }
        b.finish().unwrap();
        let mut b = w.bucket(b"lease");
        for i in 0u64..5 {
            b.put(&i.to_be_bytes(), b"lease").unwrap();
        }
        b.finish().unwrap();
        let mut b = w.bucket(b"meta");
        b.put(b"consistent_index", &9u64.to_be_bytes()).unwrap();
        b.finish().unwrap();
        w.finish().unwrap();
        std::fs::read(path).unwrap()
    }

    /// The sample with 4000 keys (76 leaves), its "key" bucket's branch
    /// root and the leaves under it.
    fn key_tree(dir: &Path) -> (Vec<u8>, u64, Vec<u64>) {
        let bytes = sample(&dir.join("sample"), 4000);
        let root = bucket_root(&bytes, b"key");
        assert!(is_branch(&bytes, root));
        let leaves = (0..count(&bytes, root))
            .map(|i| child(&bytes, root, i))
            .collect::<Vec<_>>();
        assert!(leaves.len() > 70, "{}", leaves.len());
        (bytes, root, leaves)
    }

    /// Reads every bucket of the file at `path`: the entries read and the
    /// bytes the reader read, or the error's text.
    fn read_all(path: &Path) -> Result<(u64, u64), String> {
        let text = |e: BoltError| e.to_string();
        let r = Reader::open(File::open(path).unwrap()).map_err(text)?;
        let mut n = 0;
        for name in r.buckets().map_err(text)? {
            r.for_each(&name, &mut |_, _| {
                n += 1;
                Ok(())
            })
            .map_err(text)?;
        }
        Ok((n, r.bytes_read()))
    }

    /// Writes `bytes` to a file and checks that reading it fails within
    /// 2 s with an error saying `needle`.
    fn assert_fails(bytes: &[u8], needle: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path: PathBuf = dir.path().join("crafted");
        std::fs::write(&path, bytes).unwrap();
        let started = Instant::now();
        let got = bounded(move || read_all(&path));
        let took = started.elapsed();
        let err = got.expect_err("the crafted file read as valid");
        assert!(err.contains(needle), "{err:?} does not say {needle:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    }

    #[test]
    fn sample_reads_each_page_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sample");
        let bytes = sample(&path, 4000);
        let (n, read) = read_all(&path).unwrap();
        assert_eq!(n, 4000 + 5 + 1);
        // A walk of the root bucket before each bucket's walk, and one
        // to list them.
        assert!(read <= 4 * PAGE as u64 + bytes.len() as u64, "{read}");
    }

    #[test]
    fn branch_whose_first_child_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, root, _) = key_tree(dir.path());
        set_child(&mut b, root, 0, root);
        assert_fails(
            &b,
            &format!("page {root} (branch of bucket \"key\") refers to page {root} again"),
        );
    }

    #[test]
    fn branch_whose_last_child_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, root, leaves) = key_tree(dir.path());
        set_child(&mut b, root, leaves.len() - 1, root);
        assert_fails(
            &b,
            &format!("page {root} (branch of bucket \"key\") refers to page {root} again"),
        );
    }

    #[test]
    fn branch_whose_children_are_one_page() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, root, leaves) = key_tree(dir.path());
        for i in 1..leaves.len() {
            set_child(&mut b, root, i, leaves[0]);
        }
        assert_fails(
            &b,
            &format!(
                "page {root} (branch of bucket \"key\") refers to page {} again",
                leaves[0]
            ),
        );
    }

    #[test]
    fn dag_of_branch_pages_each_referred_to_255_times() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _, _) = key_tree(dir.path());
        let (lowest, old) = dag(&mut b, b"key");
        assert_fails(
            &b,
            &format!("page {lowest} (branch of bucket \"key\") refers to page {old} again"),
        );
    }

    #[test]
    fn huge_overflow() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _, leaves) = key_tree(dir.path());
        set_overflow(&mut b, leaves[0], u32::MAX);
        assert_fails(
            &b,
            &format!(
                "page {} (in bucket \"key\") overflow 4294967295 runs past the end of the file ({} pages)",
                leaves[0],
                pages(&b)
            ),
        );
    }

    #[test]
    fn overflow_one_page_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _, _) = key_tree(dir.path());
        // The lease bucket is one leaf; the pages after it are other
        // buckets', which its walk does not read.
        let leaf = bucket_root(&b, b"lease");
        assert!(!is_branch(&b, leaf));
        let overflow = pages(&b) - leaf;
        set_overflow(&mut b, leaf, overflow as u32);
        assert_fails(
            &b,
            &format!(
                "page {leaf} (in bucket \"lease\") overflow {overflow} runs past the end of the file ({} pages)",
                pages(&b)
            ),
        );
        // One page less ends at the last page: it reads.
        set_overflow(&mut b, leaf, overflow as u32 - 1);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        std::fs::write(&path, &b).unwrap();
        read_all(&path).unwrap();
    }

    #[test]
    fn overflow_over_pages_the_tree_uses() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, root, leaves) = key_tree(dir.path());
        // Forward: the next leaf is then read a second time.
        let mut forward = b.clone();
        set_overflow(&mut forward, leaves[0], 1);
        assert_fails(
            &forward,
            &format!(
                "page {root} (branch of bucket \"key\") refers to page {} again",
                leaves[1]
            ),
        );
        // Backward: the second leaf read covers the first.
        set_child(&mut b, root, 0, leaves[1]);
        set_child(&mut b, root, 1, leaves[0]);
        set_overflow(&mut b, leaves[0], 1);
        assert_fails(
            &b,
            &format!(
                "page {} (in bucket \"key\") overflow 1 covers page {}, which bucket \"key\" has read already",
                leaves[0], leaves[1]
            ),
        );
    }

    #[test]
    fn page_ids_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let (b, root, _) = key_tree(dir.path());
        let n = pages(&b);
        let mut c = b.clone();
        set_child(&mut c, root, 3, 1_000_000);
        assert_fails(
            &c,
            &format!(
                "page {root} (branch of bucket \"key\") refers to page 1000000, past the end of the file ({n} pages)"
            ),
        );
        let mut c = b.clone();
        set_child(&mut c, root, 3, n);
        assert_fails(
            &c,
            &format!("refers to page {n}, past the end of the file ({n} pages)"),
        );
        let mut c = b.clone();
        set_child(&mut c, root, 3, 1);
        assert_fails(
            &c,
            &format!("page {root} (branch of bucket \"key\") refers to page 1, a meta page"),
        );
        let mut c = b.clone();
        set_child(&mut c, root, 3, 2);
        assert_fails(
            &c,
            "page 2 (in bucket \"key\") has flags 0x10, neither a branch nor a leaf page",
        );
        let mut c = b.clone();
        set_bucket_root(&mut c, b"key", n + 5);
        assert_fails(
            &c,
            &format!(
                "the root of bucket \"key\" refers to page {}, past the end of the file ({n} pages)",
                n + 5
            ),
        );
        let mut c = b.clone();
        put_u64(&mut c, PAGE + HEADER + 16, n);
        put_u64(&mut c, HEADER + 16, n);
        fix_meta(&mut c);
        assert_fails(
            &c,
            &format!(
                "the meta page (transaction 2) puts the root bucket at page {n}, outside the database's {n} pages"
            ),
        );
    }

    #[test]
    fn truncated_file() {
        let dir = tempfile::tempdir().unwrap();
        let (b, _, _) = key_tree(dir.path());
        assert_fails(
            &b[..10 * PAGE],
            &format!(
                "truncated: the meta page (transaction 2) counts {} pages of 4096 bytes, the file holds 10 (40960 bytes)",
                pages(&b)
            ),
        );
        assert_fails(
            &b[..b.len() - 1],
            &format!("the file holds {} (", pages(&b) - 1),
        );
        assert_fails(&b[..50], "the file is 50 bytes, too short for a meta page");
        assert_fails(
            &b[..PAGE + 40],
            &format!(
                "truncated: the meta page (transaction 1) counts {} pages of 4096 bytes, the file holds 1 (4136 bytes)",
                pages(&b)
            ),
        );
    }

    #[test]
    fn branch_chain_deeper_than_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let (mut b, _, leaves) = key_tree(dir.path());
        // Leaves 0..70 become branch pages, each over the next.
        for w in leaves[..71].windows(2) {
            let at = page_at(w[0]);
            put_u16(&mut b, at + 8, BRANCH);
            put_u16(&mut b, at + 10, 1);
            put_u32(&mut b, at + HEADER, ELEMENT as u32);
            put_u32(&mut b, at + HEADER + 4, 0);
            put_u64(&mut b, at + HEADER + 8, w[1]);
        }
        assert_fails(&b, "more than 64 levels below the root");
    }

    #[test]
    fn elements_past_the_page() {
        let dir = tempfile::tempdir().unwrap();
        let (b, root, leaves) = key_tree(dir.path());
        let leaf = leaves[5];
        let mut c = b.clone();
        put_u16(&mut c, page_at(leaf) + 10, u16::MAX);
        assert_fails(
            &c,
            &format!(
                "page {leaf} (in bucket \"key\") has 65535 elements, more than its 4096 bytes hold"
            ),
        );
        let mut c = b.clone();
        put_u32(&mut c, element(leaf, 2) + 12, u32::MAX);
        assert_fails(
            &c,
            &format!(
                "page {leaf} (in bucket \"key\") element 2: its key and value (20 and 4294967295 bytes at "
            ),
        );
        let mut c = b.clone();
        put_u32(&mut c, element(root, 2), u32::MAX);
        assert_fails(
            &c,
            &format!("page {root} (in bucket \"key\") element 2: its key (20 bytes at "),
        );
        let mut c = b.clone();
        put_u64(&mut c, page_at(leaf), 7);
        assert_fails(
            &c,
            &format!("page {leaf} (in bucket \"key\") has id 7 in its header"),
        );
        // Two leaves swapped: the keys go back.
        let mut c = b.clone();
        set_child(&mut c, root, 1, leaves[2]);
        set_child(&mut c, root, 2, leaves[1]);
        assert_fails(
            &c,
            &format!(
                "page {} (in bucket \"key\") element 0: its key is not after the key before it",
                leaves[1]
            ),
        );
    }

    /// Fuzzing without a fuzzer (CI runs stable `cargo test`; `fuzz/` has
    /// the cargo-fuzz target): thousands of seeded mutations of a small
    /// valid file, aimed at the fields the reader trusts least (page ids,
    /// flags, counts, overflow, element offsets and sizes, child ids,
    /// meta fields with their checksum recomputed, the length), each read
    /// whole. None may panic, take more than a second, or read more than
    /// the file's bytes per walk.
    #[test]
    fn mutated_files_read_or_fail_quickly() {
        use rand::{RngExt, SeedableRng};
        let dir = tempfile::tempdir().unwrap();
        let good = sample(&dir.path().join("good"), 600);
        let path = dir.path().join("mutated");
        let done = bounded(move || {
            let mut rng = rand::rngs::SmallRng::seed_from_u64(0x6b6f_696e_6562_6f6c);
            let n = pages(&good);
            // Where the buckets' roots are, found before any mutation.
            let headers: Vec<usize> = [&b"key"[..], b"lease", b"meta"]
                .iter()
                .map(|name| bucket_header(&good, name))
                .collect();
            let (mut ok, mut failed) = (0, 0);
            for round in 0..4000 {
                let mut b = good.clone();
                for _ in 0..rng.random_range(1..=3) {
                    mutate(&mut b, n, &headers, &mut rng);
                }
                if rng.random_bool(0.05) {
                    let len = rng.random_range(0..b.len());
                    b.truncate(len);
                }
                std::fs::write(&path, &b).unwrap();
                let started = Instant::now();
                let got = std::panic::catch_unwind(|| read_all(&path));
                let took = started.elapsed();
                let got = got.unwrap_or_else(|_| panic!("round {round}: the reader panicked"));
                assert!(took < Duration::from_secs(1), "round {round}: {took:?}");
                match got {
                    Ok((_, read)) => {
                        // At most four walks (see sample_reads_each_page_once).
                        assert!(read <= 4 * b.len() as u64, "round {round}: read {read}");
                        ok += 1;
                    }
                    Err(e) => {
                        assert!(!e.is_empty());
                        failed += 1;
                    }
                }
            }
            (ok, failed)
        });
        // Most mutations break the file; some land where nothing reads.
        assert!(done.1 > 2000 && done.0 > 0, "{done:?}");
    }

    /// One mutation of a database of `n` pages (its length unchanged),
    /// whose buckets' headers are at `headers`.
    fn mutate(b: &mut [u8], n: u64, headers: &[usize], rng: &mut rand::rngs::SmallRng) {
        use rand::RngExt;
        let id = rng.random_range(0..n);
        let page = page_at(id);
        let count = count(b, id).max(1);
        // Page ids near the file's bounds, and any.
        let some_page = |rng: &mut rand::rngs::SmallRng| match rng.random_range(0..6) {
            0 => id,
            1 => rng.random_range(0..n + 2),
            2 => n,
            3 => rng.random_range(0..3),
            4 => u64::MAX - rng.random_range(0..2),
            _ => rng.random(),
        };
        let some_u32 = |rng: &mut rand::rngs::SmallRng| match rng.random_range(0..5) {
            0 => rng.random_range(0..64),
            1 => rng.random_range(0..PAGE as u32 * 2),
            2 => u32::MAX - rng.random_range(0..2),
            3 => 1 << rng.random_range(0..32),
            _ => rng.random(),
        };
        match rng.random_range(0..12) {
            0 => {
                let v = some_page(rng);
                put_u64(b, page, v)
            }
            1 => {
                let v = [0, BRANCH, LEAF, META, FREELIST, rng.random()][rng.random_range(0..6)];
                put_u16(b, page + 8, v)
            }
            2 => {
                let v =
                    [0, 1, count as u16 + 1, 255, u16::MAX, rng.random()][rng.random_range(0..6)];
                put_u16(b, page + 10, v)
            }
            3 => {
                let v = match rng.random_range(0..4) {
                    0 => rng.random_range(0..4),
                    1 => (n - id) as u32 - rng.random_range(0..2),
                    2 => 1 << 18,
                    _ => some_u32(rng),
                };
                put_u32(b, page + 12, v)
            }
            4 | 5 => {
                // An element field: pos, sizes or flags; a branch's child.
                let at = element(id, rng.random_range(0..count));
                if rng.random_bool(0.4) {
                    let v = some_page(rng);
                    put_u64(b, at + 8, v)
                } else {
                    let v = some_u32(rng);
                    put_u32(b, at + 4 * rng.random_range(0..4), v)
                }
            }
            6 => {
                // A bucket's root, in the root bucket's leaf.
                let at = headers[rng.random_range(0..headers.len())];
                let v = if rng.random_bool(0.3) {
                    0
                } else {
                    some_page(rng)
                };
                put_u64(b, at, v)
            }
            7 => {
                // A meta field (root, freelist, high-water mark, txid,
                // page size), the checksum made right.
                let m = page_at(rng.random_range(0..2)) + HEADER;
                match rng.random_range(0..4) {
                    0 => {
                        let v = some_page(rng);
                        put_u64(b, m + 16, v)
                    }
                    1 => {
                        let v = some_page(rng);
                        put_u64(b, m + 40, v)
                    }
                    2 => {
                        let v = rng.random_range(0..4);
                        put_u64(b, m + 48, v)
                    }
                    _ => {
                        let v =
                            [512, 1024, 2048, 8192, 65536, some_u32(rng)][rng.random_range(0..6)];
                        put_u32(b, m + 8, v)
                    }
                }
                fix_meta(b)
            }
            8 => {
                // One page copied over another: shared pages, cycles.
                let from = page_at(rng.random_range(2..n));
                let page_bytes = b[from..from + PAGE].to_vec();
                b[page..page + PAGE].copy_from_slice(&page_bytes);
                if rng.random_bool(0.5) {
                    put_u64(b, page, id);
                }
            }
            _ => {
                let at = rng.random_range(0..b.len());
                b[at] ^= 1 << rng.random_range(0..8)
            }
        }
    }
}
