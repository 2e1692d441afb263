//! Session-token verification as Clerk's SDK does it: RS256 only, a key looked up by `kid` in
//! the cached key set (or the one configured PEM key), `exp`/`nbf` with 5 s leeway, no `iat` in
//! the future, the configured `iss`, a `sub`, an allowed `azp`, and a size cap before decoding.
//! Dev tokens go through this same code.

use std::{collections::HashSet, sync::Arc};

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::auth::jwks::JwksCache;
use crate::domain::{GlobalRole, Org, UserPrincipal};

/// Tokens longer than this are refused without being decoded.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;
const LEEWAY_SECS: u64 = 5;

/// Where verification keys come from.
pub enum KeySource {
    /// One key (Clerk's PEM, or the dev issuer's own), whatever the `kid`.
    Static(Arc<DecodingKey>),
    /// Clerk's JWKS endpoint, cached.
    Jwks(Arc<JwksCache>),
}

pub struct Verifier {
    pub keys: KeySource,
    pub issuer: String,
    pub authorized_parties: Vec<String>,
    pub role_claim: String,
    pub admin_users: HashSet<String>,
}

/// Why a token was refused; the message is safe to show the caller.
#[derive(Debug, PartialEq, Eq)]
pub struct Rejected(pub String);

fn rejected(message: impl Into<String>) -> Rejected {
    Rejected(message.into())
}

#[derive(Deserialize)]
struct Claims {
    sub: Option<String>,
    exp: i64,
    iat: Option<i64>,
    azp: Option<String>,
    email: Option<String>,
    org_id: Option<String>,
    org_role: Option<String>,
    org_slug: Option<String>,
    #[serde(default)]
    org_permissions: Vec<String>,
    o: Option<OrgV2>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}

/// Clerk's v2 organisation claim.
#[derive(Deserialize)]
struct OrgV2 {
    id: String,
    rol: Option<String>,
    slg: Option<String>,
    #[serde(default)]
    per: Option<String>,
}

impl Verifier {
    pub async fn verify(&self, token: &str) -> Result<UserPrincipal, Rejected> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(rejected(format!("The token is longer than {MAX_TOKEN_BYTES} bytes.")));
        }
        let header = decode_header(token).map_err(|_| rejected("The token is not a well-formed JWT."))?;
        if header.alg != Algorithm::RS256 {
            return Err(rejected("Only RS256-signed tokens are accepted."));
        }
        let key = match &self.keys {
            KeySource::Static(key) => key.clone(),
            KeySource::Jwks(cache) => {
                let kid = header.kid.as_deref().ok_or_else(|| rejected("The token has no key id (kid)."))?;
                cache.key(kid).await?
            }
        };
        let mut validation = Validation::new(Algorithm::RS256);
        validation.leeway = LEEWAY_SECS;
        validation.validate_nbf = true;
        validation.validate_aud = false;
        validation.set_issuer(&[&self.issuer]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        let claims = decode::<Claims>(token, &key, &validation).map_err(|e| rejected(describe(&e)))?.claims;

        let now = Utc::now().timestamp();
        if claims.iat.is_some_and(|iat| iat > now + LEEWAY_SECS as i64) {
            return Err(rejected("The token was issued in the future."));
        }
        let id = claims.sub.filter(|s| !s.is_empty()).ok_or_else(|| rejected("The token has no subject (sub)."))?;
        if let Some(azp) = &claims.azp
            && !self.authorized_parties.is_empty()
            && !self.authorized_parties.contains(azp)
        {
            return Err(rejected("The token was issued for another application (azp)."));
        }
        let role = if self.admin_users.contains(&id) || claim_at(&claims.rest, &self.role_claim) == Some("admin") {
            GlobalRole::Admin
        } else {
            GlobalRole::Member
        };
        let org = match (claims.o, claims.org_id) {
            (Some(o), _) => Some(Org {
                id: o.id,
                role: o.rol,
                slug: o.slg,
                permissions: o.per.map(|p| p.split(',').map(str::to_string).collect()).unwrap_or_default(),
            }),
            (None, Some(id)) => {
                Some(Org { id, role: claims.org_role, slug: claims.org_slug, permissions: claims.org_permissions })
            }
            (None, None) => None,
        };
        let expires_at = DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(Utc::now);
        Ok(UserPrincipal { id, role, email: claims.email, org, expires_at })
    }
}

/// A string claim by dotted path (`role`, `metadata.role`).
fn claim_at<'a>(claims: &'a Map<String, Value>, path: &str) -> Option<&'a str> {
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    value.as_str()
}

fn describe(err: &jsonwebtoken::errors::Error) -> String {
    use jsonwebtoken::errors::ErrorKind::*;
    match err.kind() {
        ExpiredSignature => "The token has expired.".into(),
        ImmatureSignature => "The token is not valid yet (nbf).".into(),
        InvalidIssuer => "The token was issued by someone else (iss).".into(),
        MissingRequiredClaim(claim) => format!("The token lacks the `{claim}` claim."),
        InvalidSignature => "The token's signature does not verify.".into(),
        InvalidAlgorithm => "Only RS256-signed tokens are accepted.".into(),
        _ => "The token is not valid.".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_claims_are_read_by_dotted_path() {
        let claims: Map<String, Value> =
            serde_json::from_value(serde_json::json!({"role": "admin", "metadata": {"role": "member"}})).unwrap();
        assert_eq!(claim_at(&claims, "role"), Some("admin"));
        assert_eq!(claim_at(&claims, "metadata.role"), Some("member"));
        assert_eq!(claim_at(&claims, "metadata.missing"), None);
    }
}
