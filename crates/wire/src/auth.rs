//! Users, roles and tokens: who may read, write and administer what (DESIGN.md §17).
//!
//! Off until `POST /v1/auth/enable`. Users, roles and the token signing key are replicated
//! state (commands in the log, [`AuthCommand`]), so every node decides alike and a token
//! issued by one node is accepted by all of them, across failovers.
//!
//! A request is checked twice: at the edge, before anything is proposed (a clear 401 or 403
//! at once), and again when its command is applied ([`authorize`] against the replicated
//! state at that point of the log). The second check is the one that counts: a node whose
//! state lags (it has not applied a revocation yet) may let a request through the first
//! check, but the write it proposes is refused at apply on every replica alike.
//!
//! This module is policy only: storage supplies the records ([`AuthState`]), the HTTP layer
//! the credentials.

use std::io;

use serde::Deserialize;
use serde::Serialize;

/// The built-in role: membership, backup and auth itself, and every key. It has no record
/// and cannot be changed or deleted.
pub const ADMIN_ROLE: &str = "admin";

/// Longest user or role name: names appear in every token and every wrapped command.
pub const MAX_NAME_BYTES: usize = 128;
/// Longest password accepted: Argon2 takes any length, but an unbounded one is a cheap way
/// to make a node hash megabytes per login.
pub const MAX_PASSWORD_BYTES: usize = 1024;
/// Users and roles a cluster may hold: the "does an admin remain" checks iterate them at
/// apply, and every node keeps them all.
pub const MAX_USERS: usize = 1024;
pub const MAX_ROLES: usize = 1024;
/// Roles per user and grants per role: a permission check walks them on every request.
pub const MAX_ROLES_PER_USER: usize = 32;
pub const MAX_GRANTS_PER_ROLE: usize = 64;
/// Length of the token signing key (HMAC-SHA256's block-sized key).
pub const SIGNING_KEY_BYTES: usize = 32;

/// Who sent a command, as the node that received it established.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Principal {
    /// A user. `revision`: the revision of the user record the credential (token or
    /// password) was checked against, so a change to the user revokes it even for a command
    /// already in flight; `None` for a client certificate, whose name is its proof.
    User { name: String, revision: Option<u64> },
    /// A cluster member (the peer token or a peer-CA certificate). It can already forge Raft
    /// messages, so it is not restricted further.
    Member,
}

impl std::fmt::Display for Principal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Principal::User { name, .. } => write!(f, "user {name:?}"),
            Principal::Member => f.write_str("a cluster member"),
        }
    }
}

/// One permission of a role: read and/or write every key starting with `prefix` (`""`: all).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub prefix: String,
    pub read: bool,
    pub write: bool,
}

/// A user as stored. `revision`: the log index of its last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    /// Argon2id, PHC string format (algorithm, parameters, salt and hash).
    pub password_hash: String,
    pub roles: Vec<String>,
    pub revision: u64,
}

/// A role as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    pub grants: Vec<Grant>,
    pub revision: u64,
}

/// A change to users, roles or the auth switch; a replicated command. The password hash is
/// computed before proposing (its salt is random), so apply stays deterministic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthCommand {
    /// Creates or changes a user; `None` keeps the current password or roles (a new user
    /// needs a password).
    PutUser {
        name: String,
        password_hash: Option<String>,
        roles: Option<Vec<String>>,
    },
    DeleteUser {
        name: String,
    },
    PutRole {
        name: String,
        grants: Vec<Grant>,
    },
    DeleteRole {
        name: String,
    },
    /// Turns authentication on with a fresh signing key (made by the proposing node), unless
    /// it is on already. Refused unless a user holding `admin` exists.
    Enable {
        signing_key: Vec<u8>,
    },
    Disable,
}

impl std::fmt::Display for AuthCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthCommand::PutUser { name, .. } => write!(f, "put user {name:?}"),
            AuthCommand::DeleteUser { name } => write!(f, "delete user {name:?}"),
            AuthCommand::PutRole { name, grants } => write!(f, "put role {name:?} ({} grants)", grants.len()),
            AuthCommand::DeleteRole { name } => write!(f, "delete role {name:?}"),
            AuthCommand::Enable { .. } => f.write_str("enable auth"),
            AuthCommand::Disable => f.write_str("disable auth"),
        }
    }
}

/// Why a command was refused at apply: a deterministic result, like a failed precondition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Refusal {
    /// No credential, or one that no longer holds (user deleted or changed): 401.
    Unauthenticated(String),
    /// A valid credential without the permission: 403.
    Forbidden(String),
    /// An auth change that cannot be made (unknown role, last admin, a limit): 409.
    Invalid(String),
}

/// What a request needs.
#[derive(Debug, Clone, Copy)]
pub enum Need<'a> {
    /// Read this key.
    Read(&'a str),
    /// List keys under this prefix: a read grant must cover the whole prefix.
    ReadPrefix(&'a str),
    Write(&'a str),
    /// Delete every key under this prefix: a write grant must cover the whole prefix.
    WritePrefix(&'a str),
    /// Membership, backup, users and roles.
    Admin,
    /// Grant, renew or revoke leases: any write grant (a lease holds keys only where its
    /// holder may write them, each checked when a key is put with it).
    Lease,
}

impl std::fmt::Display for Need<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Need::Read(key) => write!(f, "read key {key:?}"),
            Need::ReadPrefix(prefix) => write!(f, "list keys under {prefix:?}"),
            Need::Write(key) => write!(f, "write key {key:?}"),
            Need::WritePrefix(prefix) => write!(f, "delete keys under {prefix:?}"),
            Need::Admin => f.write_str("administer the cluster (role admin)"),
            Need::Lease => f.write_str("use leases (any write grant)"),
        }
    }
}

/// The replicated auth records, as storage (or an apply batch in progress) holds them.
pub trait AuthState {
    fn enabled(&self) -> io::Result<bool>;
    fn user(&self, name: &str) -> io::Result<Option<UserRecord>>;
    fn role(&self, name: &str) -> io::Result<Option<RoleRecord>>;
}

/// Whether `principal` (`None`: no credential) may do what `need` says in `state`.
/// With auth off, everything is allowed. Errors are storage errors only.
pub fn authorize(
    state: &impl AuthState,
    principal: Option<&Principal>,
    need: Need<'_>,
) -> io::Result<Result<(), Refusal>> {
    if !state.enabled()? {
        return Ok(Ok(()));
    }
    let (name, revision) = match principal {
        None => {
            return Ok(Err(Refusal::Unauthenticated(
                "authentication is enabled: send a token (Authorization: Bearer, from POST /v1/auth/token) or a \
                 client certificate"
                    .into(),
            )))
        }
        Some(Principal::Member) => return Ok(Ok(())),
        Some(Principal::User { name, revision }) => (name, revision),
    };
    let Some(user) = state.user(name)? else {
        return Ok(Err(Refusal::Unauthenticated(format!("user {name:?} does not exist"))));
    };
    if revision.is_some_and(|revision| revision != user.revision) {
        return Ok(Err(Refusal::Unauthenticated(format!(
            "the credential of user {name:?} was revoked (the user changed since); log in again"
        ))));
    }
    if user.roles.iter().any(|role| role == ADMIN_ROLE) {
        return Ok(Ok(()));
    }
    for role in &user.roles {
        let Some(role) = state.role(role)? else { continue };
        if role.grants.iter().any(|grant| grant_covers(grant, need)) {
            return Ok(Ok(()));
        }
    }
    Ok(Err(Refusal::Forbidden(format!("user {name:?} may not {need}"))))
}

fn grant_covers(grant: &Grant, need: Need<'_>) -> bool {
    match need {
        Need::Read(key) => grant.read && key.starts_with(&grant.prefix),
        Need::ReadPrefix(prefix) => grant.read && prefix.starts_with(&grant.prefix),
        Need::Write(key) => grant.write && key.starts_with(&grant.prefix),
        Need::WritePrefix(prefix) => grant.write && prefix.starts_with(&grant.prefix),
        Need::Admin => false,
        Need::Lease => grant.write,
    }
}

/// The rules for user and role names: short, printable, no `/` or `:` (they would be
/// ambiguous in paths and in the CLI's `user:password`).
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Err(format!("a {kind} name has 1 to {MAX_NAME_BYTES} bytes"));
    }
    if name.chars().any(|c| c.is_control() || c.is_whitespace() || c == '/' || c == ':') {
        return Err(format!("a {kind} name has no spaces, control characters, '/' or ':'"));
    }
    Ok(())
}

impl AuthCommand {
    /// Shape checks before proposing (the API checks the same on the way in).
    pub fn check(&self) -> Result<(), String> {
        match self {
            AuthCommand::PutUser { name, password_hash, roles } => {
                check_name("user", name)?;
                if password_hash.as_ref().is_some_and(|hash| hash.len() > 512) {
                    return Err("the password hash is too long".into());
                }
                if let Some(roles) = roles {
                    if roles.len() > MAX_ROLES_PER_USER {
                        return Err(format!("a user has at most {MAX_ROLES_PER_USER} roles"));
                    }
                    roles.iter().try_for_each(|role| check_name("role", role))?;
                }
                Ok(())
            }
            AuthCommand::DeleteUser { name } => check_name("user", name),
            AuthCommand::PutRole { name, grants } => {
                check_name("role", name)?;
                if name == ADMIN_ROLE {
                    return Err(format!("role {ADMIN_ROLE:?} is built in and cannot be changed"));
                }
                if grants.len() > MAX_GRANTS_PER_ROLE {
                    return Err(format!("a role has at most {MAX_GRANTS_PER_ROLE} grants"));
                }
                if grants.iter().any(|grant| grant.prefix.len() > crate::limits::MAX_KEY_BYTES_CEILING) {
                    return Err("a grant's prefix is longer than any key can be".into());
                }
                Ok(())
            }
            AuthCommand::DeleteRole { name } => {
                check_name("role", name)?;
                if name == ADMIN_ROLE {
                    return Err(format!("role {ADMIN_ROLE:?} is built in and cannot be deleted"));
                }
                Ok(())
            }
            AuthCommand::Enable { signing_key } if signing_key.len() != SIGNING_KEY_BYTES => {
                Err("the signing key has the wrong length".into())
            }
            AuthCommand::Enable { .. } | AuthCommand::Disable => Ok(()),
        }
    }
}

// ----- passwords -----

/// Hashes a password with Argon2id (the argon2 crate's defaults: 19 MiB, 2 passes, 1 lane,
/// OWASP's recommendation) and a random salt. Costs tens of milliseconds: run it off the async
/// workers, a bounded number at a time (`limits::MAX_CONCURRENT_PASSWORD_HASHES`).
pub fn hash_password(password: &str) -> Result<String, String> {
    use argon2::password_hash::PasswordHasher;
    use argon2::password_hash::SaltString;
    use ring::rand::SecureRandom;
    let mut salt = [0u8; 16];
    ring::rand::SystemRandom::new().fill(&mut salt).map_err(|_| "no system randomness".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| e.to_string())
}

/// Whether `password` matches the PHC-format `hash` (same cost as hashing).
pub fn verify_password(hash: &str, password: &str) -> bool {
    use argon2::password_hash::PasswordHash;
    use argon2::password_hash::PasswordVerifier;
    PasswordHash::new(hash)
        .is_ok_and(|hash| argon2::Argon2::default().verify_password(password.as_bytes(), &hash).is_ok())
}

/// Checked against when a login names an unknown user, so that the answer takes as long as
/// for a wrong password and does not tell which users exist.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_password("not a password of anyone").unwrap_or_default())
}

/// A fresh random signing key.
pub fn new_signing_key() -> Result<Vec<u8>, String> {
    use ring::rand::SecureRandom;
    let mut key = vec![0u8; SIGNING_KEY_BYTES];
    ring::rand::SystemRandom::new().fill(&mut key).map_err(|_| "no system randomness".to_string())?;
    Ok(key)
}

// ----- tokens -----

/// What a token says. Signed with the cluster's replicated key (HMAC-SHA256), so any node
/// checks it without asking another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenClaims {
    pub user: String,
    /// The user record's revision at login: any change to the user revokes the token.
    pub revision: u64,
    /// The issuing node's applied index: a node behind it waits to catch up before judging.
    pub applied_index: u64,
    /// Wall-clock expiry (Unix ms), set by the issuing node; nodes' clocks must agree to well
    /// within the token lifetime.
    pub expires_at_unix_ms: u64,
}

const TOKEN_PREFIX: &str = "qkv1.";

/// `qkv1.<claims, base64url JSON>.<HMAC-SHA256, base64url>`.
pub fn issue_token(signing_key: &[u8], claims: &TokenClaims) -> String {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let payload = engine.encode(serde_json::to_vec(claims).unwrap_or_default());
    let signed = format!("{TOKEN_PREFIX}{payload}");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, signing_key);
    let tag = ring::hmac::sign(&key, signed.as_bytes());
    format!("{signed}.{}", engine.encode(tag.as_ref()))
}

/// Whether `token` looks like one of ours (and not, say, the peer token).
pub fn is_token(token: &str) -> bool {
    token.starts_with(TOKEN_PREFIX)
}

/// The claims of a token signed with `signing_key` and not expired at `now_unix_ms`.
pub fn verify_token(signing_key: &[u8], token: &str, now_unix_ms: u64) -> Result<TokenClaims, String> {
    use base64::Engine;
    let engine = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let (signed, tag) = token.rsplit_once('.').ok_or("malformed token")?;
    let tag = engine.decode(tag).map_err(|_| "malformed token")?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, signing_key);
    ring::hmac::verify(&key, signed.as_bytes(), &tag)
        .map_err(|_| "invalid token (bad signature, or issued before auth was last enabled)")?;
    let payload = signed.strip_prefix(TOKEN_PREFIX).ok_or("malformed token")?;
    let claims: TokenClaims = serde_json::from_slice(&engine.decode(payload).map_err(|_| "malformed token")?)
        .map_err(|_| "malformed token")?;
    if claims.expires_at_unix_ms <= now_unix_ms {
        return Err("the token has expired; log in again".into());
    }
    Ok(claims)
}

/// The issuer's applied index of a token, read without checking its signature: only to decide
/// whether to catch up before checking it.
pub fn unverified_applied_index(token: &str) -> Option<u64> {
    use base64::Engine;
    let (signed, _) = token.rsplit_once('.')?;
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(signed.strip_prefix(TOKEN_PREFIX)?).ok()?;
    serde_json::from_slice::<TokenClaims>(&payload).ok().map(|claims| claims.applied_index)
}

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    #[derive(Default)]
    struct Records {
        enabled: bool,
        users: HashMap<String, UserRecord>,
        roles: HashMap<String, RoleRecord>,
    }

    impl AuthState for Records {
        fn enabled(&self) -> io::Result<bool> {
            Ok(self.enabled)
        }
        fn user(&self, name: &str) -> io::Result<Option<UserRecord>> {
            Ok(self.users.get(name).cloned())
        }
        fn role(&self, name: &str) -> io::Result<Option<RoleRecord>> {
            Ok(self.roles.get(name).cloned())
        }
    }

    fn user(name: &str, revision: Option<u64>) -> Principal {
        Principal::User { name: name.into(), revision }
    }

    /// Goal: grants cover keys by prefix, reads and writes separately; a listing needs a
    /// grant covering its whole prefix; admin needs the admin role; a changed or deleted user
    /// is unauthenticated, not merely forbidden; with auth off everything passes.
    #[test]
    fn permissions_follow_roles_grants_and_revisions() {
        let mut records = Records::default();
        assert_eq!(authorize(&records, None, Need::Admin).unwrap(), Ok(()));
        records.enabled = true;
        let grants = vec![
            Grant { prefix: "app/".into(), read: true, write: false },
            Grant { prefix: "app/mine/".into(), read: true, write: true },
        ];
        records.roles.insert("app".into(), RoleRecord { grants, revision: 3 });
        records.users.insert(
            "alice".into(),
            UserRecord { password_hash: String::new(), roles: vec!["app".into()], revision: 5 },
        );
        records.users.insert(
            "root".into(),
            UserRecord { password_hash: String::new(), roles: vec![ADMIN_ROLE.into()], revision: 6 },
        );
        let alice = user("alice", Some(5));
        let allowed = |principal: &Principal, need| authorize(&records, Some(principal), need).unwrap();
        assert_eq!(allowed(&alice, Need::Read("app/x")), Ok(()));
        assert_eq!(allowed(&alice, Need::Write("app/mine/x")), Ok(()));
        assert_eq!(allowed(&alice, Need::ReadPrefix("app/sub/")), Ok(()));
        assert_eq!(allowed(&alice, Need::WritePrefix("app/mine/sub/")), Ok(()));
        for need in [
            Need::Write("app/x"),
            Need::Read("other"),
            Need::ReadPrefix("ap"),
            Need::ReadPrefix(""),
            Need::WritePrefix("app/"),
            Need::WritePrefix("app/mi"),
            Need::Admin,
        ] {
            assert!(matches!(allowed(&alice, need), Err(Refusal::Forbidden(_))), "{need}");
        }
        assert_eq!(allowed(&user("root", None), Need::Admin), Ok(()));
        assert_eq!(allowed(&Principal::Member, Need::Write("x")), Ok(()));
        assert!(matches!(allowed(&user("alice", Some(4)), Need::Read("app/x")), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(allowed(&user("bob", None), Need::Read("app/x")), Err(Refusal::Unauthenticated(_))));
        assert!(matches!(authorize(&records, None, Need::Read("app/x")).unwrap(), Err(Refusal::Unauthenticated(_))));
    }

    /// Goal: a token verifies with its key only, not after its expiry, not when altered.
    #[test]
    fn tokens_are_signed_and_expire() {
        let key = new_signing_key().unwrap();
        let claims = TokenClaims { user: "alice".into(), revision: 5, applied_index: 9, expires_at_unix_ms: 2_000 };
        let token = issue_token(&key, &claims);
        assert!(is_token(&token));
        assert_eq!(verify_token(&key, &token, 1_999), Ok(claims.clone()));
        assert!(verify_token(&key, &token, 2_000).unwrap_err().contains("expired"));
        assert!(verify_token(&new_signing_key().unwrap(), &token, 0).is_err());
        let forged = issue_token(&key, &TokenClaims { user: "root".into(), ..claims });
        let (payload, _) = forged.rsplit_once('.').unwrap();
        let (_, tag) = token.rsplit_once('.').unwrap();
        assert!(verify_token(&key, &format!("{payload}.{tag}"), 0).is_err());
        for garbage in ["", "qkv1.", "qkv1..", "qkv1.e30.AAAA", "qkv1.%%%.%%%"] {
            assert!(verify_token(&key, garbage, 0).is_err(), "{garbage:?}");
        }
    }

    /// Goal: Argon2id hashes verify the right password only, and are salted.
    #[test]
    fn passwords_hash_with_argon2id() {
        let hash = hash_password("correct horse").unwrap();
        assert!(hash.starts_with("$argon2id$"), "{hash}");
        assert!(verify_password(&hash, "correct horse"));
        assert!(!verify_password(&hash, "correct horse "));
        assert_ne!(hash, hash_password("correct horse").unwrap());
        assert!(!verify_password("not a hash", "x"));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("user", "alice").is_ok());
        for bad in ["", "a b", "a/b", "a:b", "a\nb", &"x".repeat(MAX_NAME_BYTES + 1)] {
            assert!(check_name("user", bad).is_err(), "{bad:?}");
        }
    }
}
