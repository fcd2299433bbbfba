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
    let mut w = bbolt::Writer::new(file).map_err(io)?;
    let mut rows = 0u64;
    {
        let mut keys = w.bucket(BUCKET_KEY);
        let mut pages = crate::sql::HistoryPager::new(meta.revision, meta.compact_revision);
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
/// trailing SHA-256 checked when there is one.
pub struct EtcdSnapshot {
    pub reader: bbolt::Reader,
}

impl EtcdSnapshot {
    pub fn open(path: &std::path::Path, skip_hash_check: bool) -> anyhow::Result<EtcdSnapshot> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        // etcd's rule: a snapshot whose length is 32 bytes past a multiple
        // of 512 carries a SHA-256 of what precedes it.
        if len % 512 == 32 {
            if !skip_hash_check {
                let mut sha = sha2::Sha256::new();
                let mut left = len - 32;
                let mut buf = vec![0u8; 1 << 20];
                while left > 0 {
                    let n = (buf.len() as u64).min(left) as usize;
                    file.read_exact(&mut buf[..n])?;
                    sha.update(&buf[..n]);
                    left -= n as u64;
                }
                let mut want = [0u8; 32];
                file.read_exact(&mut want)?;
                if sha.finalize()[..] != want[..] {
                    anyhow::bail!(
                        "{}: the snapshot's SHA-256 does not match its content (a damaged file; --skip-hash-check reads it anyway)",
                        path.display()
                    );
                }
            }
        } else if !skip_hash_check {
            anyhow::bail!(
                "{}: the snapshot has no SHA-256 (a copied db file rather than `etcdctl snapshot save`?); --skip-hash-check reads it anyway",
                path.display()
            );
        }
        let reader = bbolt::Reader::open(File::open(path)?)?;
        Ok(EtcdSnapshot { reader })
    }

    /// The (main) revision of a revision key in the meta bucket.
    pub fn meta_revision(&self, name: &[u8]) -> anyhow::Result<Option<Revision>> {
        let mut out = None;
        self.reader.for_each(BUCKET_META, &mut |k, v| {
            if k == name {
                out = parse_rev_key(v).map(|(r, _, _)| r);
            }
            Ok(())
        })?;
        Ok(out)
    }

    /// The leases: (id, ttl).
    pub fn leases(&self) -> anyhow::Result<Vec<(i64, i64)>> {
        let mut out = Vec::new();
        let mut err = None;
        self.reader.for_each(BUCKET_LEASE, &mut |_, v| {
            match LeasePb::decode(v) {
                Ok(l) => out.push((l.id, l.ttl)),
                Err(e) => err = Some(e),
            }
            Ok(())
        })?;
        if let Some(e) = err {
            anyhow::bail!("a lease in the snapshot does not decode: {e}");
        }
        Ok(out)
    }

    /// The auth store: enabled, revision, users, roles.
    pub fn auth(&self) -> anyhow::Result<(bool, i64, crate::auth::AuthSnapshot)> {
        let (mut enabled, mut revision) = (false, 1);
        self.reader.for_each(BUCKET_AUTH, &mut |k, v| {
            if k == AUTH_ENABLED {
                enabled = v.first() == Some(&1);
            } else if k == AUTH_REVISION && v.len() == 8 {
                revision = u64::from_be_bytes(v.try_into().expect("8 bytes")) as i64;
            }
            Ok(())
        })?;
        let mut snap = crate::auth::AuthSnapshot::default();
        let mut bad = None;
        self.reader.for_each(BUCKET_USERS, &mut |_, v| {
            match authpb::User::decode(v) {
                Ok(u) => snap.users.push(u),
                Err(e) => bad = Some(e),
            }
            Ok(())
        })?;
        self.reader.for_each(BUCKET_ROLES, &mut |_, v| {
            match authpb::Role::decode(v) {
                Ok(r) => snap.roles.push(r),
                Err(e) => bad = Some(e),
            }
            Ok(())
        })?;
        if let Some(e) = bad {
            anyhow::bail!("the snapshot's auth store does not decode: {e}");
        }
        Ok((enabled, revision.max(1), snap))
    }
}

/// A history row of an etcd key bucket entry.
pub fn decode_key_entry(k: &[u8], v: &[u8]) -> anyhow::Result<crate::sql::HashedRow> {
    let Some((revision, sub, deleted)) = parse_rev_key(k) else {
        anyhow::bail!("a key bucket entry has no revision key ({} bytes)", k.len());
    };
    let kv = mvccpb::KeyValue::decode(v)?;
    Ok(crate::sql::HashedRow {
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
