//! The dev issuer: with no Clerk configuration the server signs its own RS256 tokens with a key
//! kept in the data folder (so tokens survive restarts) and publishes it as a JWKS.

use std::{path::Path, sync::Arc, time::Duration};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use rsa::{
    RsaPrivateKey,
    pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding},
    traits::PublicKeyParts,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::{domain::GlobalRole, error::AppError};

/// The `iss` of dev tokens.
pub const ISSUER: &str = "ensemble-dev";
const KEY_FILE: &str = "dev-jwt-key.pem";

pub struct DevIssuer {
    encoding: EncodingKey,
    pub decoding: Arc<DecodingKey>,
    pub kid: String,
    pub jwks: Value,
}

impl DevIssuer {
    /// Where the key lives in `data_dir`.
    pub fn key_path(data_dir: &Path) -> std::path::PathBuf {
        data_dir.join(KEY_FILE)
    }

    /// Loads the key from `data_dir`, creating it (2048-bit RSA) on first start.
    pub async fn load_or_create(data_dir: &Path) -> Result<Self, AppError> {
        let path = Self::key_path(data_dir);
        let pem = match tokio::fs::read_to_string(&path).await {
            Ok(pem) => pem,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::info!(path = %path.display(), "creating the dev signing key");
                let pem = tokio::task::spawn_blocking(generate_pem).await.map_err(AppError::internal)??;
                // Another instance sharing the folder may have made one meanwhile: it wins.
                if !write_private(&path, &pem)? {
                    return Box::pin(Self::load_or_create(data_dir)).await;
                }
                pem
            }
            Err(e) => {
                return Err(AppError::internal(format!("cannot read {}: {e}", path.display())));
            }
        };
        Self::from_pem(&pem).map_err(|e| AppError::internal(format!("{} is not a usable RSA key: {e}", path.display())))
    }

    pub fn from_pem(pem: &str) -> Result<Self, String> {
        let key = RsaPrivateKey::from_pkcs8_pem(pem).map_err(|e| e.to_string())?;
        let n = URL_SAFE_NO_PAD.encode(key.n().to_bytes_be());
        let e = URL_SAFE_NO_PAD.encode(key.e().to_bytes_be());
        let kid = hex::encode(&Sha256::digest(key.n().to_bytes_be())[..8]);
        let decoding = DecodingKey::from_rsa_components(&n, &e).map_err(|e| e.to_string())?;
        let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        let jwks = json!({"keys": [{"kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": e}]});
        Ok(Self { encoding, decoding: Arc::new(decoding), kid, jwks })
    }

    /// A session token for `user`, valid for `ttl`.
    pub fn sign(&self, user: &str, email: Option<&str>, role: GlobalRole, ttl: Duration) -> Result<String, AppError> {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "sub": user, "iss": ISSUER, "iat": now, "nbf": now, "exp": now + ttl.as_secs() as i64,
            "role": role.to_string(),
        });
        if let Some(email) = email {
            claims["email"] = json!(email);
        }
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, &claims, &self.encoding).map_err(AppError::internal)
    }
}

fn generate_pem() -> Result<String, AppError> {
    let key = RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).map_err(AppError::internal)?;
    Ok(key.to_pkcs8_pem(LineEnding::LF).map_err(AppError::internal)?.to_string())
}

/// Writes the key beside `path`, then links it in place whole (readers never see half a key);
/// false when a key is there already.
fn write_private(path: &Path, pem: &str) -> Result<bool, AppError> {
    use std::io::Write;
    let cannot = |e: std::io::Error| AppError::internal(format!("cannot create {}: {e}", path.display()));
    let draft = path.with_extension(format!("pem.{}", uuid::Uuid::new_v4().simple()));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written =
        options.open(&draft).and_then(|mut file| file.write_all(pem.as_bytes()).and_then(|()| file.sync_all()));
    let linked = written.and_then(|()| std::fs::hard_link(&draft, path));
    let _ = std::fs::remove_file(&draft);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(cannot(e)),
    }
}
