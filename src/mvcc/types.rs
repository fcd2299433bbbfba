//! Engine types: the etcd data model without protobuf.

use bytes::Bytes;

/// A store revision. Revision 1 is the empty store.
pub type Revision = i64;
/// A lease id; 0 means "no lease".
pub type LeaseId = i64;

/// One version of one key, as etcd's `mvccpb.KeyValue`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct KeyValue {
    pub key: Bytes,
    pub create_revision: Revision,
    pub mod_revision: Revision,
    pub version: i64,
    pub value: Bytes,
    pub lease: LeaseId,
}

/// A committed change to one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: EventKind,
    /// For a put, the new version; for a delete, the key with `mod_revision`
    /// set to the deleting revision and everything else empty.
    pub kv: KeyValue,
    /// The version before this change, if the key existed.
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Put,
    Delete,
}

/// A key interval as etcd defines it: `end` empty means the single key
/// `start`; `end == [0]` means every key `>= start`; otherwise `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bytes,
    /// Exclusive upper bound; `None` means unbounded.
    pub end: Option<Bytes>,
}

impl KeyRange {
    /// Builds the interval from etcd's `(key, range_end)` pair.
    pub fn from_etcd(key: &Bytes, range_end: &Bytes) -> KeyRange {
        if range_end.is_empty() {
            let mut end = Vec::with_capacity(key.len() + 1);
            end.extend_from_slice(key);
            end.push(0);
            KeyRange {
                start: key.clone(),
                end: Some(end.into()),
            }
        } else if range_end.as_ref() == [0] {
            KeyRange {
                start: key.clone(),
                end: None,
            }
        } else {
            KeyRange {
                start: key.clone(),
                end: Some(range_end.clone()),
            }
        }
    }

    /// True when the interval is provably empty (`end <= start`).
    pub fn is_empty(&self) -> bool {
        matches!(&self.end, Some(end) if end <= &self.start)
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key >= self.start.as_ref() && self.end.as_ref().is_none_or(|end| key < end.as_ref())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortOrder {
    #[default]
    None,
    Ascend,
    Descend,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SortTarget {
    #[default]
    Key,
    Version,
    Create,
    Mod,
    Value,
}

/// etcd's `RangeRequest` minus the key interval.
#[derive(Debug, Clone, Default)]
pub struct RangeOptions {
    /// Maximum number of keys returned; 0 (or negative) means no limit.
    pub limit: i64,
    /// Revision to read at; 0 (or negative) means the current revision.
    pub revision: Revision,
    pub sort_order: SortOrder,
    pub sort_target: SortTarget,
    pub keys_only: bool,
    pub count_only: bool,
    /// Filters, 0 = off.
    pub min_mod_revision: Revision,
    pub max_mod_revision: Revision,
    pub min_create_revision: Revision,
    pub max_create_revision: Revision,
}

impl RangeOptions {
    pub fn has_filters(&self) -> bool {
        self.min_mod_revision > 0
            || self.max_mod_revision > 0
            || self.min_create_revision > 0
            || self.max_create_revision > 0
    }

    pub fn keep(&self, kv: &KeyValue) -> bool {
        !(self.min_mod_revision > 0 && kv.mod_revision < self.min_mod_revision
            || self.max_mod_revision > 0 && kv.mod_revision > self.max_mod_revision
            || self.min_create_revision > 0 && kv.create_revision < self.min_create_revision
            || self.max_create_revision > 0 && kv.create_revision > self.max_create_revision)
    }
}

#[derive(Debug, Clone)]
pub struct RangeRequest {
    pub range: KeyRange,
    pub options: RangeOptions,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    pub more: bool,
    pub count: i64,
}

#[derive(Debug, Clone)]
pub struct PutRequest {
    pub key: Bytes,
    pub value: Bytes,
    pub lease: LeaseId,
    pub prev_kv: bool,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PutResult {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone)]
pub struct DeleteRequest {
    pub range: KeyRange,
    pub prev_kv: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeleteResult {
    pub deleted: i64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompareResult {
    Equal,
    Greater,
    Less,
    NotEqual,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CompareTarget {
    Version(i64),
    Create(Revision),
    Mod(Revision),
    Value(Bytes),
    Lease(LeaseId),
}

#[derive(Debug, Clone)]
pub struct Compare {
    pub result: CompareResult,
    pub target: CompareTarget,
    pub key: Bytes,
    /// etcd's `range_end` as sent (empty = the single key).
    pub range_end: Bytes,
}

#[derive(Debug, Clone)]
pub enum Op {
    Range(RangeRequest),
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
}

#[derive(Debug, Clone, Default)]
pub struct TxnRequest {
    pub compare: Vec<Compare>,
    pub success: Vec<Op>,
    pub failure: Vec<Op>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OpResult {
    Range(RangeResult),
    Put(PutResult),
    Delete(DeleteResult),
    Txn(TxnResult),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TxnResult {
    pub succeeded: bool,
    pub responses: Vec<OpResult>,
    /// The store revision as each op saw it once applied: the revision
    /// before the Txn until its first change, then the Txn's own revision
    /// (etcd reports these in the inner response headers).
    pub revisions: Vec<Revision>,
}

/// A write request as queued for the writer.
#[derive(Debug, Clone)]
pub enum WriteRequest {
    Put(PutRequest),
    Delete(DeleteRequest),
    Txn(TxnRequest),
    Compact {
        revision: Revision,
    },
    LeaseGrant {
        id: LeaseId,
        ttl: i64,
    },
    LeaseRevoke {
        id: LeaseId,
    },
    LeaseKeepAlive {
        id: LeaseId,
    },
    /// Revoke leases whose expiry has passed (database clock).
    LeaseExpire {
        ids: Vec<LeaseId>,
    },
}

/// The outcome of a write, with the store revision after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteResult {
    Put(PutResult),
    Delete(DeleteResult),
    Txn(TxnResult),
    Compact,
    LeaseGrant { id: LeaseId, ttl: i64 },
    LeaseRevoke,
    LeaseKeepAlive { ttl: i64 },
    LeaseExpire,
}
