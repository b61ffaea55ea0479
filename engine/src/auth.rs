//! Authentication of the REST API, ThingsBoard-style: one tenant administrator, password kept
//! as an Argon2 hash, JWT access and refresh tokens carried in `X-Authorization: Bearer ...`.

use std::path::Path;
use std::time::Duration;

use actors::model::{TenantId, now_ms};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, errors::ErrorKind};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tracing::warn;
use uuid::Uuid;

use crate::config::{AuthConfig, DEMO_PASSWORD, DEMO_USERNAME};

/// ThingsBoard's id of "no customer".
pub const NULL_CUSTOMER: &str = "13814000-1dd2-11b2-8080-808080808080";
const ISSUER: &str = "engine";
const SCOPE_ADMIN: &str = "TENANT_ADMIN";
const SCOPE_REFRESH: &str = "REFRESH_TOKEN";

pub struct Auth {
    username: String,
    password_hash: String,
    tenant_id: TenantId,
    user_id: Uuid,
    encoding: EncodingKey,
    decoding: DecodingKey,
    token_ttl: Duration,
    refresh_ttl: Duration,
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
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("Authentication failed")]
    Missing,
    #[error("Invalid username or password")]
    BadCredentials,
    #[error("Token has expired")]
    Expired,
    #[error("Invalid JWT token")]
    Invalid,
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

impl Auth {
    pub fn new(config: &AuthConfig, data_dir: &Path) -> anyhow::Result<Auth> {
        let password_hash = match &config.password_hash {
            Some(hash) => {
                PasswordHash::new(hash)
                    .map_err(|e| anyhow::anyhow!("auth.password_hash is not a PHC string: {e}"))?;
                hash.clone()
            }
            None => {
                warn!(
                    username = DEMO_USERNAME,
                    "no administrator configured: the demo account {DEMO_USERNAME} / {DEMO_PASSWORD} \
                     is active; set auth.username and auth.password_hash before exposing this engine"
                );
                hash_password(DEMO_PASSWORD)?
            }
        };
        let secret = match &config.jwt_secret {
            Some(secret) => secret.as_bytes().to_vec(),
            None => load_or_create_secret(&data_dir.join("jwt-secret"))?,
        };
        let tenant_id = TenantId::from_name(&config.tenant_name);
        Ok(Auth {
            user_id: Uuid::new_v5(&tenant_id.0, format!("user:{}", config.username).as_bytes()),
            username: config.username.clone(),
            password_hash,
            tenant_id,
            encoding: EncodingKey::from_secret(&secret),
            decoding: DecodingKey::from_secret(&secret),
            token_ttl: config.token_expiration,
            refresh_ttl: config.refresh_token_expiration,
        })
    }

    /// Checks a login. Slow on purpose (Argon2): call it off the async workers. The hash is
    /// checked even for an unknown user so timing does not tell which names exist.
    /// The tenant everything of this engine belongs to.
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub fn login(&self, username: &str, password: &str) -> Result<TokenPair, AuthError> {
        let hash = PasswordHash::new(&self.password_hash).map_err(|_| AuthError::BadCredentials)?;
        let password_ok = Argon2::default()
            .verify_password(password.as_bytes(), &hash)
            .is_ok();
        if password_ok && username == self.username {
            Ok(self.issue())
        } else {
            Err(AuthError::BadCredentials)
        }
    }

    pub fn refresh(&self, refresh_token: &str) -> Result<TokenPair, AuthError> {
        self.verify(refresh_token, SCOPE_REFRESH)?;
        Ok(self.issue())
    }

    pub fn verify_access(&self, token: &str) -> Result<Principal, AuthError> {
        self.verify(token, SCOPE_ADMIN)
    }

    fn issue(&self) -> TokenPair {
        TokenPair {
            token: self.sign(SCOPE_ADMIN, self.token_ttl),
            refresh_token: self.sign(SCOPE_REFRESH, self.refresh_ttl),
        }
    }

    fn sign(&self, scope: &str, ttl: Duration) -> String {
        let iat = now_ms() / 1000;
        let claims = Claims {
            sub: self.username.clone(),
            scopes: vec![scope.to_owned()],
            user_id: self.user_id,
            tenant_id: self.tenant_id.0,
            customer_id: NULL_CUSTOMER.to_owned(),
            enabled: true,
            is_public: false,
            iss: ISSUER.to_owned(),
            iat,
            exp: iat + i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
        };
        // Signing with an HMAC key over serialisable claims cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS512), &claims, &self.encoding)
            .unwrap_or_default()
    }

    fn verify(&self, token: &str, scope: &str) -> Result<Principal, AuthError> {
        let mut validation = Validation::new(Algorithm::HS512);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid,
            },
        )?;
        let claims = data.claims;
        if !claims.scopes.iter().any(|s| s == scope) || claims.tenant_id != self.tenant_id.0 {
            return Err(AuthError::Invalid);
        }
        Ok(Principal {
            username: claims.sub,
            user_id: claims.user_id,
            tenant_id: self.tenant_id,
        })
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

    fn auth(dir: &Path, ttl: Duration) -> Auth {
        let config = AuthConfig {
            token_expiration: ttl,
            ..AuthConfig::default()
        };
        Auth::new(&config, dir).expect("auth")
    }

    #[test]
    fn login_refresh_and_verify() {
        let dir = tempfile::tempdir().expect("tempdir");
        let auth = auth(dir.path(), Duration::from_secs(60));
        assert_eq!(
            auth.login(DEMO_USERNAME, "wrong").err(),
            Some(AuthError::BadCredentials)
        );
        assert_eq!(
            auth.login("who@else", DEMO_PASSWORD).err(),
            Some(AuthError::BadCredentials)
        );
        let pair = auth.login(DEMO_USERNAME, DEMO_PASSWORD).expect("login");
        let me = auth.verify_access(&pair.token).expect("valid");
        assert_eq!(me.username, DEMO_USERNAME);
        // A refresh token is not an access token, and the other way round.
        assert_eq!(
            auth.verify_access(&pair.refresh_token).err(),
            Some(AuthError::Invalid)
        );
        assert_eq!(auth.refresh(&pair.token).err(), Some(AuthError::Invalid));
        let again = auth.refresh(&pair.refresh_token).expect("refresh");
        assert!(auth.verify_access(&again.token).is_ok());
        assert_eq!(
            auth.verify_access("garbage").err(),
            Some(AuthError::Invalid)
        );
    }

    #[test]
    fn expired_tokens_are_refused_and_secrets_persist() {
        let dir = tempfile::tempdir().expect("tempdir");
        let expired = auth(dir.path(), Duration::ZERO);
        let pair = expired.login(DEMO_USERNAME, DEMO_PASSWORD).expect("login");
        std::thread::sleep(Duration::from_millis(1100));
        assert_eq!(
            expired.verify_access(&pair.token).err(),
            Some(AuthError::Expired)
        );
        // A second instance over the same data dir accepts the first one's tokens.
        let first = auth(dir.path(), Duration::from_secs(60));
        let token = first
            .login(DEMO_USERNAME, DEMO_PASSWORD)
            .expect("login")
            .token;
        let second = auth(dir.path(), Duration::from_secs(60));
        assert!(second.verify_access(&token).is_ok());
    }

    #[test]
    fn a_configured_hash_is_used() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = AuthConfig {
            username: "admin@example.com".into(),
            password_hash: Some(hash_password("s3cret").expect("hash")),
            ..AuthConfig::default()
        };
        let auth = Auth::new(&config, dir.path()).expect("auth");
        assert!(auth.login("admin@example.com", "s3cret").is_ok());
        assert!(auth.login(DEMO_USERNAME, DEMO_PASSWORD).is_err());
    }
}
