//! etcd's semantics, written once for every database.

pub mod apply;
pub mod compactor;
pub mod hub;
pub mod lease;
pub mod range;
pub mod store;
pub mod tail;
pub mod types;
pub mod writer;
