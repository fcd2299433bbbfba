//! etcd's JSON gateway on the client port: every gRPC method of the API as
//! `POST /v3/...` with the request as JSON and the response as JSON, in the
//! proto3 JSON mapping etcd's gateway uses (field names as in the protos,
//! 64-bit integers as strings, bytes as base64, zero values left out). A
//! call runs the same service code as its gRPC twin, with the
//! `Authorization` header as the auth token. Errors are
//! `{"error","code","message"}` with the HTTP status grpc-gateway gives the
//! gRPC code. Streams (`/v3/watch`, `/v3/lease/keepalive`,
//! `/v3/election/observe`) read the JSON requests of the body and answer
//! one `{"result": ...}` line per message.

use std::future::Future;
use std::pin::Pin;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{MethodRouter, post};
use futures::{Stream, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tonic::Code;

use crate::proto::etcdserverpb::auth_server::Auth;
use crate::proto::etcdserverpb::cluster_server::Cluster;
use crate::proto::etcdserverpb::kv_server::Kv;
use crate::proto::etcdserverpb::lease_server::Lease;
use crate::proto::etcdserverpb::maintenance_server::Maintenance;
use crate::proto::v3electionpb::election_server::Election;
use crate::proto::v3lockpb::lock_server::Lock;
use crate::serve::json;
use crate::server::SharedRef;
use crate::server::auth::AuthService;
use crate::server::cluster::ClusterService;
use crate::server::kv::KvService;
use crate::server::lease::LeaseService;
use crate::server::lock::{ElectionService, LockService};
use crate::server::maintenance::MaintenanceService;
use crate::server::watch::WatchService;

/// grpc-gateway's HTTP status for a gRPC code.
fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).unwrap_or(StatusCode::BAD_REQUEST),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error(code: Code, message: &str) -> Response {
    let body = serde_json::json!({
        "error": message,
        "code": code as i32,
        "message": message,
    });
    json(http_status(code), body.to_string())
}

/// The request's headers as gRPC metadata: the auth token etcd's gateway
/// takes from `Authorization`.
fn metadata(headers: &HeaderMap) -> tonic::metadata::MetadataMap {
    let mut md = tonic::metadata::MetadataMap::new();
    for name in ["authorization", "token"] {
        if let Some(v) = headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
        {
            md.insert(name, v);
        }
    }
    md
}

fn request<T>(headers: &HeaderMap, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    *r.metadata_mut() = metadata(headers);
    r
}

/// A body's JSON request (an empty body is the empty request).
/// A body that is not JSON is gRPC's InvalidArgument with the parser's text.
fn parse<T: DeserializeOwned + Default>(body: &[u8]) -> Result<T, String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn bad_json(e: String) -> Response {
    error(Code::InvalidArgument, &e)
}

type Answer<T> = Pin<Box<dyn Future<Output = Result<tonic::Response<T>, tonic::Status>> + Send>>;

/// One unary call: JSON in, the service, JSON out.
async fn unary<Req, Resp>(
    headers: HeaderMap,
    body: Bytes,
    call: impl FnOnce(tonic::Request<Req>) -> Answer<Resp>,
) -> Response
where
    Req: DeserializeOwned + Default,
    Resp: Serialize,
{
    let req = match parse::<Req>(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    match call(request(&headers, req)).await {
        Ok(resp) => match serde_json::to_string(resp.get_ref()) {
            Ok(text) => json(StatusCode::OK, text),
            Err(e) => error(Code::Internal, &e.to_string()),
        },
        Err(status) => error(status.code(), status.message()),
    }
}

/// A stream of answers as grpc-gateway writes it: one JSON object per line,
/// `{"result": ...}` or, to end it, `{"error": {...}}`.
fn lines<T, S>(stream: S) -> Response
where
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, tonic::Status>> + Send + 'static,
{
    let body = stream.map(|item| {
        let line = match item {
            Ok(msg) => serde_json::json!({ "result": msg }),
            Err(st) => serde_json::json!({ "error": {
                "grpc_code": st.code() as i32,
                "http_code": http_status(st.code()).as_u16(),
                "message": st.message(),
                "http_status": http_status(st.code()).canonical_reason().unwrap_or(""),
            }}),
        };
        Ok::<_, std::convert::Infallible>(format!("{line}\n"))
    });
    Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(body))
        .unwrap_or_else(|_| error(Code::Internal, "response"))
}

/// The JSON requests of a streaming call's body, one after another.
fn requests<T: DeserializeOwned>(body: &[u8]) -> Result<Vec<T>, String> {
    serde_json::Deserializer::from_slice(body)
        .into_iter::<T>()
        .collect::<Result<Vec<T>, _>>()
        .map_err(|e| e.to_string())
}

/// etcd answers other methods with gRPC's Unimplemented.
fn method_not_allowed() -> Response {
    error(Code::Unimplemented, "Method Not Allowed")
}

fn route<H, T>(handler: H) -> MethodRouter
where
    H: axum::handler::Handler<T, ()>,
    T: 'static,
{
    post(handler).fallback(|| async { method_not_allowed() })
}

/// Routes of the unary calls: `path => Service.method`.
macro_rules! unary_routes {
    ($router:expr, $shared:expr; $( $path:literal => $svc:ident . $method:ident ),* $(,)?) => {{
        let mut r = $router;
        $(
            let s = $shared.clone();
            r = r.route(
                $path,
                route(move |headers: HeaderMap, body: Bytes| {
                    let svc = $svc { shared: s.clone() };
                    async move {
                        unary(headers, body, move |req| Box::pin(async move { svc.$method(req).await })).await
                    }
                }),
            );
        )*
        r
    }};
}

/// The gateway's routes, taking bodies as large as the gRPC port takes
/// messages (`--max-request-bytes` and grpc-go's overhead) once in JSON:
/// base64 makes bytes 4/3 as long, and field names take room. A larger
/// body is refused with etcd's JSON error, as a request over the limit.
pub fn routes(shared: SharedRef) -> Router {
    let limit = shared.limits.max_recv_bytes() / 3 * 4 + (64 << 10);
    calls(shared)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(axum::middleware::map_response(too_large_as_json))
}

/// axum answers a body over the limit with a plain-text 413.
async fn too_large_as_json(resp: Response) -> Response {
    if resp.status() == StatusCode::PAYLOAD_TOO_LARGE {
        error(Code::InvalidArgument, crate::error::text::REQUEST_TOO_LARGE)
    } else {
        resp
    }
}

fn calls(shared: SharedRef) -> Router {
    let r = unary_routes!(Router::new(), shared;
        "/v3/kv/range" => KvService.range,
        "/v3/kv/put" => KvService.put,
        "/v3/kv/deleterange" => KvService.delete_range,
        "/v3/kv/txn" => KvService.txn,
        "/v3/kv/compaction" => KvService.compact,
        "/v3/lease/grant" => LeaseService.lease_grant,
        "/v3/lease/revoke" => LeaseService.lease_revoke,
        "/v3/kv/lease/revoke" => LeaseService.lease_revoke,
        "/v3/lease/timetolive" => LeaseService.lease_time_to_live,
        "/v3/kv/lease/timetolive" => LeaseService.lease_time_to_live,
        "/v3/lease/leases" => LeaseService.lease_leases,
        "/v3/kv/lease/leases" => LeaseService.lease_leases,
        "/v3/cluster/member/add" => ClusterService.member_add,
        "/v3/cluster/member/remove" => ClusterService.member_remove,
        "/v3/cluster/member/update" => ClusterService.member_update,
        "/v3/cluster/member/list" => ClusterService.member_list,
        "/v3/cluster/member/promote" => ClusterService.member_promote,
        "/v3/maintenance/alarm" => MaintenanceService.alarm,
        "/v3/maintenance/status" => MaintenanceService.status,
        "/v3/maintenance/defragment" => MaintenanceService.defragment,
        "/v3/maintenance/hash" => MaintenanceService.hash,
        "/v3/maintenance/hashkv" => MaintenanceService.hash_kv,
        "/v3/maintenance/transfer-leadership" => MaintenanceService.move_leader,
        "/v3/maintenance/downgrade" => MaintenanceService.downgrade,
        "/v3/auth/enable" => AuthService.auth_enable,
        "/v3/auth/disable" => AuthService.auth_disable,
        "/v3/auth/status" => AuthService.auth_status,
        "/v3/auth/authenticate" => AuthService.authenticate,
        "/v3/auth/user/add" => AuthService.user_add,
        "/v3/auth/user/get" => AuthService.user_get,
        "/v3/auth/user/list" => AuthService.user_list,
        "/v3/auth/user/delete" => AuthService.user_delete,
        "/v3/auth/user/changepw" => AuthService.user_change_password,
        "/v3/auth/user/grant" => AuthService.user_grant_role,
        "/v3/auth/user/revoke" => AuthService.user_revoke_role,
        "/v3/auth/role/add" => AuthService.role_add,
        "/v3/auth/role/get" => AuthService.role_get,
        "/v3/auth/role/list" => AuthService.role_list,
        "/v3/auth/role/delete" => AuthService.role_delete,
        "/v3/auth/role/grant" => AuthService.role_grant_permission,
        "/v3/auth/role/revoke" => AuthService.role_revoke_permission,
        "/v3/lock/lock" => LockService.lock,
        "/v3/lock/unlock" => LockService.unlock,
        "/v3/election/campaign" => ElectionService.campaign,
        "/v3/election/proclaim" => ElectionService.proclaim,
        "/v3/election/leader" => ElectionService.leader,
        "/v3/election/resign" => ElectionService.resign,
    );
    let (w, k, o, m) = (shared.clone(), shared.clone(), shared.clone(), shared);
    r.route(
        "/v3/watch",
        route(move |headers: HeaderMap, body: Bytes| {
            let svc = WatchService { shared: w.clone() };
            async move {
                match requests(&body) {
                    Ok(reqs) => lines(svc.session(
                        metadata(&headers),
                        futures::stream::iter(reqs.into_iter().map(Ok)),
                    )),
                    Err(e) => bad_json(e),
                }
            }
        }),
    )
    .route(
        "/v3/lease/keepalive",
        route(move |headers: HeaderMap, body: Bytes| {
            let svc = LeaseService { shared: k.clone() };
            async move {
                match requests(&body) {
                    Ok(reqs) => lines(svc.keep_alive_session(
                        metadata(&headers),
                        futures::stream::iter(reqs.into_iter().map(Ok)),
                    )),
                    Err(e) => bad_json(e),
                }
            }
        }),
    )
    .route(
        "/v3/election/observe",
        route(move |headers: HeaderMap, body: Bytes| {
            let svc = ElectionService { shared: o.clone() };
            server_stream(
                headers,
                body,
                move |req| async move { svc.observe(req).await },
            )
        }),
    )
    .route(
        "/v3/maintenance/snapshot",
        route(move |headers: HeaderMap, body: Bytes| {
            let svc = MaintenanceService { shared: m.clone() };
            server_stream(
                headers,
                body,
                move |req| async move { svc.snapshot(req).await },
            )
        }),
    )
}

/// A server-streaming call: one JSON request in, result lines out.
async fn server_stream<Req, T, S, Fut>(
    headers: HeaderMap,
    body: Bytes,
    call: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Response
where
    Req: DeserializeOwned + Default,
    T: Serialize + Send + 'static,
    S: Stream<Item = Result<T, tonic::Status>> + Send + 'static,
    Fut: Future<Output = Result<tonic::Response<S>, tonic::Status>>,
{
    let req = match parse(&body) {
        Ok(r) => r,
        Err(e) => return bad_json(e),
    };
    match call(request(&headers, req)).await {
        Ok(stream) => lines(stream.into_inner()),
        Err(st) => error(st.code(), st.message()),
    }
}
