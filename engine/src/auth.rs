//! Authentication of the REST API, ThingsBoard-style: the tenant administrator of the
//! configuration file and the users of the directory (tenant administrators and customer
//! users an administrator created, once they activated their accounts), passwords kept as
//! Argon2 hashes, JWT access and refresh tokens carried in `X-Authorization: Bearer ...`.
//!
//! Tokens are bound to the user that exists now: they name its user id and carry a
//! fingerprint of its credentials, so a token of another (or a former, or a deleted) user, or
//! one issued before a password change, is refused; a refresh checks the same. A user's role
//! and customer are read from the directory at every check, not from the token, so a change
//! takes effect at once. Logins pass two
//! failure counts (per username, per address) and a bounded set of hashing threads; a logout
//! revokes its session (`revocation`).

mod hashing;
mod limits;
mod revocation;

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actors::directory::{Authority, Directory, User};
use actors::metrics::{AUTH_LOCKOUTS, AUTH_LOGINS, AUTH_LOGOUTS, AUTH_TOKENS_REFUSED};
use actors::model::{TenantId, now_ms};
use argon2::password_hash::{self, Output, PasswordHash, PasswordHasher, Salt, SaltString};
use argon2::{Argon2, Block};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use parking_lot::Mutex;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::{info, warn};
use uuid::Uuid;

use crate::config::{AuthConfig, DEMO_PASSWORD, DEMO_USERNAME};
use hashing::{HashPool, Scratch};
use limits::{Locked, LoginLimits, Policy};
use revocation::Revocations;

/// ThingsBoard's id of "no customer".
pub const NULL_CUSTOMER: &str = "13814000-1dd2-11b2-8080-808080808080";
const ISSUER: &str = "engine";
const SCOPE_REFRESH: &str = "REFRESH_TOKEN";
/// How long a login refused because every hashing thread is busy should wait.
const OVERLOADED_RETRY: Duration = Duration::from_secs(1);

/// The administrator, as a password check on a hashing thread needs it.
struct Admin {
    username: String,
    user_id: Uuid,
    /// Changes whenever the username or the password hash does; tokens carry it.
    credentials: Uuid,
    /// No `password_hash` is configured: the demo account.
    demo: bool,
    password: StoredHash,
}

impl Admin {
    /// Slow on purpose (Argon2). The hash is checked even for another username, so the time
    /// an answer takes does not tell which names exist.
    fn accepts(&self, scratch: &mut Scratch, username: &str, password: &str) -> bool {
        self.password.matches(scratch, password) && username == self.username
    }
}

/// `auth.password_hash`, parsed once: the Argon2 instance its parameters make, its salt and
/// the output a right password produces.
struct StoredHash {
    argon2: Argon2<'static>,
    salt: Vec<u8>,
    output: Output,
}

impl StoredHash {
    fn parse(phc: &str) -> anyhow::Result<StoredHash> {
        let hash = PasswordHash::new(phc)
            .map_err(|e| anyhow::anyhow!("auth.password_hash is not a PHC string: {e}"))?;
        let invalid = |e: password_hash::Error| {
            anyhow::anyhow!(
                "auth.password_hash is not an Argon2 hash `engine hash-password` could make: {e}"
            )
        };
        let algorithm = argon2::Algorithm::try_from(hash.algorithm).map_err(invalid)?;
        let version = match hash.version {
            Some(v) => argon2::Version::try_from(v).map_err(|e| invalid(e.into()))?,
            None => argon2::Version::default(),
        };
        let params = argon2::Params::try_from(&hash).map_err(invalid)?;
        let (Some(salt), Some(output)) = (hash.salt, hash.hash) else {
            anyhow::bail!("auth.password_hash has no salt or no hash");
        };
        let mut buf = [0u8; Salt::MAX_LENGTH];
        let salt = salt.decode_b64(&mut buf).map_err(invalid)?.to_vec();
        Ok(StoredHash {
            argon2: Argon2::new(algorithm, version, params),
            salt,
            output,
        })
    }

    /// What `PasswordVerifier::verify_password` does, in the caller's memory buffer instead of
    /// a fresh allocation of the whole memory cost per check.
    fn matches(&self, scratch: &mut Scratch, password: &str) -> bool {
        let blocks = self.argon2.params().block_count();
        if scratch.len() < blocks {
            scratch.resize(blocks, Block::default());
        }
        let computed = Output::init_with(self.output.len(), |out| {
            self.argon2
                .hash_password_into_with_memory(
                    password.as_bytes(),
                    &self.salt,
                    out,
                    &mut scratch[..blocks],
                )
                .map_err(|_| password_hash::Error::Password)
        });
        // `Output` compares in constant time.
        computed.is_ok_and(|computed| computed == self.output)
    }
}

pub struct Auth {
    admin: Arc<Admin>,
    /// The users an administrator created; `None` in tests of the administrator alone.
    directory: Option<Arc<Directory>>,
    tenant_id: TenantId,
    encoding: EncodingKey,
    decoding: DecodingKey,
    token_ttl: Duration,
    refresh_ttl: Duration,
    allow_demo_remote: bool,
    limits: Arc<Mutex<LoginLimits>>,
    hashing: HashPool,
    revoked: Revocations,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Claims {
    sub: String,
    scopes: Vec<String>,
    user_id: Uuid,
    tenant_id: Uuid,
    customer_id: String,
    enabled: bool,
    is_public: bool,
    /// One login and its refreshes, as ThingsBoard's `sessionId`: what a logout revokes.
    session_id: Uuid,
    /// The fingerprint of the credentials the token was issued under.
    credentials: Uuid,
    iss: String,
    iat: i64,
    exp: i64,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TokenPair {
    pub token: String,
    pub refresh_token: String,
}

/// Who made an authenticated request.
#[derive(Clone, Debug, PartialEq)]
pub struct Principal {
    pub username: String,
    pub user_id: Uuid,
    pub tenant_id: TenantId,
    pub authority: Authority,
    /// The customer of a `CUSTOMER_USER`.
    pub customer_id: Option<Uuid>,
    /// The administrator of the configuration file (not a directory user).
    pub is_configured_admin: bool,
    /// The login this token belongs to.
    pub session: Uuid,
}

impl Principal {
    pub fn is_tenant_admin(&self) -> bool {
        self.authority == Authority::TenantAdmin
    }
}

/// Who a token is issued for.
struct Account {
    username: String,
    user_id: Uuid,
    authority: Authority,
    customer_id: Option<Uuid>,
    credentials: Uuid,
}

impl Account {
    fn of_user(user: &User) -> Account {
        Account {
            username: user.email.clone(),
            user_id: user.id,
            authority: user.authority,
            customer_id: user.customer_id,
            credentials: user.credentials(),
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("Authentication failed")]
    Missing,
    #[error("Invalid username or password")]
    BadCredentials,
    /// Expired, or outdated by a credential change or a logout (ThingsBoard answers those
    /// "Token has expired" too, so that clients log in again).
    #[error("Token has expired")]
    Expired,
    #[error("Invalid JWT token")]
    Invalid,
}

/// Why a login was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum LoginError {
    #[error("Invalid username or password")]
    BadCredentials,
    /// A user that has not activated the account yet.
    #[error("User account is not active")]
    NotActive,
    /// The username failed too often lately.
    #[error("User account is locked due to security policy")]
    UserLocked(Duration),
    /// The address failed too often lately.
    #[error("Too many failed logins from this address, try again later")]
    AddressLimited(Duration),
    /// Every hashing thread is busy and the queue is full.
    #[error("Too many logins at once, try again later")]
    Overloaded,
    /// The demo account is asked for from another machine.
    #[error(
        "The demo account accepts logins from this machine only: configure auth.username and \
         auth.password_hash (or set auth.allow_demo_remote)"
    )]
    DemoRemote,
    /// The hashing threads are gone (the engine is stopping).
    #[error("Authentication is unavailable")]
    Unavailable,
}

impl LoginError {
    /// How long the client should wait before trying again, when that is known.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            LoginError::UserLocked(d) | LoginError::AddressLimited(d) => Some(*d),
            LoginError::Overloaded => Some(OVERLOADED_RETRY),
            _ => None,
        }
    }

    /// The `outcome` of `engine_auth_logins_total`.
    fn outcome(&self) -> &'static str {
        match self {
            LoginError::BadCredentials => "bad_credentials",
            LoginError::NotActive => "not_active",
            LoginError::UserLocked(_) => "user_locked",
            LoginError::AddressLimited(_) => "address_limited",
            LoginError::Overloaded => "overloaded",
            LoginError::DemoRemote => "demo_remote",
            LoginError::Unavailable => "unavailable",
        }
    }
}

impl From<Locked> for LoginError {
    fn from(locked: Locked) -> Self {
        match locked {
            Locked::User(left) => LoginError::UserLocked(left),
            Locked::Address(left) => LoginError::AddressLimited(left),
        }
    }
}

/// Where a login comes from, as far as this engine can see.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Peer {
    /// The TCP peer's address.
    pub address: Option<IpAddr>,
    /// The request carries a proxy's forwarding header: the client is someone else.
    pub forwarded: bool,
}

impl Peer {
    /// A client on this machine: a loopback peer that does not forward for someone else.
    pub fn is_local(&self) -> bool {
        !self.forwarded && self.address.is_some_and(|a| a.to_canonical().is_loopback())
    }
}

/// Hashes a password into an Argon2 PHC string for `auth.password_hash`.
pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let mut salt = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut salt);
    let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow::anyhow!("salt: {e}"))?;
    Ok(Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map_err(|e| anyhow::anyhow!("hashing failed: {e}"))?
        .to_string())
}

/// The name failed logins are counted under: e-mails are matched without regard to case, so
/// changing the case of one does not start a new count.
fn lockout_key(username: &str) -> String {
    username.to_lowercase()
}

fn now_secs() -> i64 {
    now_ms() / 1000
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2)
}

impl Auth {
    pub fn new(config: &AuthConfig, data_dir: &Path) -> anyhow::Result<Auth> {
        let demo = config.password_hash.is_none();
        let password_hash = match &config.password_hash {
            Some(hash) => hash.clone(),
            None if config.allow_demo_remote => {
                warn!(
                    username = DEMO_USERNAME,
                    "no administrator configured: the demo account {DEMO_USERNAME} / {DEMO_PASSWORD} \
                     accepts logins from every address (auth.allow_demo_remote = true): anyone \
                     who reaches this engine can administer it"
                );
                hash_password(DEMO_PASSWORD)?
            }
            None => {
                warn!(
                    username = DEMO_USERNAME,
                    "no administrator configured: the demo account {DEMO_USERNAME} / {DEMO_PASSWORD} \
                     is active and accepts logins only from loopback peers (this machine); set \
                     auth.username and auth.password_hash to administer this engine from elsewhere"
                );
                hash_password(DEMO_PASSWORD)?
            }
        };
        let secret = match &config.jwt_secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => load_or_create_secret(&data_dir.join("jwt-secret"))?,
        };
        let tenant_id = TenantId::from_name(&config.tenant_name);
        let user_id = Uuid::new_v5(&tenant_id.0, format!("user:{}", config.username).as_bytes());
        // The demo account's hash is made anew (with a new salt) at each start: its
        // fingerprint is of the fact that it is the demo account, so that its tokens survive a
        // restart like any other administrator's.
        let credentials_material = if demo { "demo account" } else { &password_hash };
        let credentials = Uuid::new_v5(&user_id, credentials_material.as_bytes());
        let threads = match config.max_concurrent_logins {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let hashing = HashPool::new(threads, config.login_queue_capacity)?;
        info!(
            threads = hashing.threads(),
            queue = config.login_queue_capacity,
            "login password checks bounded"
        );
        let (window, lockout) = (config.failed_login_window, config.lockout_duration);
        let limits = LoginLimits::new(
            Policy {
                max_failures: config.max_failed_logins,
                window,
                lockout,
            },
            Policy {
                max_failures: config.max_failed_logins_per_address,
                window,
                lockout,
            },
            config.max_tracked_failures,
        );
        let revoked = Revocations::open(
            &data_dir.join("revoked-sessions.json"),
            config.max_revoked_sessions,
            now_secs(),
        )?;
        Ok(Auth {
            directory: None,
            admin: Arc::new(Admin {
                username: config.username.clone(),
                password: StoredHash::parse(&password_hash)?,
                user_id,
                credentials,
                demo,
            }),
            tenant_id,
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            token_ttl: config.token_expiration,
            refresh_ttl: config.refresh_token_expiration,
            allow_demo_remote: config.allow_demo_remote,
            limits: Arc::new(Mutex::new(limits)),
            hashing,
            revoked,
        })
    }

    /// Users of `directory` may log in too.
    pub fn with_directory(mut self, directory: Arc<Directory>) -> Auth {
        self.directory = Some(directory);
        self
    }

    /// The tenant everything of this engine belongs to.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    /// The configured administrator's login name: no directory user may take it.
    pub fn admin_username(&self) -> &str {
        &self.admin.username
    }

    /// Hashes a new password on a login thread (Argon2 is slow on purpose); refused when they
    /// are all busy.
    pub async fn hash_new_password(&self, password: String) -> Result<String, LoginError> {
        self.hashing
            .try_run(move |_| hash_password(&password))
            .map_err(|_| LoginError::Overloaded)?
            .await
            .map_err(|_| LoginError::Unavailable)?
            .map_err(|_| LoginError::Unavailable)
    }

    /// Whether `password` is the directory user's, checked on a login thread.
    pub async fn check_password(&self, user: &User, password: String) -> Result<bool, LoginError> {
        let Some(phc) = user.password_hash.clone() else {
            return Ok(false);
        };
        self.hashing
            .try_run(move |scratch| {
                StoredHash::parse(&phc).is_ok_and(|stored| stored.matches(scratch, &password))
            })
            .map_err(|_| LoginError::Overloaded)?
            .await
            .map_err(|_| LoginError::Unavailable)
    }

    /// A new session for a directory user (an activation, a password change).
    pub fn issue_for(&self, user: &User) -> TokenPair {
        self.issue(&Account::of_user(user), Uuid::new_v4())
    }

    fn admin_account(&self) -> Account {
        Account {
            username: self.admin.username.clone(),
            user_id: self.admin.user_id,
            authority: Authority::TenantAdmin,
            customer_id: None,
            credentials: self.admin.credentials,
        }
    }

    /// The directory user a login names, when it is not the configured administrator.
    fn directory_user(&self, username: &str) -> Option<Arc<User>> {
        if username == self.admin.username {
            return None;
        }
        self.directory.as_ref()?.user_by_email(username)
    }

    /// Checks a login and opens a session. The password is checked on a hashing thread; the
    /// answer comes at once when the login is refused before that (demo account from afar,
    /// locked username or address, full queue).
    pub async fn login(
        &self,
        username: String,
        password: String,
        peer: Peer,
    ) -> Result<TokenPair, LoginError> {
        let result = self.check_login(username, password, peer).await;
        let outcome = result
            .as_ref()
            .map_or_else(LoginError::outcome, |_| "success");
        metrics::counter!(AUTH_LOGINS, "outcome" => outcome).increment(1);
        result
    }

    async fn check_login(
        &self,
        username: String,
        password: String,
        peer: Peer,
    ) -> Result<TokenPair, LoginError> {
        if self.admin.demo && !self.allow_demo_remote && !peer.is_local() {
            return Err(LoginError::DemoRemote);
        }
        let address = peer.address;
        self.limits
            .lock()
            .check(&lockout_key(&username), address, Instant::now())?;
        let user = self.directory_user(&username);
        let user_hash = match &user {
            Some(u) => match u.password_hash.as_deref().map(StoredHash::parse) {
                Some(Ok(stored)) => Some(stored),
                // Not activated yet: no password to check.
                _ => return Err(LoginError::NotActive),
            },
            None => None,
        };
        let (admin, limits, name) = (self.admin.clone(), self.limits.clone(), username.clone());
        let key = lockout_key(&username);
        let checked = self
            .hashing
            .try_run(move |scratch| {
                // The username or the address may have been locked while this login waited.
                limits
                    .lock()
                    .check(&lockout_key(&name), address, Instant::now())?;
                Ok::<_, Locked>(match &user_hash {
                    Some(stored) => stored.matches(scratch, &password),
                    // Unknown names are checked against the administrator's hash too, so the
                    // time an answer takes does not tell which names exist.
                    None => admin.accepts(scratch, &name, &password),
                })
            })
            .map_err(|_| LoginError::Overloaded)?
            .await
            .map_err(|_| LoginError::Unavailable)??;
        let mut limits = self.limits.lock();
        if checked {
            limits.succeeded(&key, address);
            let account = match &user {
                Some(u) => Account::of_user(u),
                None => self.admin_account(),
            };
            return Ok(self.issue(&account, Uuid::new_v4()));
        }
        let lockouts = limits.failed(&key, address, Instant::now());
        drop(limits);
        // At most one line per address and per lockout period; names other than the
        // administrator's (a peer chooses them freely) are counted, not logged.
        if lockouts.user {
            metrics::counter!(AUTH_LOCKOUTS, "kind" => "user").increment(1);
            if username == self.admin.username {
                warn!(username = ?username, address = ?address, "administrator locked after failed logins");
            }
        }
        if lockouts.address {
            metrics::counter!(AUTH_LOCKOUTS, "kind" => "address").increment(1);
            warn!(address = ?address, "address locked after failed logins");
        }
        Err(LoginError::BadCredentials)
    }

    /// A new token pair for the session of a valid refresh token, if its administrator is
    /// still the one configured and the session was not logged out.
    pub fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        let (account, session) = self.verify(refresh_token, true)?;
        Ok(self.issue(&account, session))
    }

    pub fn verify_access(&self, token: &str) -> Result<Principal, AuthError> {
        let (account, session) = self.verify(token, false)?;
        Ok(Principal {
            username: account.username,
            user_id: account.user_id,
            tenant_id: self.tenant_id,
            is_configured_admin: account.user_id == self.admin.user_id,
            authority: account.authority,
            customer_id: account.customer_id,
            session,
        })
    }

    /// Ends the caller's session: its access and refresh tokens are refused from now on, on
    /// this node. Writes the revocation list: call it where blocking is allowed.
    pub fn logout(&self, me: &Principal) -> anyhow::Result<()> {
        let now = now_secs();
        // Every token of the session was issued by now and lives at most the longer lifetime.
        let until = now.saturating_add(secs(self.token_ttl.max(self.refresh_ttl)));
        self.revoked.revoke(me.session, until, now)?;
        metrics::counter!(AUTH_LOGOUTS).increment(1);
        Ok(())
    }

    fn issue(&self, account: &Account, session: Uuid) -> TokenPair {
        TokenPair {
            token: self.sign(account, account.authority.as_str(), self.token_ttl, session),
            refresh_token: self.sign(account, SCOPE_REFRESH, self.refresh_ttl, session),
        }
    }

    fn sign(&self, account: &Account, scope: &str, ttl: Duration, session: Uuid) -> String {
        let iat = now_secs();
        let claims = Claims {
            sub: account.username.clone(),
            scopes: vec![scope.to_owned()],
            user_id: account.user_id,
            tenant_id: self.tenant_id.0,
            customer_id: account
                .customer_id
                .map_or_else(|| NULL_CUSTOMER.to_owned(), |c| c.to_string()),
            enabled: true,
            is_public: false,
            session_id: session,
            credentials: account.credentials,
            iss: ISSUER.to_owned(),
            iat,
            exp: iat.saturating_add(secs(ttl)),
        };
        // Signing with an HMAC key over serialisable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &self.encoding)
            .unwrap_or_default()
    }

    fn verify(&self, token: &str, refresh: bool) -> Result<(Account, Uuid), AuthError> {
        let result = self.check_token(token, refresh);
        if let Err((reason, _)) = &result {
            metrics::counter!(AUTH_TOKENS_REFUSED, "reason" => *reason).increment(1);
        }
        result.map_err(|(_, e)| e)
    }

    /// The token's account as it is now and its session, or why it is refused (the metric's
    /// `reason`, and the error).
    fn check_token(
        &self,
        token: &str,
        refresh: bool,
    ) -> Result<(Account, Uuid), (&'static str, AuthError)> {
        let mut validation = Validation::new(Algorithm::HS512);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => ("expired", AuthError::Expired),
                _ => ("invalid", AuthError::Invalid),
            },
        )?;
        let claims = data.claims;
        let scope_ok = claims.scopes.iter().any(|s| {
            if refresh {
                s == SCOPE_REFRESH
            } else {
                Authority::parse(s).is_some()
            }
        });
        if !scope_ok || claims.tenant_id != self.tenant_id.0 {
            return Err(("invalid", AuthError::Invalid));
        }
        let account = if claims.user_id == self.admin.user_id {
            // Signed with this secret, for an administrator that is not the one configured now.
            if claims.sub != self.admin.username {
                return Err(("other_user", AuthError::Invalid));
            }
            self.admin_account()
        } else {
            // A directory user that still exists, in this tenant.
            match self.directory.as_ref().and_then(|d| d.user(claims.user_id)) {
                Some(user) if user.tenant_id == self.tenant_id => Account::of_user(&user),
                Some(_) => return Err(("other_user", AuthError::Invalid)),
                None => return Err(("other_user", AuthError::Invalid)),
            }
        };
        if claims.credentials != account.credentials {
            return Err(("outdated", AuthError::Expired));
        }
        if self.revoked.is_revoked(claims.session_id, claims.iat) {
            return Err(("revoked", AuthError::Expired));
        }
        Ok((account, claims.session_id))
    }
}

fn load_or_create_secret(path: &Path) -> anyhow::Result<Vec<u8>> {
    let b64 = base64::engine::general_purpose::STANDARD;
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        return b64
            .decode(text.trim())
            .map_err(|e| anyhow::anyhow!("{} is not base64: {e}", path.display()));
    }
    let mut secret = vec![0u8; 64];
    rand::thread_rng().fill_bytes(&mut secret);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    write_private(path, b64.encode(&secret).as_bytes())
        .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", path.display()))?;
    Ok(secret)
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOCAL: Peer = Peer {
        address: Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST)),
        forwarded: false,
    };

    fn config(ttl: Duration) -> AuthConfig {
        AuthConfig {
            token_expiration: ttl,
            ..AuthConfig::default()
        }
    }

    fn admin(username: &str, password: &str) -> AuthConfig {
        AuthConfig {
            username: username.into(),
            password_hash: Some(hash_password(password).expect("hash")),
            ..AuthConfig::default()
        }
    }

    fn auth(dir: &Path, config: &AuthConfig) -> Auth {
        Auth::new(config, dir).expect("auth")
    }

    async fn login(auth: &Auth, user: &str, password: &str) -> Result<TokenPair, LoginError> {
        auth.login(user.into(), password.into(), LOCAL).await
    }

    #[tokio::test]
    async fn login_refresh_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = auth(dir.path(), &config(Duration::from_secs(60)));
        assert_eq!(
            login(&auth, DEMO_USERNAME, "wrong").await.err(),
            Some(LoginError::BadCredentials)
        );
        assert_eq!(
            login(&auth, "who@else", DEMO_PASSWORD).await.err(),
            Some(LoginError::BadCredentials)
        );
        let pair = login(&auth, DEMO_USERNAME, DEMO_PASSWORD)
            .await
            .expect("login");
        let me = auth.verify_access(&pair.token).expect("valid");
        assert_eq!(me.username, DEMO_USERNAME);
        // A refresh token is not an access token, and the other way round.
        assert_eq!(
            auth.verify_access(&pair.refresh_token).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(auth.refresh(&pair.token).err(), Some(AuthError::Invalid));
        let again = auth.refresh(&pair.refresh_token).expect("refresh");
        let renewed = auth.verify_access(&again.token).expect("valid");
        assert_eq!(renewed.session, me.session, "a refresh keeps the session");
        assert_eq!(
            auth.verify_access("garbage").err(),
            Some(AuthError::Invalid)
        );
    }

    #[tokio::test]
    async fn expired_tokens_are_refused_and_secrets_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let expired = auth(dir.path(), &config(Duration::ZERO));
        let pair = login(&expired, DEMO_USERNAME, DEMO_PASSWORD)
            .await
            .expect("login");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            expired.verify_access(&pair.token).err(),
            Some(AuthError::Expired)
        );
        // A second instance over the same data dir accepts the first one's tokens.
        let first = auth(dir.path(), &config(Duration::from_secs(60)));
        let token = login(&first, DEMO_USERNAME, DEMO_PASSWORD)
            .await
            .expect("login")
            .token;
        let second = auth(dir.path(), &config(Duration::from_secs(60)));
        assert!(second.verify_access(&token).is_ok());
    }

    #[tokio::test]
    async fn a_configured_hash_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = auth(dir.path(), &admin("admin@example.com", "s3cret"));
        assert!(login(&auth, "admin@example.com", "s3cret").await.is_ok());
        assert!(login(&auth, DEMO_USERNAME, DEMO_PASSWORD).await.is_err());
    }

    #[tokio::test]
    async fn tokens_are_bound_to_the_administrator_configured_now() {
        let dir = tempfile::tempdir().expect("tempdir");
        let demo = auth(dir.path(), &AuthConfig::default());
        let pair = login(&demo, DEMO_USERNAME, DEMO_PASSWORD)
            .await
            .expect("login");
        // Another administrator over the same data dir (same JWT secret).
        let other = auth(dir.path(), &admin("admin@example.com", "s3cret"));
        assert_eq!(
            other.verify_access(&pair.token).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(
            other.refresh(&pair.refresh_token).err(),
            Some(AuthError::Invalid)
        );
        // The same name with a password: the demo account's tokens are outdated.
        let same_name = auth(dir.path(), &admin(DEMO_USERNAME, "new"));
        assert_eq!(
            same_name.verify_access(&pair.token).err(),
            Some(AuthError::Expired)
        );
        assert_eq!(
            same_name.refresh(&pair.refresh_token).err(),
            Some(AuthError::Expired)
        );
    }

    #[tokio::test]
    async fn logout_revokes_the_session_only_and_for_good() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth1 = auth(dir.path(), &AuthConfig::default());
        let gone = login(&auth1, DEMO_USERNAME, DEMO_PASSWORD)
            .await
            .expect("login");
        let kept = login(&auth1, DEMO_USERNAME, DEMO_PASSWORD)
            .await
            .expect("login");
        let me = auth1.verify_access(&gone.token).expect("valid");
        auth1.logout(&me).expect("logout");
        for auth in [&auth1, &auth(dir.path(), &AuthConfig::default())] {
            assert_eq!(
                auth.verify_access(&gone.token).err(),
                Some(AuthError::Expired)
            );
            assert_eq!(
                auth.refresh(&gone.refresh_token).err(),
                Some(AuthError::Expired)
            );
            assert!(auth.verify_access(&kept.token).is_ok());
            assert!(auth.refresh(&kept.refresh_token).is_ok());
        }
    }

    #[tokio::test]
    async fn guesses_lock_the_username_then_the_address() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuthConfig {
            max_failed_logins: 2,
            max_failed_logins_per_address: 3,
            ..AuthConfig::default()
        };
        let auth = auth(dir.path(), &config);
        for _ in 0..2 {
            assert_eq!(
                login(&auth, DEMO_USERNAME, "guess").await.err(),
                Some(LoginError::BadCredentials)
            );
        }
        let locked = login(&auth, DEMO_USERNAME, DEMO_PASSWORD).await.err();
        assert!(
            matches!(locked, Some(LoginError::UserLocked(d)) if d <= config.lockout_duration),
            "{locked:?}"
        );
        assert_eq!(
            login(&auth, "other", "guess").await.err(),
            Some(LoginError::BadCredentials)
        );
        let limited = login(&auth, "other2", "guess").await.err();
        assert!(
            matches!(limited, Some(LoginError::AddressLimited(_))),
            "{limited:?}"
        );
        // Another address is not concerned by the address's lock.
        let elsewhere = Peer {
            address: Some("127.0.0.2".parse().expect("ip")),
            forwarded: false,
        };
        assert_eq!(
            auth.login("other".into(), "guess".into(), elsewhere)
                .await
                .err(),
            Some(LoginError::BadCredentials)
        );
    }

    #[tokio::test]
    async fn the_demo_account_answers_loopback_peers_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let remote = Peer {
            address: Some("192.0.2.7".parse().expect("ip")),
            forwarded: false,
        };
        let demo = auth(dir.path(), &AuthConfig::default());
        assert_eq!(
            demo.login(DEMO_USERNAME.into(), DEMO_PASSWORD.into(), remote)
                .await
                .err(),
            Some(LoginError::DemoRemote)
        );
        let allowed = auth(
            dir.path(),
            &AuthConfig {
                allow_demo_remote: true,
                ..AuthConfig::default()
            },
        );
        assert!(
            allowed
                .login(DEMO_USERNAME.into(), DEMO_PASSWORD.into(), remote)
                .await
                .is_ok()
        );
        let configured = auth(dir.path(), &admin("admin@example.com", "s3cret"));
        assert!(
            configured
                .login("admin@example.com".into(), "s3cret".into(), remote)
                .await
                .is_ok()
        );
    }

    async fn directory() -> Arc<Directory> {
        Arc::new(
            Directory::open(
                Arc::new(actors::directory::MemoryDirectoryStore::default()),
                actors::directory::DirectoryLimits::default(),
            )
            .await
            .expect("directory"),
        )
    }

    async fn customer_of(users: &Directory, tenant: TenantId) -> Uuid {
        let id = Uuid::new_v4();
        users
            .save_customer(actors::directory::Customer {
                id,
                tenant_id: tenant,
                created_time: 0,
                title: id.to_string(),
                contact: actors::directory::Contact::default(),
                additional_info: None,
            })
            .await
            .expect("customer");
        id
    }

    fn customer_user(tenant: TenantId, customer: Uuid, password: Option<&str>) -> User {
        User {
            id: Uuid::new_v4(),
            tenant_id: tenant,
            customer_id: Some(customer),
            created_time: 0,
            email: "Ann@Example.com".into(),
            authority: Authority::CustomerUser,
            first_name: None,
            last_name: None,
            phone: None,
            additional_info: None,
            password_hash: password.map(|p| hash_password(p).expect("hash")),
            activate_token: None,
            activate_expires: 0,
        }
    }

    #[tokio::test]
    async fn directory_users_log_in_with_their_role_read_anew_at_every_check() {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = directory().await;
        let auth = auth(dir.path(), &AuthConfig::default()).with_directory(users.clone());
        let tenant = auth.tenant_id();
        let (a, b) = (
            customer_of(&users, tenant).await,
            customer_of(&users, tenant).await,
        );
        let inactive = customer_user(tenant, a, None);
        users
            .save_user(inactive.clone(), DEMO_USERNAME)
            .await
            .expect("save");
        assert_eq!(
            login(&auth, "ann@example.com", "whatever").await.err(),
            Some(LoginError::NotActive)
        );
        let ann = User {
            password_hash: Some(hash_password("s3cret").expect("hash")),
            ..inactive
        };
        users
            .save_user(ann.clone(), DEMO_USERNAME)
            .await
            .expect("save");
        assert_eq!(
            login(&auth, "ann@example.com", "wrong").await.err(),
            Some(LoginError::BadCredentials)
        );
        let pair = login(&auth, "ANN@example.com", "s3cret")
            .await
            .expect("login");
        let me = auth.verify_access(&pair.token).expect("valid");
        assert_eq!(
            (me.authority, me.customer_id, me.user_id),
            (Authority::CustomerUser, Some(a), ann.id)
        );
        assert!(!me.is_tenant_admin());
        // Moved to another customer: the same token says so at once.
        let moved = User {
            customer_id: Some(b),
            ..ann.clone()
        };
        users
            .save_user(moved.clone(), DEMO_USERNAME)
            .await
            .expect("save");
        assert_eq!(
            auth.verify_access(&pair.token).expect("valid").customer_id,
            Some(b)
        );
        // A new password outdates the tokens; a deleted user's are refused.
        let changed = User {
            password_hash: Some(hash_password("n3w").expect("hash")),
            ..moved
        };
        users
            .save_user(changed.clone(), DEMO_USERNAME)
            .await
            .expect("save");
        assert_eq!(
            auth.verify_access(&pair.token).err(),
            Some(AuthError::Expired)
        );
        assert_eq!(
            auth.refresh(&pair.refresh_token).err(),
            Some(AuthError::Expired)
        );
        let fresh = auth.issue_for(&changed);
        assert!(auth.verify_access(&fresh.token).is_ok());
        users.delete_user(changed.id).await.expect("delete");
        assert_eq!(
            auth.verify_access(&fresh.token).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(
            auth.refresh(&fresh.refresh_token).err(),
            Some(AuthError::Invalid)
        );
        // The configured administrator is still itself, with no customer.
        let admin = login(&auth, DEMO_USERNAME, DEMO_PASSWORD)
            .await
            .expect("login");
        let admin = auth.verify_access(&admin.token).expect("valid");
        assert!(admin.is_tenant_admin() && admin.customer_id.is_none());
    }

    #[tokio::test]
    async fn a_token_of_another_tenant_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let users = directory().await;
        let other = AuthConfig {
            tenant_name: "Other".into(),
            ..AuthConfig::default()
        };
        let ours = auth(dir.path(), &AuthConfig::default()).with_directory(users.clone());
        let theirs = auth(dir.path(), &other).with_directory(users.clone());
        let customer = customer_of(&users, theirs.tenant_id()).await;
        let user = customer_user(theirs.tenant_id(), customer, Some("pw"));
        users
            .save_user(user.clone(), DEMO_USERNAME)
            .await
            .expect("save");
        let pair = theirs.issue_for(&user);
        assert!(theirs.verify_access(&pair.token).is_ok());
        assert_eq!(
            ours.verify_access(&pair.token).err(),
            Some(AuthError::Invalid)
        );
    }

    #[test]
    fn a_stored_hash_is_checked_with_its_own_parameters_in_a_kept_buffer() {
        let cheap = Argon2::new(
            argon2::Algorithm::Argon2i,
            argon2::Version::V0x10,
            argon2::Params::new(64, 1, 1, Some(16)).expect("params"),
        );
        let salt = SaltString::encode_b64(b"0123456789abcdef").expect("salt");
        let phc = cheap
            .hash_password(b"s3cret", &salt)
            .expect("hash")
            .to_string();
        let stored = StoredHash::parse(&phc).expect("parse");
        let mut scratch = Scratch::new();
        assert!(stored.matches(&mut scratch, "s3cret"));
        assert!(!stored.matches(&mut scratch, "s3cret!"));
        assert_eq!(
            scratch.len(),
            64,
            "64 KiB of blocks, kept for the next check"
        );
        for bad in [
            "",
            "plain text",
            "$scrypt$ln=4,r=8,p=1$c2FsdA$aGFzaA",
            "$argon2id$v=19$m=65536",
        ] {
            assert!(StoredHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn local_peers_are_loopback_ones_not_forwarding() {
        let peer = |address: Option<&str>, forwarded| Peer {
            address: address.map(|a| a.parse().expect("ip")),
            forwarded,
        };
        for (address, forwarded, local) in [
            (Some("127.0.0.1"), false, true),
            (Some("127.0.0.2"), false, true),
            (Some("::1"), false, true),
            (Some("::ffff:127.0.0.1"), false, true),
            (Some("127.0.0.1"), true, false),
            (Some("192.0.2.2"), false, false),
            (Some("::ffff:192.0.2.2"), false, false),
            (Some("fd00::2"), false, false),
            (Some("0.0.0.0"), false, false),
            (None, false, false),
        ] {
            assert_eq!(
                peer(address, forwarded).is_local(),
                local,
                "{address:?} forwarded={forwarded}"
            );
        }
    }
}
