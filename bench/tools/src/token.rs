//! `ensemble-bench token`: a session token as Clerk would issue it (RS256, `sub`, `iss`, `exp`,
//! a `role` claim), signed with a PEM key whose public half Ensemble is given as `CLERK_JWT_KEY`.
//! That lets Ensemble run with `ENSEMBLE_ENV=production`, where it refuses its own dev tokens.

use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;

pub fn sign(key_pem: &str, issuer: &str, user: &str, role: &str, ttl_secs: i64) -> Result<String, String> {
    let key = EncodingKey::from_rsa_pem(key_pem.as_bytes()).map_err(|e| format!("not an RSA private key: {e}"))?;
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "sub": user,
        "iss": issuer,
        "iat": now,
        "nbf": now - 5,
        "exp": now + ttl_secs,
        "role": role,
        "email": format!("{user}@example.com"),
    });
    encode(&Header::new(Algorithm::RS256), &claims, &key).map_err(|e| e.to_string())
}
