//! etcd's backend file: what `Maintenance.Snapshot` streams (a bbolt
//! database in etcd's schema, then the SHA-256 of it) and what `koine
//! import` reads from an etcd snapshot.
//!
//! etcd's schema, as far as the history goes: bucket `key` maps a revision
//! (8-byte big-endian main revision, `_`, 8-byte sub revision, and a `t`
//! after it for a deletion) to an `mvccpb.KeyValue` (only the key for a
//! deletion); after a compaction to C it holds, at or below C, only the
//! newest version of each key that is not deleted — exactly the rows
//! [`crate::sql::DbTx::hash_page`] answers. Bucket `lease` maps the lease
//! id (8 bytes big-endian) to a `leasepb.Lease`; bucket `meta` holds the
//! consistent index and term (8 bytes big-endian each), the finished and
//! scheduled compactions (a revision key) and the storage version; buckets
//! `auth`, `authUsers` and `authRoles` the auth store.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail};

use bytes::Bytes;
use prost::Message;
use sha2::Digest;

use crate::bbolt;
use crate::error::{Error, Result};
use crate::proto::{authpb, mvccpb};
use crate::sql::Db;
use crate::types::Revision;

pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_META: &[u8] = b"meta";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_USERS: &[u8] = b"authUsers";
pub const BUCKET_ROLES: &[u8] = b"authRoles";
/// Buckets etcd creates at start; the snapshot has them all, empty where
/// Koine has nothing to say (membership is rewritten by a restore).
const EMPTY_BUCKETS: &[&[u8]] = &[b"alarm", b"cluster", b"members", b"members_removed"];

pub const FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
const CONSISTENT_INDEX: &[u8] = b"consistent_index";
const TERM: &[u8] = b"term";
const STORAGE_VERSION: &[u8] = b"storageVersion";
const AUTH_ENABLED: &[u8] = b"authEnabled";
const AUTH_REVISION: &[u8] = b"authRevision";
/// The storage schema the snapshot is written in (etcd 3.6's).
pub const SCHEMA_VERSION: &str = "3.6.0";
const SCHEMA: &[u8] = SCHEMA_VERSION.as_bytes();

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeasePb {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A revision key: main and sub revision, `t` for a deletion.
pub fn rev_key(revision: Revision, sub: i64, deleted: bool) -> Vec<u8> {
    let mut k = Vec::with_capacity(18);
    k.extend_from_slice(&revision.to_be_bytes());
    k.push(b'_');
    k.extend_from_slice(&sub.to_be_bytes());
    if deleted {
        k.push(b't');
    }
    k
}

/// Parses a revision key: (main, sub, deleted).
pub fn parse_rev_key(k: &[u8]) -> Option<(Revision, i64, bool)> {
    if !(k.len() == 17 || k.len() == 18 && k[17] == b't') || k[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(k[0..8].try_into().ok()?);
    let sub = i64::from_be_bytes(k[9..17].try_into().ok()?);
    Some((main, sub, k.len() == 18))
}

/// What a written snapshot holds.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub revision: Revision,
    pub rows: u64,
    /// The bbolt file's length (the checksum comes after it).
    pub len: u64,
}

/// Writes the store, in one read snapshot, as an etcd backend into `file`
/// (which must be readable and writable); the file is left positioned at
/// its end, without the checksum.
pub async fn write(db: &Db, file: File) -> Result<(File, Written)> {
    let io = |e: bbolt::BoltError| Error::Internal(format!("writing the snapshot: {e}"));
    let mut tx = db.begin_read().await?;
    let meta = tx.read_meta().await?;
    if tx.compacted_to().await? < meta.compact_revision {
        return Err(Error::Internal(crate::mvcc::NOT_COMPACTED.into()));
    }
    let mut w = bbolt::Writer::new(file).map_err(io)?;
    let mut rows = 0u64;
    {
        let mut keys = w.bucket(BUCKET_KEY);
        let mut pages = crate::sql::HistoryPager::new(meta.revision);
        loop {
            let page = pages.next(&mut tx).await?;
            if page.is_empty() {
                break;
            }
            for r in &page {
                let kv = if r.deleted {
                    mvccpb::KeyValue {
                        key: r.key.clone(),
                        ..Default::default()
                    }
                } else {
                    mvccpb::KeyValue {
                        key: r.key.clone(),
                        create_revision: r.create_revision,
                        mod_revision: r.revision,
                        version: r.version,
                        value: r.value.clone(),
                        lease: r.lease,
                    }
                };
                keys.put(&rev_key(r.revision, r.sub, r.deleted), &kv.encode_to_vec())
                    .map_err(io)?;
                rows += 1;
            }
        }
        keys.finish().map_err(io)?;
    }
    let leases = tx.lease_list().await?;
    let auth = tx.auth().await?;
    tx.commit().await?;

    let mut b = w.bucket(BUCKET_LEASE);
    for l in &leases {
        let v = LeasePb {
            id: l.id,
            ttl: l.ttl,
            remaining_ttl: 0,
        };
        b.put(&(l.id as u64).to_be_bytes(), &v.encode_to_vec())
            .map_err(io)?;
    }
    b.finish().map_err(io)?;

    let mut b = w.bucket(BUCKET_META);
    let mut entries: Vec<(&[u8], Vec<u8>)> = vec![
        (
            CONSISTENT_INDEX,
            (meta.revision as u64).to_be_bytes().to_vec(),
        ),
        (STORAGE_VERSION, SCHEMA.to_vec()),
        (TERM, 1u64.to_be_bytes().to_vec()),
    ];
    if meta.compact_revision > 0 {
        let at = rev_key(meta.compact_revision, 0, false);
        entries.push((FINISHED_COMPACT, at.clone()));
        entries.push((SCHEDULED_COMPACT, at));
    }
    entries.sort();
    for (k, v) in entries {
        b.put(k, &v).map_err(io)?;
    }
    b.finish().map_err(io)?;

    let state = crate::auth::AuthSnapshot::decode(auth.state.as_ref())
        .map_err(|e| Error::Internal(format!("auth state: {e}")))?;
    let mut b = w.bucket(BUCKET_AUTH);
    b.put(AUTH_ENABLED, &[u8::from(auth.enabled)]).map_err(io)?;
    b.put(AUTH_REVISION, &(auth.revision as u64).to_be_bytes())
        .map_err(io)?;
    b.finish().map_err(io)?;
    let mut roles = state.roles.clone();
    roles.sort_by(|a, b| a.name.cmp(&b.name));
    let mut b = w.bucket(BUCKET_ROLES);
    for r in &roles {
        b.put(&r.name, &r.encode_to_vec()).map_err(io)?;
    }
    b.finish().map_err(io)?;
    let mut users = state.users.clone();
    users.sort_by(|a, b| a.name.cmp(&b.name));
    let mut b = w.bucket(BUCKET_USERS);
    for u in &users {
        b.put(&u.name, &u.encode_to_vec()).map_err(io)?;
    }
    b.finish().map_err(io)?;
    for name in EMPTY_BUCKETS {
        w.bucket(name).finish().map_err(io)?;
    }
    let (file, len) = w.finish().map_err(io)?;
    Ok((
        file,
        Written {
            revision: meta.revision,
            rows,
            len,
        },
    ))
}

/// Reads chunks of a written snapshot from the start, then its SHA-256.
pub struct Chunks {
    file: File,
    left: u64,
    sha: Option<sha2::Sha256>,
}

impl Chunks {
    pub fn new(mut file: File, len: u64) -> std::io::Result<Chunks> {
        file.seek(SeekFrom::Start(0))?;
        Ok(Chunks {
            file,
            left: len,
            sha: Some(sha2::Sha256::new()),
        })
    }

    /// The next chunk (at most `max` bytes) and the bytes left after it;
    /// the checksum comes last, then `None`.
    pub fn next_chunk(&mut self, max: usize) -> std::io::Result<Option<(Vec<u8>, u64)>> {
        if self.left == 0 {
            return Ok(self.sha.take().map(|sha| (sha.finalize().to_vec(), 0)));
        }
        let n = (max as u64).min(self.left) as usize;
        let mut buf = vec![0u8; n];
        self.file.read_exact(&mut buf)?;
        self.left -= n as u64;
        if let Some(sha) = self.sha.as_mut() {
            sha.update(&buf);
        }
        // etcd counts the checksum among the remaining bytes.
        Ok(Some((buf, self.left + 32)))
    }
}

/// An etcd snapshot file opened for reading: the bbolt database, its
/// trailing SHA-256 checked when there is one. Every error names the
/// file, and those of the database's structure the page and bucket.
pub struct EtcdSnapshot {
    path: PathBuf,
    reader: bbolt::Reader,
}

/// What [`EtcdSnapshot::verify`] found in a snapshot: all an import needs
/// besides the key bucket's rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Contents {
    /// The compaction etcd finishes when it starts on the file (the
    /// scheduled one, if newer than the finished one); 0: none.
    pub compact: Revision,
    /// The newest revision of the key bucket; 0: it is empty.
    pub last: Revision,
    /// The key bucket's entries.
    pub rows: u64,
    /// The leases: (id, ttl).
    pub leases: Vec<(i64, i64)>,
    pub auth_enabled: bool,
    pub auth_revision: i64,
    pub auth: crate::auth::AuthSnapshot,
}

/// The bucket names the checks below decode; `verify` walks the others'
/// pages only.
const DECODED: &[&[u8]] = &[
    BUCKET_KEY,
    BUCKET_LEASE,
    BUCKET_META,
    BUCKET_AUTH,
    BUCKET_USERS,
    BUCKET_ROLES,
];

impl EtcdSnapshot {
    /// Opens the file at `path`: its SHA-256 (unless `skip_hash_check`)
    /// and its bbolt meta pages.
    pub fn open(path: &Path, skip_hash_check: bool) -> anyhow::Result<EtcdSnapshot> {
        let fail = |what: String| anyhow!("snapshot {}: {what}", path.display());
        let mut file = File::open(path).map_err(|e| fail(format!("cannot open it: {e}")))?;
        let len = file
            .metadata()
            .map_err(|e| fail(format!("reading its length: {e}")))?
            .len();
        // etcd's rule: a snapshot whose length is 32 bytes past a multiple
        // of 512 carries a SHA-256 of what precedes it.
        if len % 512 == 32 {
            if !skip_hash_check {
                let mut sha = sha2::Sha256::new();
                let mut at = 0;
                let mut buf = vec![0u8; 1 << 20];
                while at < len - 32 {
                    let n = (buf.len() as u64).min(len - 32 - at) as usize;
                    file.read_exact(&mut buf[..n]).map_err(|e| {
                        fail(format!("reading bytes {at} to {}: {e}", at + n as u64))
                    })?;
                    sha.update(&buf[..n]);
                    at += n as u64;
                }
                let mut want = [0u8; 32];
                file.read_exact(&mut want)
                    .map_err(|e| fail(format!("reading its SHA-256: {e}")))?;
                if sha.finalize()[..] != want[..] {
                    return Err(fail(
                        "its SHA-256 does not match its content (a damaged file; --skip-hash-check reads it anyway)".into(),
                    ));
                }
            }
        } else if !skip_hash_check {
            return Err(fail(format!(
                "it has no SHA-256 ({len} bytes: a copied db file rather than `etcdctl snapshot save`?); --skip-hash-check reads it anyway"
            )));
        }
        let reader = bbolt::Reader::open(file).map_err(|e| fail(e.to_string()))?;
        Ok(EtcdSnapshot {
            path: path.to_path_buf(),
            reader,
        })
    }

    /// `what` as an error about this file.
    fn fail(&self, what: impl std::fmt::Display) -> anyhow::Error {
        anyhow!("snapshot {}: {what}", self.path.display())
    }

    /// Reads the whole file: the pages of every bucket, and the entries of
    /// the buckets an import takes (key, lease, meta, auth) decoded, the
    /// key bucket's revisions checked to ascend. A file that passes can be
    /// imported without surprises from the file; `koine import` calls it
    /// before it touches the target.
    pub fn verify(&self) -> anyhow::Result<Contents> {
        for name in self.reader.buckets().map_err(|e| self.fail(e))? {
            if !DECODED.contains(&name.as_slice()) {
                self.reader
                    .for_each(&name, &mut |_, _| Ok(()))
                    .map_err(|e| self.fail(e))?;
            }
        }
        // etcd finishes a scheduled compaction when it starts.
        let compact = self
            .meta_revision(SCHEDULED_COMPACT)?
            .max(self.meta_revision(FINISHED_COMPACT)?)
            .unwrap_or(0);
        let (mut rows, mut last) = (0, 0);
        self.for_each_row(|row| {
            rows += 1;
            last = row.revision;
            Ok(())
        })?;
        let leases = self.leases()?;
        let (auth_enabled, auth_revision, auth) = self.auth()?;
        Ok(Contents {
            compact,
            last,
            rows,
            leases,
            auth_enabled,
            auth_revision,
            auth,
        })
    }

    /// Calls `f` with each entry of `bucket`; an error `f` answers stops
    /// the walk and is answered as it is, the walk's own errors name the
    /// file. Answers false when there is no such bucket.
    fn entries(
        &self,
        bucket: &[u8],
        mut f: impl FnMut(&[u8], &[u8]) -> anyhow::Result<()>,
    ) -> anyhow::Result<bool> {
        let mut stopped = None;
        let walked = self.reader.for_each(bucket, &mut |k, v| {
            f(k, v).map_err(|e| {
                stopped = Some(e);
                bbolt::BoltError::Stopped
            })
        });
        match (walked, stopped) {
            (_, Some(e)) => Err(e),
            (walked, None) => walked.map_err(|e| self.fail(e)),
        }
    }

    /// Calls `f` with each row of the key bucket, in order; an entry that
    /// does not decode, or revisions that do not ascend, are errors.
    pub fn for_each_row(&self, mut f: impl FnMut(Row) -> anyhow::Result<()>) -> anyhow::Result<()> {
        let mut prev: Option<(Revision, i64)> = None;
        let found = self.entries(BUCKET_KEY, |k, v| {
            let row =
                decode_key_entry(k, v).map_err(|e| self.fail(format!("bucket \"key\": {e}")))?;
            let at = (row.revision, row.sub);
            if row.revision < 1 || prev.is_some_and(|p| p >= at) {
                let after = prev.map_or(String::new(), |(r, s)| {
                    format!(" after revision {r} sub {s}")
                });
                return Err(self.fail(format!(
                    "bucket \"key\": revision {} sub {}{after}: the revisions do not ascend",
                    row.revision, row.sub
                )));
            }
            prev = Some(at);
            f(row)
        })?;
        if !found {
            return Err(self.fail("it has no bucket \"key\" (not an etcd backend)"));
        }
        Ok(())
    }

    /// The (main) revision of a revision key in the meta bucket.
    fn meta_revision(&self, name: &[u8]) -> anyhow::Result<Option<Revision>> {
        let mut out = None;
        self.entries(BUCKET_META, |k, v| {
            if k == name {
                let Some((r, _, _)) = parse_rev_key(v) else {
                    return Err(self.fail(format!(
                        "bucket \"meta\": {} is not a revision ({} bytes)",
                        name.escape_ascii(),
                        v.len()
                    )));
                };
                out = Some(r);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The leases: (id, ttl).
    fn leases(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut out = Vec::new();
        self.entries(BUCKET_LEASE, |k, v| {
            let l = LeasePb::decode(v).map_err(|e| {
                self.fail(format!(
                    "bucket \"lease\": the lease at key {} does not decode: {e}",
                    k.escape_ascii()
                ))
            })?;
            out.push((l.id, l.ttl));
            Ok(())
        })?;
        Ok(out)
    }

    /// The auth store: enabled, revision, users, roles.
    fn auth(&self) -> anyhow::Result<(bool, i64, crate::auth::AuthSnapshot)> {
        let (mut enabled, mut revision) = (false, 1);
        self.entries(BUCKET_AUTH, |k, v| {
            if k == AUTH_ENABLED {
                enabled = v.first() == Some(&1);
            } else if k == AUTH_REVISION && v.len() == 8 {
                revision = u64::from_be_bytes(v.try_into().expect("8 bytes")) as i64;
            }
            Ok(())
        })?;
        let mut snap = crate::auth::AuthSnapshot::default();
        self.entries(BUCKET_USERS, |k, v| {
            let u = authpb::User::decode(v).map_err(|e| {
                self.fail(format!(
                    "bucket \"authUsers\": user {} does not decode: {e}",
                    k.escape_ascii()
                ))
            })?;
            snap.users.push(u);
            Ok(())
        })?;
        self.entries(BUCKET_ROLES, |k, v| {
            let r = authpb::Role::decode(v).map_err(|e| {
                self.fail(format!(
                    "bucket \"authRoles\": role {} does not decode: {e}",
                    k.escape_ascii()
                ))
            })?;
            snap.roles.push(r);
            Ok(())
        })?;
        Ok((enabled, revision.max(1), snap))
    }
}

/// One change of a snapshot's history.
pub type Row = crate::sql::HashedRow;

/// A history row of an etcd key bucket entry.
fn decode_key_entry(k: &[u8], v: &[u8]) -> anyhow::Result<Row> {
    let Some((revision, sub, deleted)) = parse_rev_key(k) else {
        bail!(
            "the entry at key {} is not a revision ({} bytes)",
            k.escape_ascii(),
            k.len()
        );
    };
    let kv = mvccpb::KeyValue::decode(v)
        .map_err(|e| anyhow!("the entry at revision {revision} sub {sub} does not decode: {e}"))?;
    Ok(Row {
        revision,
        sub,
        key: kv.key,
        create_revision: kv.create_revision,
        version: kv.version,
        lease: kv.lease,
        value: if deleted { Bytes::new() } else { kv.value },
        deleted,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bbolt::PAGE;
    use crate::bbolt::craft::*;
    use std::time::{Duration, Instant};

    /// A small etcd backend as etcd lays it out: revisions 2 to 3001 of
    /// 50 keys (every 10th a deletion), compacted at 100; 400 leases; the
    /// meta and auth buckets, a user and a role; etcd's empty buckets.
    /// Answers the bbolt file's bytes (no trailer).
    fn backend(path: &Path) -> Vec<u8> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .unwrap();
        let mut w = bbolt::Writer::new(file).unwrap();
        let mut b = w.bucket(BUCKET_KEY);
        for r in 2..3002 {
            let key = Bytes::from(format!("/k/{}", r % 50));
            let deleted = r % 10 == 0;
            let kv = if deleted {
                mvccpb::KeyValue {
                    key,
                    ..Default::default()
                }
            } else {
                mvccpb::KeyValue {
                    key,
                    create_revision: r,
                    mod_revision: r,
                    version: 1,
                    value: Bytes::from(format!("value {r}")),
                    lease: 0,
                }
            };
            b.put(&rev_key(r, 0, deleted), &kv.encode_to_vec()).unwrap();
        }
        b.finish().unwrap();
        let mut b = w.bucket(BUCKET_LEASE);
        for id in 1..=400i64 {
            let l = LeasePb {
                id,
                ttl: 60 + id,
                remaining_ttl: 0,
            };
            b.put(&(id as u64).to_be_bytes(), &l.encode_to_vec())
                .unwrap();
        }
        b.finish().unwrap();
        let mut b = w.bucket(BUCKET_META);
        b.put(CONSISTENT_INDEX, &3001u64.to_be_bytes()).unwrap();
        b.put(FINISHED_COMPACT, &rev_key(100, 0, false)).unwrap();
        b.put(SCHEDULED_COMPACT, &rev_key(100, 0, false)).unwrap();
        b.put(STORAGE_VERSION, SCHEMA).unwrap();
        b.put(TERM, &2u64.to_be_bytes()).unwrap();
        b.finish().unwrap();
        let mut b = w.bucket(BUCKET_AUTH);
        b.put(AUTH_ENABLED, &[0]).unwrap();
        b.put(AUTH_REVISION, &5u64.to_be_bytes()).unwrap();
        b.finish().unwrap();
        let mut b = w.bucket(BUCKET_USERS);
        let user = authpb::User {
            name: Bytes::from_static(b"root"),
            roles: vec!["root".into()],
            ..Default::default()
        };
        b.put(b"root", &user.encode_to_vec()).unwrap();
        b.finish().unwrap();
        let mut b = w.bucket(BUCKET_ROLES);
        let role = authpb::Role {
            name: Bytes::from_static(b"root"),
            ..Default::default()
        };
        b.put(b"root", &role.encode_to_vec()).unwrap();
        b.finish().unwrap();
        for name in EMPTY_BUCKETS {
            w.bucket(name).finish().unwrap();
        }
        w.finish().unwrap();
        std::fs::read(path).unwrap()
    }

    /// The file `etcdctl snapshot save` writes: the database, then its
    /// SHA-256 (recomputed after any patching: it proves nothing).
    fn seal(db: &[u8]) -> Vec<u8> {
        let mut out = db.to_vec();
        out.extend_from_slice(&sha2::Sha256::digest(db));
        out
    }

    /// Opens and verifies the file at `path`, bounded in time.
    fn open_and_verify(path: &Path, skip_hash_check: bool) -> Result<Contents, String> {
        let path = path.to_path_buf();
        bounded(move || {
            EtcdSnapshot::open(&path, skip_hash_check)
                .and_then(|s| s.verify())
                .map_err(|e| format!("{e:#}"))
        })
    }

    /// Writes `bytes` as a snapshot file and checks that opening and
    /// verifying it fails within 2 s, naming the file and saying `needle`.
    fn assert_rejected(bytes: &[u8], needle: &str) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("crafted.db");
        std::fs::write(&path, bytes).unwrap();
        let started = Instant::now();
        let err = open_and_verify(&path, false).expect_err("the crafted snapshot verified");
        let took = started.elapsed();
        let file = format!("snapshot {}: ", path.display());
        assert!(
            err.starts_with(&file),
            "{err:?} does not start with {file:?}"
        );
        assert!(err.contains(needle), "{err:?} does not say {needle:?}");
        assert!(took < Duration::from_secs(2), "took {took:?}: {err}");
    }

    /// The backend's bytes, and its key bucket's branch root.
    fn key_tree(dir: &Path) -> (Vec<u8>, u64) {
        let db = backend(&dir.join("backend"));
        let root = bucket_root(&db, BUCKET_KEY);
        assert!(is_branch(&db, root));
        (db, root)
    }

    #[test]
    fn valid_snapshot_verifies() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("snap.db");
        std::fs::write(&path, seal(&backend(&dir.path().join("backend")))).unwrap();
        let c = open_and_verify(&path, false).unwrap();
        assert_eq!(
            (c.compact, c.last, c.rows, c.leases.len()),
            (100, 3001, 3000, 400)
        );
        assert_eq!(c.leases[399], (400, 460));
        assert_eq!((c.auth_enabled, c.auth_revision), (false, 5));
        assert_eq!((c.auth.users.len(), c.auth.roles.len()), (1, 1));
        let snap = EtcdSnapshot::open(&path, false).unwrap();
        let mut rows = Vec::new();
        snap.for_each_row(|r| {
            rows.push((r.revision, r.deleted, r.value.len()));
            Ok(())
        })
        .unwrap();
        assert_eq!(rows.len(), 3000);
        assert_eq!(rows[0], (2, false, 7));
        assert_eq!(rows[8], (10, true, 0));
        // A callback's error comes back as it is.
        let err = snap.for_each_row(|_| anyhow::bail!("enough")).unwrap_err();
        assert_eq!(err.to_string(), "enough");
    }

    #[test]
    fn missing_damaged_and_unsealed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no-such.db");
        let err = open_and_verify(&missing, false).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "snapshot {}: cannot open it: No such file or directory",
                missing.display()
            )),
            "{err}"
        );
        let db = backend(&dir.path().join("backend"));
        let mut damaged = seal(&db);
        damaged[PAGE * 5 + 100] ^= 1;
        let path = dir.path().join("damaged.db");
        std::fs::write(&path, &damaged).unwrap();
        let err = open_and_verify(&path, false).unwrap_err();
        assert!(
            err.starts_with(&format!(
                "snapshot {}: its SHA-256 does not match its content",
                path.display()
            )),
            "{err}"
        );
        let path = dir.path().join("unsealed.db");
        std::fs::write(&path, &db).unwrap();
        let err = open_and_verify(&path, false).unwrap_err();
        assert!(
            err.starts_with(&format!("snapshot {}: it has no SHA-256", path.display())),
            "{err}"
        );
        // --skip-hash-check reads the unsealed file.
        open_and_verify(&path, true).unwrap();
    }

    #[test]
    fn key_branch_whose_first_child_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, root) = key_tree(dir.path());
        set_child(&mut db, root, 0, root);
        assert_rejected(
            &seal(&db),
            &format!("page {root} (branch of bucket \"key\") refers to page {root} again"),
        );
    }

    #[test]
    fn key_branch_whose_last_child_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, root) = key_tree(dir.path());
        let last = count(&db, root) - 1;
        set_child(&mut db, root, last, root);
        assert_rejected(
            &seal(&db),
            &format!("page {root} (branch of bucket \"key\") refers to page {root} again"),
        );
    }

    #[test]
    fn overflow_of_16_tebibytes() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, root) = key_tree(dir.path());
        let leaf = child(&db, root, 1);
        set_overflow(&mut db, leaf, u32::MAX);
        assert_rejected(
            &seal(&db),
            &format!(
                "page {leaf} (in bucket \"key\") overflow 4294967295 runs past the end of the file ({} pages)",
                pages(&db)
            ),
        );
    }

    #[test]
    fn overflow_of_a_gibibyte() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, root) = key_tree(dir.path());
        let leaf = child(&db, root, 1);
        set_overflow(&mut db, leaf, 1 << 18);
        assert_rejected(
            &seal(&db),
            &format!(
                "page {leaf} (in bucket \"key\") overflow 262144 runs past the end of the file ({} pages)",
                pages(&db)
            ),
        );
    }

    #[test]
    fn lease_bucket_dag() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = backend(&dir.path().join("backend"));
        let (lowest, old) = dag(&mut db, BUCKET_LEASE);
        assert_rejected(
            &seal(&db),
            &format!("page {lowest} (branch of bucket \"lease\") refers to page {old} again"),
        );
    }

    #[test]
    fn meta_bucket_dag() {
        let dir = tempfile::tempdir().unwrap();
        let mut db = backend(&dir.path().join("backend"));
        let (lowest, old) = dag(&mut db, BUCKET_META);
        assert_rejected(
            &seal(&db),
            &format!("page {lowest} (branch of bucket \"meta\") refers to page {old} again"),
        );
    }

    #[test]
    fn key_page_out_of_range() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, root) = key_tree(dir.path());
        set_child(&mut db, root, 2, 1_000_000);
        assert_rejected(
            &seal(&db),
            &format!(
                "page {root} (branch of bucket \"key\") refers to page 1000000, past the end of the file ({} pages)",
                pages(&db)
            ),
        );
    }

    #[test]
    fn truncated_and_resealed() {
        let dir = tempfile::tempdir().unwrap();
        let (db, _) = key_tree(dir.path());
        assert_rejected(
            &seal(&db[..10 * PAGE]),
            &format!(
                "truncated: the meta page (transaction 2) counts {} pages of 4096 bytes, the file holds 10 (40992 bytes)",
                pages(&db)
            ),
        );
    }

    #[test]
    fn key_entry_that_does_not_decode() {
        let dir = tempfile::tempdir().unwrap();
        let (mut db, root) = key_tree(dir.path());
        let leaf = child(&db, root, 0);
        // Field 31, wire type 7: no such wire type.
        let at = value_at(&db, leaf, 3);
        db[at] = 0xff;
        assert_rejected(
            &seal(&db),
            "bucket \"key\": the entry at revision 5 sub 0 does not decode: ",
        );
    }
}
