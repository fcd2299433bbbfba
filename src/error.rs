//! The error catalogue: every error the engine can return, and the single
//! mapping to etcd's gRPC status (code and exact message text). Clients such
//! as client-go and etcdctl recognise errors by their text, so the texts below
//! are part of the API (etcd `api/v3rpc/rpctypes/error.go`).

use tonic::{Code, Status};

/// etcd's wire texts, one constant per error.
pub mod text {
    pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
    pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
    pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
    pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
    pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
    pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
    pub const INVALID_SORT_OPTION: &str = "etcdserver: invalid sort option";
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
    pub const LEASE_EXIST: &str = "etcdserver: lease already exists";
    pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
    pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
    pub const TIMEOUT: &str = "etcdserver: request timed out";
    pub const STOPPED: &str = "etcdserver: server stopped";
    pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
    pub const CORRUPT: &str = "etcdserver: corrupt cluster";
    pub const USER_EMPTY: &str = "etcdserver: user name is empty";
    pub const USER_EXISTS: &str = "etcdserver: user name already exists";
    pub const USER_NOT_FOUND: &str = "etcdserver: user name not found";
    pub const ROLE_EXISTS: &str = "etcdserver: role name already exists";
    pub const ROLE_NOT_FOUND: &str = "etcdserver: role name not found";
    pub const ROLE_EMPTY: &str = "etcdserver: role name is empty";
    pub const AUTH_FAILED: &str = "etcdserver: authentication failed, invalid user ID or password";
    pub const PERMISSION_NOT_GIVEN: &str = "etcdserver: permission not given";
    pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
    pub const ROLE_NOT_GRANTED: &str = "etcdserver: role is not granted to the user";
    pub const PERMISSION_NOT_GRANTED: &str = "etcdserver: permission is not granted to the role";
    pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
    pub const INVALID_AUTH_TOKEN: &str = "etcdserver: invalid auth token";
    pub const INVALID_AUTH_MGMT: &str = "etcdserver: invalid auth management";
    pub const ROOT_USER_NOT_EXIST: &str = "etcdserver: root user does not exist";
    pub const ROOT_ROLE_NOT_EXIST: &str = "etcdserver: root user does not have root role";
    pub const AUTH_OLD_REVISION: &str = "etcdserver: revision of auth store is old";
    /// etcd answers this one with code Unknown (its auth package's error,
    /// not one of rpctypes').
    pub const NO_PASSWORD_USER: &str =
        "auth: authentication failed, password was given for no password user";
}

/// etcd's auth errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthError {
    UserEmpty,
    UserExists,
    UserNotFound,
    RoleExists,
    RoleNotFound,
    RoleEmpty,
    AuthFailed,
    PermissionNotGiven,
    PermissionDenied,
    RoleNotGranted,
    PermissionNotGranted,
    AuthNotEnabled,
    InvalidToken,
    InvalidMgmt,
    RootUserNotExist,
    RootRoleNotExist,
    NoPasswordUser,
    /// A JWT issued at an auth revision older than the store's: etcd
    /// refuses its key operations until the client authenticates again.
    OldRevision,
}

impl AuthError {
    pub fn code_and_text(self) -> (Code, &'static str) {
        use AuthError::*;
        use text::*;
        match self {
            UserEmpty => (Code::InvalidArgument, USER_EMPTY),
            UserExists => (Code::FailedPrecondition, USER_EXISTS),
            UserNotFound => (Code::FailedPrecondition, USER_NOT_FOUND),
            RoleExists => (Code::FailedPrecondition, ROLE_EXISTS),
            RoleNotFound => (Code::FailedPrecondition, ROLE_NOT_FOUND),
            RoleEmpty => (Code::InvalidArgument, ROLE_EMPTY),
            AuthFailed => (Code::InvalidArgument, AUTH_FAILED),
            PermissionNotGiven => (Code::InvalidArgument, PERMISSION_NOT_GIVEN),
            PermissionDenied => (Code::PermissionDenied, PERMISSION_DENIED),
            RoleNotGranted => (Code::FailedPrecondition, ROLE_NOT_GRANTED),
            PermissionNotGranted => (Code::FailedPrecondition, PERMISSION_NOT_GRANTED),
            AuthNotEnabled => (Code::FailedPrecondition, AUTH_NOT_ENABLED),
            InvalidToken => (Code::Unauthenticated, INVALID_AUTH_TOKEN),
            InvalidMgmt => (Code::InvalidArgument, INVALID_AUTH_MGMT),
            RootUserNotExist => (Code::FailedPrecondition, ROOT_USER_NOT_EXIST),
            RootRoleNotExist => (Code::FailedPrecondition, ROOT_ROLE_NOT_EXIST),
            NoPasswordUser => (Code::Unknown, NO_PASSWORD_USER),
            OldRevision => (Code::InvalidArgument, AUTH_OLD_REVISION),
        }
    }
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Status {
        let (code, text) = e.code_and_text();
        Status::new(code, text)
    }
}

/// Everything that can go wrong below the gRPC layer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{0:?}")]
    Auth(AuthError),
    #[error("key is not provided")]
    EmptyKey,
    #[error("key not found")]
    KeyNotFound,
    #[error("value is provided")]
    ValueProvided,
    #[error("lease is provided")]
    LeaseProvided,
    #[error("too many operations in txn request")]
    TooManyOps,
    #[error("duplicate key given in txn request")]
    DuplicateKey,
    #[error("invalid sort option")]
    InvalidSortOption,
    #[error("required revision {required} has been compacted (compacted at {compacted})")]
    Compacted { required: i64, compacted: i64 },
    #[error("required revision {required} is a future revision (current {current})")]
    FutureRevision { required: i64, current: i64 },
    #[error("lease {0:x} not found")]
    LeaseNotFound(i64),
    #[error("lease {0:x} already exists")]
    LeaseExists(i64),
    #[error("lease TTL too large")]
    LeaseTtlTooLarge,
    #[error("request is too large")]
    RequestTooLarge,
    #[error("request timed out")]
    Timeout,
    #[error("server is stopping")]
    Stopped,
    /// The database could not be reached or the connection was lost
    /// (classified by the database's dialect, `sql/dialect.rs`).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The database is out of space (a full disk).
    #[error("database out of space: {0}")]
    NoSpace(#[source] sqlx::Error),
    /// The database found its own data corrupt.
    #[error("database corrupt: {0}")]
    Corrupt(#[source] sqlx::Error),
    /// Any other database failure.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
    /// COMMIT failed and the database could not be asked whether it took
    /// effect: the write may or may not have happened (etcd's "request
    /// timed out" means the same), and must not be retried blindly.
    #[error("outcome of the write unknown: {0}")]
    OutcomeUnknown(String),
    /// Data read back from the database that breaks an invariant.
    #[error("internal error: {0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The same failure again, for answering several callers with one
    /// (the read fence): database errors keep their class and text.
    pub fn duplicate(&self) -> Error {
        let again = |e: &sqlx::Error| sqlx::Error::Protocol(e.to_string());
        match self {
            Error::Unavailable(e) => Error::Unavailable(again(e)),
            Error::NoSpace(e) => Error::NoSpace(again(e)),
            Error::Corrupt(e) => Error::Corrupt(again(e)),
            Error::Database(e) => Error::Database(again(e)),
            Error::Timeout => Error::Timeout,
            Error::Stopped => Error::Stopped,
            Error::Compacted {
                required,
                compacted,
            } => Error::Compacted {
                required: *required,
                compacted: *compacted,
            },
            other => Error::Internal(other.to_string()),
        }
    }

    /// Whether this error fails a whole write batch (the database failed)
    /// rather than one request (etcd's request errors, raised before the
    /// request writes anything).
    pub fn fails_batch(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_)
                | Error::NoSpace(_)
                | Error::Corrupt(_)
                | Error::Database(_)
                | Error::OutcomeUnknown(_)
                | Error::Internal(_)
        )
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Self {
        use text::*;
        let (code, msg): (Code, &str) = match &e {
            Error::Auth(a) => a.code_and_text(),
            Error::EmptyKey => (Code::InvalidArgument, EMPTY_KEY),
            Error::KeyNotFound => (Code::InvalidArgument, KEY_NOT_FOUND),
            Error::ValueProvided => (Code::InvalidArgument, VALUE_PROVIDED),
            Error::LeaseProvided => (Code::InvalidArgument, LEASE_PROVIDED),
            Error::TooManyOps => (Code::InvalidArgument, TOO_MANY_OPS),
            Error::DuplicateKey => (Code::InvalidArgument, DUPLICATE_KEY),
            Error::InvalidSortOption => (Code::InvalidArgument, INVALID_SORT_OPTION),
            Error::Compacted { .. } => (Code::OutOfRange, COMPACTED),
            Error::FutureRevision { .. } => (Code::OutOfRange, FUTURE_REV),
            Error::LeaseNotFound(_) => (Code::NotFound, LEASE_NOT_FOUND),
            Error::LeaseExists(_) => (Code::FailedPrecondition, LEASE_EXIST),
            Error::LeaseTtlTooLarge => (Code::OutOfRange, LEASE_TTL_TOO_LARGE),
            Error::RequestTooLarge => (Code::InvalidArgument, REQUEST_TOO_LARGE),
            Error::Timeout => (Code::Unavailable, TIMEOUT),
            Error::OutcomeUnknown(why) => {
                tracing::error!(%why, "write outcome unknown");
                (Code::Unavailable, TIMEOUT)
            }
            Error::Stopped => (Code::Unavailable, STOPPED),
            Error::Unavailable(err) => {
                tracing::warn!(error = %err, "database unavailable");
                return Status::unavailable("koine: database unavailable");
            }
            Error::NoSpace(err) => {
                tracing::error!(error = %err, "database out of space");
                return Status::resource_exhausted(NO_SPACE);
            }
            Error::Corrupt(err) => {
                tracing::error!(error = %err, "database corrupt");
                return Status::data_loss(CORRUPT);
            }
            Error::Database(err) => {
                tracing::error!(error = %err, "database error");
                return Status::internal("koine: database error");
            }
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                return Status::internal(format!("koine: internal error: {detail}"));
            }
        };
        Status::new(code, msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_etcd_error_has_its_code_and_text() {
        // Every variant that stands for one of etcd's errors, with the code
        // and text etcd's rpctypes give it.
        let cases = [
            (Error::EmptyKey, Code::InvalidArgument, text::EMPTY_KEY),
            (
                Error::KeyNotFound,
                Code::InvalidArgument,
                text::KEY_NOT_FOUND,
            ),
            (
                Error::ValueProvided,
                Code::InvalidArgument,
                text::VALUE_PROVIDED,
            ),
            (
                Error::LeaseProvided,
                Code::InvalidArgument,
                text::LEASE_PROVIDED,
            ),
            (Error::TooManyOps, Code::InvalidArgument, text::TOO_MANY_OPS),
            (
                Error::DuplicateKey,
                Code::InvalidArgument,
                text::DUPLICATE_KEY,
            ),
            (
                Error::InvalidSortOption,
                Code::InvalidArgument,
                text::INVALID_SORT_OPTION,
            ),
            (
                Error::Compacted {
                    required: 1,
                    compacted: 2,
                },
                Code::OutOfRange,
                text::COMPACTED,
            ),
            (
                Error::FutureRevision {
                    required: 9,
                    current: 2,
                },
                Code::OutOfRange,
                text::FUTURE_REV,
            ),
            (
                Error::LeaseNotFound(1),
                Code::NotFound,
                text::LEASE_NOT_FOUND,
            ),
            (
                Error::LeaseExists(1),
                Code::FailedPrecondition,
                text::LEASE_EXIST,
            ),
            (
                Error::LeaseTtlTooLarge,
                Code::OutOfRange,
                text::LEASE_TTL_TOO_LARGE,
            ),
            (
                Error::RequestTooLarge,
                Code::InvalidArgument,
                text::REQUEST_TOO_LARGE,
            ),
            (Error::Timeout, Code::Unavailable, text::TIMEOUT),
            (Error::Stopped, Code::Unavailable, text::STOPPED),
        ];
        for (err, code, msg) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code);
            assert_eq!(status.message(), msg);
        }
    }
}
