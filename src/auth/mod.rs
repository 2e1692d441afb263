//! Identity: who a request or websocket comes from. Bad credentials are refused at once;
//! no credentials make an anonymous principal.

pub mod api_key;
pub mod dev;
pub mod guard;
pub mod jwks;
pub mod jwt;
mod sign_in;

use std::{collections::HashSet, sync::Arc};

use axum::http::{HeaderMap, header};
use sea_orm::DatabaseConnection;

pub use self::sign_in::sign_in;
use self::{
    dev::DevIssuer,
    jwks::JwksCache,
    jwt::{KeySource, Verifier},
};
use crate::{
    cache::{Caches, SessionToken, UserId},
    config::Config,
    domain::{GlobalRole, Principal, UserPrincipal},
    error::AppError,
    metrics::CacheStats,
};

pub struct Authenticator {
    verifier: Verifier,
    /// API keys, looked up through the caches.
    pub keys: api_key::KeyStore,
    /// Verified session tokens (a signature check costs more than the rest of a small request)
    /// and users' rows.
    caches: Arc<Caches>,
    /// Present in dev mode: the issuer whose key `verifier` holds.
    pub dev: Option<DevIssuer>,
    db: DatabaseConnection,
}

impl Authenticator {
    /// Clerk's keys, when fetched from `CLERK_JWKS_URL`, are counted in `stats`.
    pub async fn new(
        config: &Config,
        db: DatabaseConnection,
        caches: Arc<Caches>,
        stats: &CacheStats,
    ) -> Result<Self, AppError> {
        let auth = &config.auth;
        let admin_users: HashSet<String> = auth.admin_users.iter().map(|u| u.trim().to_string()).collect();
        let verifier = |keys, issuer: String| Verifier {
            keys,
            issuer,
            authorized_parties: auth.clerk_authorized_parties.clone(),
            role_claim: auth.role_claim.clone(),
            admin_users: admin_users.clone(),
        };
        if auth.is_dev() {
            if config.is_production() {
                return Err(AppError::internal(
                    "dev auth refuses to run with ENSEMBLE_ENV=production: set CLERK_JWKS_URL or CLERK_JWT_KEY, and CLERK_ISSUER",
                ));
            }
            let dev = DevIssuer::load_or_create(&config.data_dir).await?;
            tracing::warn!(
                "DEV AUTH: this server signs its own tokens (no Clerk configured). Get one with `ensemble token --user alice --role admin`. Never expose it."
            );
            let verifier = verifier(KeySource::Static(dev.decoding.clone()), dev::ISSUER.to_string());
            return Ok(Self::assemble(verifier, Some(dev), db, caches));
        }
        let issuer = auth
            .clerk_issuer
            .clone()
            .ok_or_else(|| AppError::internal("CLERK_ISSUER is required with CLERK_JWKS_URL or CLERK_JWT_KEY"))?;
        let keys = match (&auth.clerk_jwt_key, &auth.clerk_jwks_url) {
            (Some(pem), _) => {
                let key = jsonwebtoken::DecodingKey::from_rsa_pem(pem.replace("\\n", "\n").as_bytes())
                    .map_err(|e| AppError::internal(format!("CLERK_JWT_KEY is not an RSA public key: {e}")))?;
                KeySource::Static(Arc::new(key))
            }
            (None, Some(url)) => {
                let refetch_every = std::time::Duration::from_secs(auth.clerk_jwks_refetch_secs);
                KeySource::Jwks(Arc::new(JwksCache::new(url.clone(), refetch_every, stats)))
            }
            (None, None) => return Err(AppError::internal("no Clerk key source is configured")),
        };
        Ok(Self::assemble(verifier(keys, issuer), None, db, caches))
    }

    fn assemble(verifier: Verifier, dev: Option<DevIssuer>, db: DatabaseConnection, caches: Arc<Caches>) -> Self {
        let keys = api_key::KeyStore::new(db.clone(), caches.clone());
        Self { verifier, keys, caches, dev, db }
    }

    /// The principal of an HTTP request: `Authorization: Bearer <token or key>`, `x-api-key`,
    /// or anonymous.
    pub async fn from_headers(&self, headers: &HeaderMap) -> Result<Principal, AppError> {
        if let Some(key) = headers.get("x-api-key") {
            let key = key.to_str().map_err(|_| unauthenticated("The x-api-key header is not readable text."))?;
            return self.from_token(key.trim()).await;
        }
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Ok(Principal::Anonymous);
        };
        let value = value.to_str().map_err(|_| unauthenticated("The Authorization header is not readable text."))?;
        let token = bearer(value).ok_or_else(|| unauthenticated("Use `Authorization: Bearer <token>`."))?;
        self.from_token(token).await
    }

    /// The principal a session token or an API key (`ens_…`) stands for.
    pub async fn from_token(&self, token: &str) -> Result<Principal, AppError> {
        if token.starts_with("ens_") {
            return Ok(Principal::ApiKey(self.keys.authenticate(token).await?));
        }
        let mut user = self.verify(token).await?;
        let stored = self.caches.users.get_or_load(UserId(user.id.clone()), sign_in(&self.db, &user)).await?;
        if stored.deleted_at.is_some() {
            return Err(unauthenticated("This account has been deleted."));
        }
        if stored.role == GlobalRole::Admin {
            user.role = GlobalRole::Admin;
        }
        Ok(Principal::User(user))
    }

    /// The user a session token stands for: from the cache while the token is unexpired, else
    /// checked (signature, issuer, times, parties) and remembered.
    async fn verify(&self, token: &str) -> Result<UserPrincipal, AppError> {
        use sha2::{Digest, Sha256};
        let key = SessionToken(Sha256::digest(token.as_bytes()).into());
        let cached = self.caches.session_tokens.get_if(&key, |user| user.expires_at > chrono::Utc::now()).await;
        if let Some(user) = cached {
            return Ok(user);
        }
        let user = self.verifier.verify(token).await.map_err(|r| unauthenticated(&r.0))?;
        self.caches.session_tokens.insert(key, user.clone()).await;
        Ok(user)
    }
}

/// The token of a `Bearer` credential (the scheme is case-insensitive).
pub fn bearer(value: &str) -> Option<&str> {
    let (scheme, token) = value.trim().split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

fn unauthenticated(message: &str) -> AppError {
    AppError::Unauthenticated(message.to_string())
}

#[cfg(test)]
mod tests {
    use super::bearer;

    #[test]
    fn bearer_tokens_are_read_case_insensitively() {
        assert_eq!(bearer("Bearer abc"), Some("abc"));
        assert_eq!(bearer("bearer   abc "), Some("abc"));
        assert_eq!(bearer("Basic abc"), None);
        assert_eq!(bearer("Bearer "), None);
    }
}
