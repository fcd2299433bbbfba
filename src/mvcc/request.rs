//! The engine's requests and results: etcd's RangeRequest, PutRequest,
//! DeleteRangeRequest and TxnRequest without protobuf. The lease and
//! compaction requests live beside their semantics (`lease.rs`,
//! `compact.rs`).

use bytes::Bytes;

use crate::types::{KeyRange, KeyValue, LeaseId, Revision};

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
    /// Served from this instance's memory as it is, without first
    /// catching up with the database (etcd's serializable read).
    pub serializable: bool,
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
    /// A result etcd does not know: the compare holds (etcd's compareKV
    /// falls through to true), except on a missing key's value.
    Unknown,
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
