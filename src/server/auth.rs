//! Auth service: etcd's users, roles and permissions (`crate::auth` holds
//! the store). With auth on, every call but Authenticate and AuthStatus
//! needs the root role, except that a user may read itself and its roles.

use tonic::{Request, Response, Status};

use crate::auth::{Caller, Change, Perm};
use crate::error::AuthError;
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::request_op::Request as Op;
use crate::server::SharedRef;

pub struct AuthService {
    pub shared: SharedRef,
}

type Reply<T> = Result<Response<T>, Status>;

impl AuthService {
    /// Applies `change` for an admin caller.
    async fn change<T>(
        &self,
        md: &tonic::metadata::MetadataMap,
        change: Change,
        make: impl FnOnce(Option<pb::ResponseHeader>) -> T,
    ) -> Reply<T> {
        self.shared.require_admin(md).await?;
        self.apply(change, make).await
    }

    /// Applies `change` (the caller was checked).
    async fn apply<T>(
        &self,
        change: Change,
        make: impl FnOnce(Option<pb::ResponseHeader>) -> T,
    ) -> Reply<T> {
        self.shared.auth.change(change).await?;
        Ok(Response::new(make(self.shared.current_header())))
    }
}

/// etcd's permission checks of KV requests against `caller`: reads need
/// READ over their range, writes WRITE (and READ when they return the
/// previous values), a Txn everything its compares and both of its branches
/// touch, nested Txns included.
pub fn check_range(c: &Caller, r: &pb::RangeRequest) -> Result<(), Status> {
    Ok(c.check(false, &r.key, &r.range_end)?)
}

pub fn check_put(c: &Caller, r: &pb::PutRequest) -> Result<(), Status> {
    c.check(true, &r.key, b"")?;
    if r.prev_kv {
        c.check(false, &r.key, b"")?;
    }
    Ok(())
}

pub fn check_delete(c: &Caller, r: &pb::DeleteRangeRequest) -> Result<(), Status> {
    c.check(true, &r.key, &r.range_end)?;
    if r.prev_kv {
        c.check(false, &r.key, &r.range_end)?;
    }
    Ok(())
}

pub fn check_txn(c: &Caller, t: &pb::TxnRequest) -> Result<(), Status> {
    for cmp in &t.compare {
        c.check(false, &cmp.key, &cmp.range_end)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestRange(r)) => check_range(c, r)?,
            Some(Op::RequestPut(r)) => check_put(c, r)?,
            Some(Op::RequestDeleteRange(r)) => check_delete(c, r)?,
            Some(Op::RequestTxn(t)) => check_txn(c, t)?,
            None => {}
        }
    }
    Ok(())
}

/// The leases the Puts of a Txn attach their keys to, both branches and
/// nested Txns included (each needs etcd's lease-key check, as a Put does).
pub fn txn_leases(t: &pb::TxnRequest, out: &mut Vec<i64>) {
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(Op::RequestPut(p)) if p.lease != 0 && !out.contains(&p.lease) => out.push(p.lease),
            Some(Op::RequestTxn(t)) => txn_leases(t, out),
            _ => {}
        }
    }
}

/// What a write adds, for the quota (etcd's cost: the keys and values it
/// puts; a Txn the larger of its branches).
pub fn put_cost(r: &pb::PutRequest) -> usize {
    r.key.len() + r.value.len() + 64
}

pub fn txn_cost(t: &pb::TxnRequest) -> usize {
    let branch = |ops: &[pb::RequestOp]| -> usize {
        ops.iter()
            .map(|op| match &op.request {
                Some(Op::RequestPut(p)) => put_cost(p),
                Some(Op::RequestTxn(t)) => txn_cost(t),
                _ => 0,
            })
            .sum()
    };
    branch(&t.success).max(branch(&t.failure))
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn auth_enable(
        &self,
        req: Request<pb::AuthEnableRequest>,
    ) -> Reply<pb::AuthEnableResponse> {
        self.change(req.metadata(), Change::Enable, |header| {
            pb::AuthEnableResponse { header }
        })
        .await
    }

    async fn auth_disable(
        &self,
        req: Request<pb::AuthDisableRequest>,
    ) -> Reply<pb::AuthDisableResponse> {
        self.change(req.metadata(), Change::Disable, |header| {
            pb::AuthDisableResponse { header }
        })
        .await
    }

    async fn auth_status(
        &self,
        _req: Request<pb::AuthStatusRequest>,
    ) -> Reply<pb::AuthStatusResponse> {
        let st = self.shared.auth.state();
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.shared.current_header(),
            enabled: st.enabled,
            auth_revision: st.revision as u64,
        }))
    }

    async fn authenticate(
        &self,
        req: Request<pb::AuthenticateRequest>,
    ) -> Reply<pb::AuthenticateResponse> {
        let r = req.into_inner();
        let token = self.shared.auth.authenticate(&r.name, r.password).await?;
        Ok(Response::new(pb::AuthenticateResponse {
            header: self.shared.current_header(),
            token,
        }))
    }

    async fn user_add(
        &self,
        req: Request<pb::AuthUserAddRequest>,
    ) -> Reply<pb::AuthUserAddResponse> {
        self.shared.require_admin(req.metadata()).await?;
        let r = req.into_inner();
        if r.name.is_empty() {
            return Err(AuthError::UserEmpty.into());
        }
        let no_password = r.options.is_some_and(|o| o.no_password);
        let hash = if no_password {
            bytes::Bytes::new()
        } else if !r.hashed_password.is_empty() {
            bytes::Bytes::from(r.hashed_password)
        } else {
            self.shared.auth.hash(r.password).await?
        };
        let change = Change::UserAdd {
            name: r.name,
            hash,
            no_password,
        };
        self.apply(change, |header| pb::AuthUserAddResponse { header })
            .await
    }

    async fn user_get(
        &self,
        req: Request<pb::AuthUserGetRequest>,
    ) -> Reply<pb::AuthUserGetResponse> {
        let caller = self.shared.caller(req.metadata()).await?;
        let r = req.into_inner();
        if let Some(c) = caller
            && !c.is_admin()
            && c.user != r.name
        {
            return Err(AuthError::PermissionDenied.into());
        }
        let roles = self.shared.auth.state().user_roles(&r.name)?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.shared.current_header(),
            roles,
        }))
    }

    async fn user_list(
        &self,
        req: Request<pb::AuthUserListRequest>,
    ) -> Reply<pb::AuthUserListResponse> {
        self.shared.require_admin(req.metadata()).await?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.shared.current_header(),
            users: self.shared.auth.state().users(),
        }))
    }

    async fn user_delete(
        &self,
        req: Request<pb::AuthUserDeleteRequest>,
    ) -> Reply<pb::AuthUserDeleteResponse> {
        let md = req.metadata().clone();
        let change = Change::UserDelete(req.into_inner().name);
        self.change(&md, change, |header| pb::AuthUserDeleteResponse { header })
            .await
    }

    async fn user_change_password(
        &self,
        req: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Reply<pb::AuthUserChangePasswordResponse> {
        self.shared.require_admin(req.metadata()).await?;
        let r = req.into_inner();
        let hash = if !r.hashed_password.is_empty() {
            bytes::Bytes::from(r.hashed_password)
        } else {
            self.shared.auth.hash(r.password).await?
        };
        let change = Change::UserPassword { name: r.name, hash };
        self.apply(change, |header| pb::AuthUserChangePasswordResponse {
            header,
        })
        .await
    }

    async fn user_grant_role(
        &self,
        req: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Reply<pb::AuthUserGrantRoleResponse> {
        let md = req.metadata().clone();
        let r = req.into_inner();
        let change = Change::UserGrant {
            user: r.user,
            role: r.role,
        };
        self.change(&md, change, |header| pb::AuthUserGrantRoleResponse {
            header,
        })
        .await
    }

    async fn user_revoke_role(
        &self,
        req: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Reply<pb::AuthUserRevokeRoleResponse> {
        let md = req.metadata().clone();
        let r = req.into_inner();
        let change = Change::UserRevoke {
            user: r.name,
            role: r.role,
        };
        self.change(&md, change, |header| pb::AuthUserRevokeRoleResponse {
            header,
        })
        .await
    }

    async fn role_add(
        &self,
        req: Request<pb::AuthRoleAddRequest>,
    ) -> Reply<pb::AuthRoleAddResponse> {
        let md = req.metadata().clone();
        let change = Change::RoleAdd(req.into_inner().name);
        self.change(&md, change, |header| pb::AuthRoleAddResponse { header })
            .await
    }

    async fn role_get(
        &self,
        req: Request<pb::AuthRoleGetRequest>,
    ) -> Reply<pb::AuthRoleGetResponse> {
        let caller = self.shared.caller(req.metadata()).await?;
        let r = req.into_inner();
        if let Some(c) = caller
            && !c.is_admin()
            && !c.roles.contains(&r.role)
        {
            return Err(AuthError::PermissionDenied.into());
        }
        let perm = self.shared.auth.state().role_perms(&r.role)?;
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.shared.current_header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: Request<pb::AuthRoleListRequest>,
    ) -> Reply<pb::AuthRoleListResponse> {
        self.shared.require_admin(req.metadata()).await?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.shared.current_header(),
            roles: self.shared.auth.state().roles(),
        }))
    }

    async fn role_delete(
        &self,
        req: Request<pb::AuthRoleDeleteRequest>,
    ) -> Reply<pb::AuthRoleDeleteResponse> {
        let md = req.metadata().clone();
        let change = Change::RoleDelete(req.into_inner().role);
        self.change(&md, change, |header| pb::AuthRoleDeleteResponse { header })
            .await
    }

    async fn role_grant_permission(
        &self,
        req: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Reply<pb::AuthRoleGrantPermissionResponse> {
        let md = req.metadata().clone();
        let r = req.into_inner();
        let change = Change::RoleGrant {
            role: r.name,
            perm: r.perm.map(|p| Perm {
                key: p.key,
                end: p.range_end,
                kind: p.perm_type,
            }),
        };
        self.change(&md, change, |header| pb::AuthRoleGrantPermissionResponse {
            header,
        })
        .await
    }

    async fn role_revoke_permission(
        &self,
        req: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Reply<pb::AuthRoleRevokePermissionResponse> {
        let md = req.metadata().clone();
        let r = req.into_inner();
        let change = Change::RoleRevoke {
            role: r.role,
            key: r.key,
            end: r.range_end,
        };
        self.change(&md, change, |header| pb::AuthRoleRevokePermissionResponse {
            header,
        })
        .await
    }
}
