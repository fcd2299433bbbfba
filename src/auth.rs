//! etcd's auth store: users with bcrypt password hashes, roles with key
//! permissions, `AuthEnable`/`AuthDisable`, simple tokens, and the checks
//! every call makes while auth is on.
//!
//! The state lives in the database (`koine_auth`: one row with the revision,
//! the enabled flag and the users and roles as a protobuf blob), and every
//! change goes through the engine's writer, which reads the row inside its
//! write transaction, applies the change and writes it back: instances on
//! one database apply changes one at a time, in the order the meta row
//! lock gives them. Each instance keeps the committed state in memory for
//! its checks and reloads it when the revision in the database moves: at
//! once for its own changes; for another instance's, when the engine's
//! feed reads the moved stamp with the meta row (PostgreSQL: woken by the
//! change's NOTIFY; MySQL: every `--poll-interval`), and every [`REFRESH`]
//! as a safety net.
//!
//! Tokens are etcd's simple tokens (an opaque string, valid until it has not
//! been used for `--auth-token-ttl`), kept in `koine_auth_token` so that a
//! token handed out by one instance is accepted by every other one. Deleting
//! a user, changing its password or disabling auth removes its tokens.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;

use crate::error::{AuthError, Error, Result};
use crate::mvcc::apply::BatchState;
use crate::mvcc::writer::BoxFut;
use crate::mvcc::{Store, Write};
use crate::proto::authpb;
use crate::proto::authpb::permission::Type as PermType;
use crate::sql::{AuthRow, Db, DbTx};

/// The user and role with every permission.
pub const ROOT: &str = "root";

/// How often an instance looks for auth changes made by the others.
pub const REFRESH: Duration = Duration::from_secs(1);

/// The users and roles as stored: Koine's own message, made of etcd's
/// `authpb` ones.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AuthSnapshot {
    #[prost(message, repeated, tag = "1")]
    pub users: Vec<authpb::User>,
    #[prost(message, repeated, tag = "2")]
    pub roles: Vec<authpb::Role>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct User {
    /// bcrypt hash (empty for a user without password).
    password: Bytes,
    no_password: bool,
    roles: BTreeSet<String>,
}

/// One key permission of a role: `end` empty is the single key, `\0` every
/// key from `key` on (etcd's encoding).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Perm {
    pub key: Bytes,
    pub end: Bytes,
    pub kind: i32,
}

/// The auth store at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    pub revision: i64,
    pub enabled: bool,
    users: BTreeMap<String, User>,
    roles: BTreeMap<String, Vec<Perm>>,
}

/// What a change does besides the state: whose tokens stop working.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Tokens {
    Keep,
    DropUser(String),
    DropAll,
}

/// Whether a change changed anything (etcd does not bump the revision for
/// a change that changes nothing, e.g. granting a role twice, nor for
/// AuthEnable).
enum Outcome {
    Unchanged,
    Changed(Tokens),
    Enabled,
}

fn name(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

impl State {
    fn decode(row: &AuthRow) -> Result<State> {
        let snap = AuthSnapshot::decode(row.state.as_ref())
            .map_err(|e| Error::Internal(format!("auth state: {e}")))?;
        let users = snap
            .users
            .into_iter()
            .map(|u| {
                (
                    name(&u.name),
                    User {
                        password: u.password,
                        no_password: u.options.is_some_and(|o| o.no_password),
                        roles: u.roles.into_iter().collect(),
                    },
                )
            })
            .collect();
        let roles = snap
            .roles
            .into_iter()
            .map(|r| {
                let perms = r
                    .key_permission
                    .into_iter()
                    .map(|p| Perm {
                        key: p.key,
                        end: p.range_end,
                        kind: p.perm_type,
                    })
                    .collect();
                (name(&r.name), perms)
            })
            .collect();
        Ok(State {
            revision: row.revision,
            enabled: row.enabled,
            users,
            roles,
        })
    }

    fn encode(&self) -> AuthRow {
        let snap = AuthSnapshot {
            users: self
                .users
                .iter()
                .map(|(n, u)| authpb::User {
                    name: Bytes::copy_from_slice(n.as_bytes()),
                    password: u.password.clone(),
                    roles: u.roles.iter().cloned().collect(),
                    options: Some(authpb::UserAddOptions {
                        no_password: u.no_password,
                    }),
                })
                .collect(),
            roles: self
                .roles
                .iter()
                .map(|(n, perms)| authpb::Role {
                    name: Bytes::copy_from_slice(n.as_bytes()),
                    key_permission: perms.iter().map(Perm::to_pb).collect(),
                })
                .collect(),
        };
        AuthRow {
            revision: self.revision,
            enabled: self.enabled,
            state: snap.encode_to_vec().into(),
        }
    }

    fn user_mut(&mut self, n: &str) -> std::result::Result<&mut User, AuthError> {
        self.users.get_mut(n).ok_or(AuthError::UserNotFound)
    }

    pub fn user_roles(&self, n: &str) -> std::result::Result<Vec<String>, AuthError> {
        let u = self.users.get(n).ok_or(AuthError::UserNotFound)?;
        Ok(u.roles.iter().cloned().collect())
    }

    pub fn users(&self) -> Vec<String> {
        self.users.keys().cloned().collect()
    }

    pub fn roles(&self) -> Vec<String> {
        self.roles.keys().cloned().collect()
    }

    pub fn role_perms(&self, n: &str) -> std::result::Result<Vec<authpb::Permission>, AuthError> {
        let perms = self.roles.get(n).ok_or(AuthError::RoleNotFound)?;
        Ok(perms.iter().map(Perm::to_pb).collect())
    }

    fn is_admin(&self, user: &str) -> bool {
        self.users.get(user).is_some_and(|u| u.roles.contains(ROOT))
    }
}

impl Perm {
    fn to_pb(&self) -> authpb::Permission {
        authpb::Permission {
            perm_type: self.kind,
            key: self.key.clone(),
            range_end: self.end.clone(),
        }
    }

    fn grants(&self, write: bool) -> bool {
        // A type etcd does not know grants nothing (as etcd: fail closed).
        match PermType::try_from(self.kind) {
            Ok(PermType::Readwrite) => true,
            Ok(PermType::Write) => write,
            Ok(PermType::Read) => !write,
            Err(_) => false,
        }
    }
}

/// A change to the auth store, as the writer applies it.
#[derive(Debug, Clone)]
pub enum Change {
    UserAdd {
        name: String,
        hash: Bytes,
        no_password: bool,
    },
    UserDelete(String),
    UserPassword {
        name: String,
        hash: Bytes,
    },
    UserGrant {
        user: String,
        role: String,
    },
    UserRevoke {
        user: String,
        role: String,
    },
    RoleAdd(String),
    RoleDelete(String),
    RoleGrant {
        role: String,
        perm: Option<Perm>,
    },
    RoleRevoke {
        role: String,
        key: Bytes,
        end: Bytes,
    },
    Enable,
    Disable,
}

/// etcd's `isValidPermissionRange`.
fn valid_perm_range(key: &[u8], end: &[u8]) -> bool {
    !key.is_empty() && (end.is_empty() || end == [0] || key < end)
}

impl Change {
    fn apply(&self, st: &mut State) -> std::result::Result<Outcome, AuthError> {
        use AuthError::*;
        let changed = Outcome::Changed(Tokens::Keep);
        match self {
            Change::UserAdd {
                name,
                hash,
                no_password,
            } => {
                if name.is_empty() {
                    return Err(UserEmpty);
                }
                if st.users.contains_key(name) {
                    return Err(UserExists);
                }
                st.users.insert(
                    name.clone(),
                    User {
                        password: hash.clone(),
                        no_password: *no_password,
                        roles: BTreeSet::new(),
                    },
                );
                Ok(changed)
            }
            Change::UserDelete(name) => {
                if st.enabled && name == ROOT {
                    return Err(InvalidMgmt);
                }
                st.users.remove(name).ok_or(UserNotFound)?;
                Ok(Outcome::Changed(Tokens::DropUser(name.clone())))
            }
            Change::UserPassword { name, hash } => {
                let u = st.user_mut(name)?;
                u.password = hash.clone();
                u.no_password = false;
                Ok(Outcome::Changed(Tokens::DropUser(name.clone())))
            }
            Change::UserGrant { user, role } => {
                st.user_mut(user)?;
                if role != ROOT && !st.roles.contains_key(role) {
                    return Err(RoleNotFound);
                }
                if st.user_mut(user)?.roles.insert(role.clone()) {
                    Ok(changed)
                } else {
                    Ok(Outcome::Unchanged)
                }
            }
            Change::UserRevoke { user, role } => {
                st.user_mut(user)?;
                if st.enabled && user == ROOT && role == ROOT {
                    return Err(InvalidMgmt);
                }
                if !st.user_mut(user)?.roles.remove(role) {
                    return Err(RoleNotGranted);
                }
                Ok(changed)
            }
            Change::RoleAdd(name) => {
                if name.is_empty() {
                    return Err(RoleEmpty);
                }
                if st.roles.contains_key(name) {
                    return Err(RoleExists);
                }
                st.roles.insert(name.clone(), Vec::new());
                Ok(changed)
            }
            Change::RoleDelete(name) => {
                if st.enabled && name == ROOT {
                    return Err(InvalidMgmt);
                }
                st.roles.remove(name).ok_or(RoleNotFound)?;
                for u in st.users.values_mut() {
                    u.roles.remove(name);
                }
                Ok(changed)
            }
            Change::RoleGrant { role, perm } => {
                let perm = perm.as_ref().ok_or(PermissionNotGiven)?;
                if !valid_perm_range(&perm.key, &perm.end) {
                    return Err(InvalidMgmt);
                }
                let perms = st.roles.get_mut(role).ok_or(RoleNotFound)?;
                match perms
                    .iter_mut()
                    .find(|p| p.key == perm.key && p.end == perm.end)
                {
                    Some(p) => p.kind = perm.kind,
                    None => {
                        perms.push(perm.clone());
                        perms.sort_by(|a, b| (&a.key, &a.end).cmp(&(&b.key, &b.end)));
                    }
                }
                Ok(changed)
            }
            Change::RoleRevoke { role, key, end } => {
                let perms = st.roles.get_mut(role).ok_or(RoleNotFound)?;
                let before = perms.len();
                perms.retain(|p| !(p.key == *key && p.end == *end));
                if perms.len() == before {
                    return Err(PermissionNotGranted);
                }
                Ok(changed)
            }
            Change::Enable => {
                if st.enabled {
                    return Ok(Outcome::Unchanged);
                }
                let root = st.users.get(ROOT).ok_or(RootUserNotExist)?;
                if !root.roles.contains(ROOT) {
                    return Err(RootRoleNotExist);
                }
                st.enabled = true;
                Ok(Outcome::Enabled)
            }
            Change::Disable => {
                if !st.enabled {
                    return Ok(Outcome::Unchanged);
                }
                st.enabled = false;
                Ok(Outcome::Changed(Tokens::DropAll))
            }
        }
    }
}

impl Write for Change {
    type Output = Arc<State>;

    fn apply<'a>(&'a self, tx: &'a mut DbTx, state: &'a mut BatchState) -> BoxFut<'a, Arc<State>> {
        Box::pin(async move {
            let mut st = State::decode(&tx.auth().await?)?;
            match Change::apply(self, &mut st).map_err(Error::Auth)? {
                Outcome::Unchanged => {}
                Outcome::Enabled => {
                    tx.auth_update(&st.encode()).await?;
                    state.notify = true;
                }
                Outcome::Changed(tokens) => {
                    state.notify = true;
                    st.revision += 1;
                    tx.auth_update(&st.encode()).await?;
                    match tokens {
                        Tokens::Keep => {}
                        Tokens::DropUser(u) => tx.tokens_delete(Some(u.as_bytes())).await?,
                        Tokens::DropAll => tx.tokens_delete(None).await?,
                    }
                }
            }
            Ok(Arc::new(st))
        })
    }
}

/// A token handed out, or used again (its expiry pushed forward).
struct TokenWrite {
    token: String,
    user: Option<String>,
    ttl_ms: i64,
}

impl Write for TokenWrite {
    type Output = ();

    fn apply<'a>(&'a self, tx: &'a mut DbTx, _state: &'a mut BatchState) -> BoxFut<'a, ()> {
        Box::pin(async move {
            match &self.user {
                Some(u) => {
                    tx.token_insert(self.token.as_bytes(), u.as_bytes(), self.ttl_ms)
                        .await
                }
                None => tx.token_touch(self.token.as_bytes(), self.ttl_ms).await,
            }
        })
    }
}

/// A token this instance has seen lately.
struct Known {
    user: String,
    /// The auth revision it was checked at: a newer state checks again.
    revision: i64,
    last_use: Instant,
    /// When its expiry in the database was last pushed forward.
    stored: Instant,
}

/// Who is calling, once auth is on.
pub struct Caller {
    pub user: String,
    pub roles: Vec<String>,
    admin: bool,
    perms: Vec<Perm>,
    /// Its token names an auth revision older than the store's (a JWT
    /// handed out before a change): etcd refuses its key operations with
    /// "revision of auth store is old", and clients authenticate again.
    stale: bool,
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        self.admin
    }

    /// etcd's isOpPermitted: the token's revision is current, and the
    /// caller may read (or write) every key of `[key, end)`.
    pub fn check(&self, write: bool, key: &[u8], end: &[u8]) -> std::result::Result<(), AuthError> {
        if self.stale {
            Err(AuthError::OldRevision)
        } else if self.may(write, key, end) {
            Ok(())
        } else {
            Err(AuthError::PermissionDenied)
        }
    }

    /// etcd's checks of a lease's keys: root may, anyone else needs the
    /// permission on each key.
    pub fn check_all(&self, write: bool, keys: &[Bytes]) -> std::result::Result<(), AuthError> {
        if self.admin {
            return Ok(());
        }
        keys.iter().try_for_each(|k| self.check(write, k, b""))
    }

    /// Whether the caller may read (or write) every key of `[key, end)`
    /// (etcd's range encoding): the union of its roles' permissions must
    /// cover it.
    pub fn may(&self, write: bool, key: &[u8], end: &[u8]) -> bool {
        if self.admin {
            return true;
        }
        let ivs: Vec<(Vec<u8>, Option<Vec<u8>>)> = self
            .perms
            .iter()
            .filter(|p| p.grants(write))
            .map(|p| interval(&p.key, &p.end))
            .collect();
        covers(ivs, interval(key, end))
    }
}

/// `[start, end)` of etcd's (key, range_end); `None` is unbounded.
fn interval(key: &[u8], end: &[u8]) -> (Vec<u8>, Option<Vec<u8>>) {
    if end.is_empty() {
        let mut next = key.to_vec();
        next.push(0);
        (key.to_vec(), Some(next))
    } else if end == [0] {
        (key.to_vec(), None)
    } else {
        (key.to_vec(), Some(end.to_vec()))
    }
}

/// Whether the union of `ivs` covers `want`.
fn covers(mut ivs: Vec<(Vec<u8>, Option<Vec<u8>>)>, want: (Vec<u8>, Option<Vec<u8>>)) -> bool {
    let (mut at, want_end) = want;
    if want_end.as_ref().is_some_and(|e| *e <= at) {
        return true;
    }
    ivs.sort();
    for (start, end) in ivs {
        if start > at {
            break;
        }
        match end {
            None => return true,
            Some(e) if e > at => at = e,
            Some(_) => continue,
        }
        if want_end.as_ref().is_some_and(|w| at >= *w) {
            return true;
        }
    }
    false
}

/// etcd's `--auth-token`: simple tokens (stored, shared by instances) or
/// signed JWTs (any instance with the key verifies them; nothing stored).
pub enum TokenKind {
    Simple,
    Jwt(Box<Jwt>),
}

pub struct Jwt {
    alg: jsonwebtoken::Algorithm,
    signing: Option<jsonwebtoken::EncodingKey>,
    verifying: jsonwebtoken::DecodingKey,
    ttl: Duration,
}

/// etcd's JWT claims.
#[derive(serde::Serialize, serde::Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

impl TokenKind {
    /// Parses etcd's `--auth-token` value.
    pub fn parse(spec: &str) -> anyhow::Result<TokenKind> {
        use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey};
        let mut parts = spec.split(',');
        match parts.next().unwrap_or("") {
            "simple" if spec == "simple" => return Ok(TokenKind::Simple),
            "jwt" => {}
            other => anyhow::bail!("--auth-token: unknown token type {other:?} (simple or jwt)"),
        }
        let (mut public, mut private, mut method, mut ttl) =
            (None, None, None, Duration::from_secs(300));
        for opt in parts {
            let (k, v) = opt
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("--auth-token: {opt:?} is not key=value"))?;
            match k {
                "pub-key" => public = Some(std::fs::read(v)?),
                "priv-key" => private = Some(std::fs::read(v)?),
                "sign-method" => method = Some(v.to_string()),
                "ttl" => ttl = humantime::parse_duration(v)?,
                other => anyhow::bail!("--auth-token: unknown option {other:?}"),
            }
        }
        let method = method.ok_or_else(|| anyhow::anyhow!("--auth-token jwt needs sign-method"))?;
        let alg: Algorithm = method
            .parse()
            .map_err(|_| anyhow::anyhow!("--auth-token: unknown sign-method {method:?}"))?;
        let (signing, verifying) = match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let secret = private
                    .ok_or_else(|| anyhow::anyhow!("--auth-token: {method} needs priv-key"))?;
                (
                    Some(EncodingKey::from_secret(&secret)),
                    DecodingKey::from_secret(&secret),
                )
            }
            Algorithm::ES256 | Algorithm::ES384 => {
                let public = public
                    .ok_or_else(|| anyhow::anyhow!("--auth-token: {method} needs pub-key"))?;
                (
                    private.map(|p| EncodingKey::from_ec_pem(&p)).transpose()?,
                    DecodingKey::from_ec_pem(&public)?,
                )
            }
            Algorithm::EdDSA => {
                anyhow::bail!("--auth-token: sign-method {method} is not supported")
            }
            _ => {
                let public = public
                    .ok_or_else(|| anyhow::anyhow!("--auth-token: {method} needs pub-key"))?;
                (
                    private.map(|p| EncodingKey::from_rsa_pem(&p)).transpose()?,
                    DecodingKey::from_rsa_pem(&public)?,
                )
            }
        };
        Ok(TokenKind::Jwt(Box::new(Jwt {
            alg,
            signing,
            verifying,
            ttl,
        })))
    }
}

/// The auth store of one Koine instance.
pub struct Auth {
    db: Db,
    store: Store,
    state: RwLock<Arc<State>>,
    tokens: Mutex<HashMap<String, Known>>,
    kind: TokenKind,
    ttl: Duration,
    bcrypt_cost: u32,
    serial: AtomicU64,
}

pub type AuthRef = Arc<Auth>;

impl Auth {
    /// Loads the committed state and starts following changes.
    pub async fn start(
        db: Db,
        store: Store,
        kind: TokenKind,
        ttl: Duration,
        bcrypt_cost: u32,
        cancel: CancellationToken,
    ) -> Result<AuthRef> {
        let state = State::decode(&db.auth().await?)?;
        let auth = Arc::new(Auth {
            db,
            store,
            state: RwLock::new(Arc::new(state)),
            tokens: Mutex::new(HashMap::new()),
            kind,
            ttl,
            bcrypt_cost,
            serial: AtomicU64::new(1),
        });
        // Reloaded when the feed sees the stamp move (another instance's
        // change: at its NOTIFY on PostgreSQL, at the next poll on MySQL),
        // and every REFRESH as a safety net.
        let mut stamps = auth.store.auth_stamps();
        let weak = Arc::downgrade(&auth);
        tokio::spawn(async move {
            loop {
                let moved = async {
                    if stamps.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                };
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(REFRESH) => {}
                    _ = moved => {}
                }
                let Some(auth) = weak.upgrade() else { return };
                if let Err(e) = auth.refresh().await {
                    tracing::debug!(error = %e, "auth state refresh failed");
                }
            }
        });
        Ok(auth)
    }

    /// The state as this instance knows it.
    pub fn state(&self) -> Arc<State> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn install(&self, st: Arc<State>) {
        let mut cur = self.state.write().unwrap_or_else(|e| e.into_inner());
        // Enabling leaves the revision as it is; nothing else does.
        if (st.revision, st.enabled) > (cur.revision, cur.enabled) {
            *cur = st;
        }
    }

    /// Reloads the state if another instance changed it.
    async fn refresh(&self) -> Result<()> {
        let st = self.state();
        if self.db.auth_stamp().await? != st.revision * 2 + st.enabled as i64 {
            self.install(Arc::new(State::decode(&self.db.auth().await?)?));
        }
        Ok(())
    }

    /// Applies a change through the writer; the new state is in force here
    /// when it returns.
    pub async fn change(&self, c: Change) -> Result<Arc<State>> {
        let (st, _) = self.store.write(c).await?;
        self.install(st.clone());
        Ok(st)
    }

    /// A bcrypt hash of `password` at the configured cost (on a blocking
    /// thread: it takes tens of milliseconds by design).
    pub async fn hash(&self, password: String) -> Result<Bytes> {
        let cost = self.bcrypt_cost;
        let hash = tokio::task::spawn_blocking(move || bcrypt::hash(password, cost))
            .await
            .map_err(|e| Error::Internal(format!("bcrypt: {e}")))?
            .map_err(|e| Error::Internal(format!("bcrypt: {e}")))?;
        Ok(Bytes::from(hash))
    }

    /// etcd's Authenticate: checks the password and hands out a token.
    pub async fn authenticate(&self, user: &str, password: String) -> Result<String> {
        let st = self.state();
        if !st.enabled {
            return Err(Error::Auth(AuthError::AuthNotEnabled));
        }
        let u = st
            .users
            .get(user)
            .ok_or(Error::Auth(AuthError::AuthFailed))?;
        if u.no_password {
            return Err(Error::Auth(AuthError::NoPasswordUser));
        }
        let hash = String::from_utf8_lossy(&u.password).into_owned();
        let ok = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .map_err(|e| Error::Internal(format!("bcrypt: {e}")))?
            .unwrap_or(false);
        if !ok {
            return Err(Error::Auth(AuthError::AuthFailed));
        }
        if let TokenKind::Jwt(jwt) = &self.kind {
            let key = jwt.signing.as_ref().ok_or_else(|| {
                Error::Internal("this instance has no priv-key to sign tokens with".into())
            })?;
            let exp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                + jwt.ttl;
            let claims = Claims {
                username: user.to_string(),
                revision: st.revision as u64,
                exp: exp.as_secs(),
            };
            return jsonwebtoken::encode(&jsonwebtoken::Header::new(jwt.alg), &claims, key)
                .map_err(|e| Error::Internal(format!("signing a token: {e}")));
        }
        // etcd's simple token: 16 random letters, a dot and a serial.
        let letters: String = (0..16)
            .map(|_| {
                let i = (rand::random::<u32>() % 52) as u8;
                (if i < 26 { b'a' + i } else { b'A' + i - 26 }) as char
            })
            .collect();
        let token = format!("{letters}.{}", self.serial.fetch_add(1, Ordering::Relaxed));
        self.store
            .write(TokenWrite {
                token: token.clone(),
                user: Some(user.to_string()),
                ttl_ms: self.ttl.as_millis() as i64,
            })
            .await?;
        let now = Instant::now();
        self.remember(&token, user, st.revision, now, now);
        Ok(token)
    }

    fn remember(&self, token: &str, user: &str, revision: i64, last_use: Instant, stored: Instant) {
        let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
        let ttl = self.ttl;
        tokens.retain(|_, k| k.last_use.elapsed() < ttl);
        tokens.insert(
            token.to_string(),
            Known {
                user: user.to_string(),
                revision,
                last_use,
                stored,
            },
        );
    }

    /// Who sends `md` (its `token` header, as etcd's clients send it):
    /// `None` while auth is off; etcd's errors for a missing or unknown
    /// token while it is on.
    pub async fn caller(&self, md: &MetadataMap) -> Result<Option<Caller>> {
        let st = self.state();
        if !st.enabled {
            return Ok(None);
        }
        let token = md
            .get("token")
            .or_else(|| md.get("authorization"))
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let from_token = token.is_some();
        let (user, stale) = match token {
            Some(token) => self.user_of(&token, &st).await?,
            // etcd: without a token, the common name of the client's
            // verified TLS certificate is the user.
            None => match md
                .get(crate::serve::CERT_USER_HEADER)
                .and_then(|v| v.to_str().ok())
            {
                Some(cn) => (cn.to_string(), false),
                None => return Err(Error::Auth(AuthError::UserEmpty)),
            },
        };
        let Some(u) = st.users.get(&user) else {
            if from_token {
                return Err(Error::Auth(AuthError::InvalidToken));
            }
            // A certificate's user that does not exist may do nothing.
            return Ok(Some(Caller {
                user,
                roles: Vec::new(),
                admin: false,
                perms: Vec::new(),
                stale,
            }));
        };
        let perms = u
            .roles
            .iter()
            .filter_map(|r| st.roles.get(r))
            .flatten()
            .cloned()
            .collect();
        Ok(Some(Caller {
            admin: st.is_admin(&user),
            roles: u.roles.iter().cloned().collect(),
            user,
            perms,
            stale,
        }))
    }

    /// The user a token names, and whether it names an older auth
    /// revision than `st` (only JWTs carry one: a simple token is dropped
    /// when its user changes).
    async fn user_of(&self, token: &str, st: &State) -> Result<(String, bool)> {
        if let TokenKind::Jwt(jwt) = &self.kind {
            let mut v = jsonwebtoken::Validation::new(jwt.alg);
            // Expired is expired (etcd's JWT check allows no leeway).
            v.leeway = 0;
            return jsonwebtoken::decode::<Claims>(token, &jwt.verifying, &v)
                .map(|t| (t.claims.username, (t.claims.revision as i64) < st.revision))
                .map_err(|_| Error::Auth(AuthError::InvalidToken));
        }
        let now = Instant::now();
        let touch = {
            let mut tokens = self.tokens.lock().unwrap_or_else(|e| e.into_inner());
            match tokens.get_mut(token) {
                Some(k) if k.revision == st.revision && k.last_use.elapsed() < self.ttl => {
                    k.last_use = now;
                    let touch = k.stored.elapsed() > self.ttl / 2;
                    if touch {
                        k.stored = now;
                    }
                    Some((k.user.clone(), touch))
                }
                _ => None,
            }
        };
        if let Some((user, touch)) = touch {
            if touch {
                let store = self.store.clone();
                let w = TokenWrite {
                    token: token.to_string(),
                    user: None,
                    ttl_ms: self.ttl.as_millis() as i64,
                };
                tokio::spawn(async move {
                    if let Err(e) = store.write(w).await {
                        tracing::debug!(error = %e, "refreshing a token's expiry failed");
                    }
                });
            }
            return Ok((user, false));
        }
        match self.db.token(token.as_bytes()).await? {
            Some((user, left_ms)) if left_ms > 0 => {
                let user = name(&user);
                // Stored `ttl - left` ago.
                let age = self
                    .ttl
                    .saturating_sub(Duration::from_millis(left_ms as u64));
                let stored = now.checked_sub(age).unwrap_or(now);
                self.remember(token, &user, st.revision, now, stored);
                Ok((user, false))
            }
            _ => Err(Error::Auth(AuthError::InvalidToken)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn perm(key: &str, end: &str, kind: PermType) -> Perm {
        Perm {
            key: Bytes::copy_from_slice(key.as_bytes()),
            end: Bytes::copy_from_slice(end.as_bytes()),
            kind: kind as i32,
        }
    }

    fn caller(perms: Vec<Perm>) -> Caller {
        Caller {
            user: "u".into(),
            roles: vec!["r".into()],
            admin: false,
            perms,
            stale: false,
        }
    }

    #[test]
    fn a_permission_type_etcd_does_not_know_grants_nothing() {
        let c = caller(vec![Perm {
            key: Bytes::from_static(b"/a"),
            end: Bytes::new(),
            kind: 5,
        }]);
        assert!(!c.may(false, b"/a", b""));
        assert!(!c.may(true, b"/a", b""));
        assert_eq!(c.check(false, b"/a", b""), Err(AuthError::PermissionDenied));
    }

    #[test]
    fn permissions_cover_ranges_as_etcd_merges_them() {
        let c = caller(vec![
            perm("/a", "/c", PermType::Read),
            perm("/c", "/e", PermType::Readwrite),
            perm("/k", "", PermType::Write),
            perm("/z", "\0", PermType::Read),
        ]);
        assert!(c.may(false, b"/a", b""));
        assert!(c.may(false, b"/a", b"/e"), "adjacent ranges merge");
        assert!(!c.may(false, b"/a", b"/f"));
        assert!(!c.may(true, b"/a", b""), "read does not grant write");
        assert!(c.may(true, b"/d", b""), "readwrite grants write");
        assert!(c.may(true, b"/k", b""));
        assert!(!c.may(true, b"/k0", b""), "a single key is only that key");
        assert!(!c.may(false, b"/k", b""));
        assert!(c.may(false, b"/zz", b"\0"), "open-ended to the end");
        assert!(!c.may(false, b"/y", b"\0"));
        assert!(!c.may(false, b"", b"\0"));
    }

    #[test]
    fn the_common_name_is_read_from_the_subject_not_the_issuer() {
        let dir = tempfile::tempdir().unwrap();
        let run = |args: &[&str]| {
            let ok = std::process::Command::new("openssl")
                .current_dir(dir.path())
                .args(args)
                .output()
                .unwrap()
                .status
                .success();
            assert!(ok, "openssl {args:?}");
        };
        run(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "1",
            "-subj",
            "/O=Org/CN=the-ca",
        ]);
        run(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "c.key",
            "-out",
            "c.csr",
            "-subj",
            "/C=DE/O=Koine/CN=alice",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "c.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "c.der",
            "-outform",
            "DER",
            "-days",
            "1",
        ]);
        let der = std::fs::read(dir.path().join("c.der")).unwrap();
        assert_eq!(crate::serve::common_name(&der).as_deref(), Some("alice"));
        assert_eq!(crate::serve::common_name(&der[..40]), None);
    }

    #[test]
    fn a_change_that_changes_nothing_keeps_the_revision() {
        let mut st = State::default();
        let add = |n: &str| Change::UserAdd {
            name: n.into(),
            hash: Bytes::new(),
            no_password: true,
        };
        assert!(matches!(
            add("root").apply(&mut st),
            Ok(Outcome::Changed(_))
        ));
        assert_eq!(
            add("root").apply(&mut st).err(),
            Some(AuthError::UserExists)
        );
        assert_eq!(
            Change::Enable.apply(&mut st).err(),
            Some(AuthError::RootRoleNotExist)
        );
        let grant = Change::UserGrant {
            user: "root".into(),
            role: ROOT.into(),
        };
        assert!(matches!(grant.apply(&mut st), Ok(Outcome::Changed(_))));
        assert!(matches!(grant.apply(&mut st), Ok(Outcome::Unchanged)));
        assert!(matches!(
            Change::Enable.apply(&mut st),
            Ok(Outcome::Enabled)
        ));
        assert!(matches!(
            Change::Enable.apply(&mut st),
            Ok(Outcome::Unchanged)
        ));
        assert_eq!(
            Change::UserDelete("root".into()).apply(&mut st).err(),
            Some(AuthError::InvalidMgmt)
        );
        let row = st.encode();
        assert_eq!(State::decode(&row).unwrap(), st);
    }
}
