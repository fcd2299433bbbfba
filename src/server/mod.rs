//! The gRPC services of SQL mode. Every unary handler follows etcd's four
//! steps: validate (limits and exact etcd texts), call the engine with
//! engine types, map errors through `Status::from`, fill the response
//! header. No SQL and no database type appears here.

pub mod auth;
pub mod cluster;
pub mod convert;
pub mod gateway;
pub mod http;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod watch;

use std::sync::Arc;

use prost::Message;
use tonic::Status;

use crate::error::Error;
use crate::mvcc::Store;
use crate::proto::etcdserverpb::ResponseHeader;
use crate::types::Revision;

/// The raft term reported in headers and Status. Koine has no raft; a
/// single etcd member reports term 2 once it has elected itself at start
/// (term 1 is the election), and clients only compare terms between
/// responses, so a constant 2 is what they would see from a healthy
/// one-member cluster.
pub const RAFT_TERM: u64 = 2;

/// Marks a request Koine's own services make on a caller's behalf (see
/// [`Limits::check_size_from`]).
#[derive(Debug, Clone, Copy)]
pub struct Internal;

/// Limits enforced on requests, with etcd's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_txn_ops: usize,
    pub max_request_bytes: usize,
}

impl Limits {
    /// gRPC-level receive limit: etcd allows 512 KiB above the request limit.
    pub fn max_recv_bytes(&self) -> usize {
        self.max_request_bytes + 512 * 1024
    }

    /// etcd's size checks: over the gRPC limit is rejected by the transport
    /// (ResourceExhausted), over the request limit by the server.
    pub fn check_size<M: Message>(&self, msg: &M) -> Result<(), Status> {
        self.check_size_from(msg, false)
    }

    /// [`Limits::check_size`] for a request that came from a client, or
    /// (`internal`) that Koine's own services make on a caller's behalf
    /// (Lock, Election: etcd's in-process client has no gRPC limit, only
    /// the server's request limit).
    pub fn check_size_from<M: Message>(&self, msg: &M, internal: bool) -> Result<(), Status> {
        let len = msg.encoded_len();
        if !internal && len > self.max_recv_bytes() {
            return Err(Status::resource_exhausted(format!(
                "grpc: received message larger than max ({len} vs. {})",
                self.max_recv_bytes()
            )));
        }
        if len > self.max_request_bytes {
            return Err(Error::RequestTooLarge.into());
        }
        Ok(())
    }
}

/// Identity reported in headers, Status and MemberList.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cluster_id: u64,
    pub member_id: u64,
    pub name: String,
    /// Client URL reported by MemberList.
    pub client_url: String,
    /// Version reported by Maintenance.Status.
    pub version: String,
}

/// State shared by all services of one server.
pub struct Shared {
    pub store: Store,
    pub auth: crate::auth::AuthRef,
    pub alarms: crate::alarm::AlarmsRef,
    pub identity: Identity,
    pub limits: Limits,
    pub watch: watch::WatchConfig,
    pub metrics: std::sync::Arc<crate::metrics::Metrics>,
    /// Fired when the server shuts down; ends watch and keepalive streams.
    pub shutdown: tokio_util::sync::CancellationToken,
}

pub type SharedRef = Arc<Shared>;

impl Shared {
    /// The caller of a request while auth is on (`None` while it is off),
    /// or etcd's error for its token.
    pub async fn caller(
        &self,
        md: &tonic::metadata::MetadataMap,
    ) -> Result<Option<crate::auth::Caller>, Status> {
        Ok(self.auth.caller(md).await?)
    }

    /// etcd's check for admin-only calls: with auth on, only a user with
    /// the root role.
    pub async fn require_admin(&self, md: &tonic::metadata::MetadataMap) -> Result<(), Status> {
        match self.caller(md).await? {
            Some(c) if !c.is_admin() => Err(crate::error::AuthError::PermissionDenied.into()),
            _ => Ok(()),
        }
    }

    /// etcd's alarm and quota checks before a write adding about `cost`
    /// bytes (0: a write that adds nothing, a delete or a compaction):
    /// CORRUPT stops every write, NOSPACE (or the quota) those that add.
    pub async fn check_space(&self, cost: usize) -> Result<(), Status> {
        if self.alarms.is_raised(crate::alarm::CORRUPT) {
            return Err(Status::data_loss(crate::error::text::CORRUPT));
        }
        if cost > 0 && !self.alarms.admits(cost).await {
            return Err(Status::resource_exhausted(crate::error::text::NO_SPACE));
        }
        Ok(())
    }

    /// etcd's checkLeasePuts: attaching to lease `id` or revoking it needs
    /// WRITE on every key already attached (whoever may attach may revoke).
    pub async fn check_lease_keys(&self, c: &crate::auth::Caller, id: i64) -> Result<(), Status> {
        if c.is_admin() {
            return Ok(());
        }
        let info = self.store.lease(id).await?;
        Ok(c.check_all(true, &info.keys)?)
    }

    /// A header at the newest revision this instance has published.
    pub fn current_header(&self) -> Option<ResponseHeader> {
        self.header(self.store.published_revision())
    }

    pub fn header(&self, revision: Revision) -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: self.identity.cluster_id,
            member_id: self.identity.member_id,
            revision,
            raft_term: RAFT_TERM,
        })
    }
}
