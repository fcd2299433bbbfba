//! Auth relayed to etcd: users, roles and Authenticate, whose token the
//! client then sends as request metadata, which is forwarded with every
//! call.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::upstream::{Retry, Upstream};
use crate::proto::etcdserverpb as pb;
use crate::proto::etcdserverpb::auth_client::AuthClient;
use crate::proto::etcdserverpb::auth_server::Auth;

pub struct AuthProxy {
    pub up: Arc<Upstream>,
}

relay_impl! {
    Auth, AuthProxy, AuthClient;
    {}
    auth_enable(pb::AuthEnableRequest) -> pb::AuthEnableResponse, Retry::IfUnsent;
    auth_disable(pb::AuthDisableRequest) -> pb::AuthDisableResponse, Retry::IfUnsent;
    auth_status(pb::AuthStatusRequest) -> pb::AuthStatusResponse, Retry::Always;
    authenticate(pb::AuthenticateRequest) -> pb::AuthenticateResponse, Retry::Always;
    user_add(pb::AuthUserAddRequest) -> pb::AuthUserAddResponse, Retry::IfUnsent;
    user_get(pb::AuthUserGetRequest) -> pb::AuthUserGetResponse, Retry::Always;
    user_list(pb::AuthUserListRequest) -> pb::AuthUserListResponse, Retry::Always;
    user_delete(pb::AuthUserDeleteRequest) -> pb::AuthUserDeleteResponse, Retry::IfUnsent;
    user_change_password(pb::AuthUserChangePasswordRequest) -> pb::AuthUserChangePasswordResponse, Retry::IfUnsent;
    user_grant_role(pb::AuthUserGrantRoleRequest) -> pb::AuthUserGrantRoleResponse, Retry::IfUnsent;
    user_revoke_role(pb::AuthUserRevokeRoleRequest) -> pb::AuthUserRevokeRoleResponse, Retry::IfUnsent;
    role_add(pb::AuthRoleAddRequest) -> pb::AuthRoleAddResponse, Retry::IfUnsent;
    role_get(pb::AuthRoleGetRequest) -> pb::AuthRoleGetResponse, Retry::Always;
    role_list(pb::AuthRoleListRequest) -> pb::AuthRoleListResponse, Retry::Always;
    role_delete(pb::AuthRoleDeleteRequest) -> pb::AuthRoleDeleteResponse, Retry::IfUnsent;
    role_grant_permission(pb::AuthRoleGrantPermissionRequest) -> pb::AuthRoleGrantPermissionResponse, Retry::IfUnsent;
    role_revoke_permission(pb::AuthRoleRevokePermissionRequest) -> pb::AuthRoleRevokePermissionResponse, Retry::IfUnsent;
}
