//! API keys on the wire: `ens_<prefix>_<secret>` (12 + 64 hex characters, 256 bits of secret),
//! looked up by prefix through the caches (an unknown prefix is remembered for a few seconds)
//! and checked against a SHA-256 of the secret in constant time. A revoked key's cache entry is
//! dropped at once; `last_used_at` is written at most once a minute per key, and never for a
//! failed attempt.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::Utc;
use entity::api_keys;
use rand::RngCore;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::{
    cache::{Caches, KeyPrefix, UnknownKeyPrefix},
    domain::{KeyPrincipal, Scope, UserPrincipal},
    error::AppError,
};

const PREFIX_BYTES: usize = 6;
const SECRET_BYTES: usize = 32;
const LAST_USED_EVERY: Duration = Duration::from_secs(60);

/// A freshly made key: the full text (shown once) and what is stored.
pub struct NewSecret {
    pub full: String,
    pub prefix: String,
    pub hash: String,
}

pub fn generate() -> NewSecret {
    let mut prefix = [0u8; PREFIX_BYTES];
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let (prefix, secret) = (hex::encode(prefix), hex::encode(secret));
    NewSecret { full: format!("ens_{prefix}_{secret}"), hash: hash(&secret), prefix }
}

/// Rotation keeps the prefix (and so the key's identity) and makes a new secret.
pub fn regenerate(prefix: &str) -> NewSecret {
    let mut secret = [0u8; SECRET_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let secret = hex::encode(secret);
    NewSecret { full: format!("ens_{prefix}_{secret}"), hash: hash(&secret), prefix: prefix.to_string() }
}

fn hash(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

/// `(prefix, secret)` of a well-formed key text.
pub fn split(text: &str) -> Option<(&str, &str)> {
    let rest = text.strip_prefix("ens_")?;
    let (prefix, secret) = rest.split_once('_')?;
    let hexes = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexes(prefix, PREFIX_BYTES * 2) && hexes(secret, SECRET_BYTES * 2)).then_some((prefix, secret))
}

pub struct KeyStore {
    db: DatabaseConnection,
    /// Keys by prefix, unknown prefixes, and the owners' rows.
    caches: Arc<Caches>,
    last_written: Mutex<HashMap<String, Instant>>,
}

impl KeyStore {
    pub fn new(db: DatabaseConnection, caches: Arc<Caches>) -> Self {
        Self { db, caches, last_written: Mutex::new(HashMap::new()) }
    }

    pub async fn authenticate(&self, text: &str) -> Result<KeyPrincipal, AppError> {
        let refused = || AppError::Unauthenticated("The API key is not valid.".into());
        let (prefix, secret) = split(text).ok_or_else(refused)?;
        let key = self.key(prefix).await?.ok_or_else(refused)?;
        let now = Utc::now();
        let given = hash(secret);
        let current = bool::from(given.as_bytes().ct_eq(key.secret_hash.as_bytes()));
        let previous = key.previous_expires_at.is_some_and(|until| until > now)
            && key.previous_secret_hash.as_ref().is_some_and(|h| bool::from(given.as_bytes().ct_eq(h.as_bytes())));
        if !(current || previous) {
            return Err(refused());
        }
        if key.revoked_at.is_some() {
            return Err(AppError::Unauthenticated("The API key has been revoked.".into()));
        }
        if key.expires_at.is_some_and(|at| at <= now) {
            return Err(AppError::Unauthenticated("The API key has expired.".into()));
        }
        let owner = super::sign_in::stored_user(&self.db, &self.caches, &key.user_id).await?;
        let owner = owner.filter(|owner| owner.deleted_at.is_none()).ok_or_else(refused)?;
        self.touch(&key.id).await;
        let scopes = serde_json::from_value::<Vec<String>>(key.scopes.clone()).unwrap_or_default();
        Ok(KeyPrincipal {
            key_id: key.id.clone(),
            prefix: key.prefix.clone(),
            team_id: key.team_id.clone(),
            scopes: scopes.iter().filter_map(|s| Scope::parse(s)).collect(),
            owner: UserPrincipal {
                id: owner.id.clone(),
                role: owner.role,
                email: owner.email.clone(),
                org: None,
                // The secret given stops working then: a rotated key's previous one at the end
                // of its grace (a websocket signed in with it closes then).
                expires_at: key
                    .expires_at
                    .into_iter()
                    .chain(key.previous_expires_at.filter(|_| !current))
                    .min()
                    .unwrap_or(chrono::DateTime::<Utc>::MAX_UTC),
            },
            daily_token_budget: key.daily_token_budget,
            daily_cost_budget_usd: key.daily_cost_budget_usd,
        })
    }

    /// The key with this prefix, if there is one. A prefix found unknown is refused without a
    /// database read for a few seconds (unless a key is made with it meanwhile).
    async fn key(&self, prefix: &str) -> Result<Option<Arc<api_keys::Model>>, AppError> {
        let unknown = UnknownKeyPrefix(prefix.to_string());
        if self.caches.unknown_api_keys.get(&unknown).await.is_some() {
            return Ok(None);
        }
        let since = self.caches.unknown_api_keys.stamp();
        let load = async {
            let found = api_keys::Entity::find().filter(api_keys::Column::Prefix.eq(prefix)).one(&self.db).await?;
            Ok(found.map(Arc::new))
        };
        let key = self.caches.api_keys.get_or_load_some(KeyPrefix(prefix.to_string()), load).await?;
        if key.is_none() {
            self.caches.unknown_api_keys.keep(since, unknown, ()).await;
        }
        Ok(key)
    }

    /// Records use, writing at most once a minute per key.
    async fn touch(&self, key_id: &str) {
        let due = {
            let Ok(mut written) = self.last_written.lock() else {
                return;
            };
            if written.len() > 100_000 {
                written.clear();
            }
            let due = written.get(key_id).is_none_or(|at| at.elapsed() >= LAST_USED_EVERY);
            if due {
                written.insert(key_id.to_string(), Instant::now());
            }
            due
        };
        if due {
            let row = api_keys::ActiveModel {
                id: Set(key_id.to_string()),
                last_used_at: Set(Some(Utc::now())),
                ..Default::default()
            };
            if let Err(error) = api_keys::Entity::update(row).exec(&self.db).await {
                tracing::warn!(%error, "cannot record an API key's last use");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_a_hex_prefix_and_a_256_bit_secret() {
        let key = generate();
        let (prefix, secret) = split(&key.full).expect("well-formed");
        assert_eq!(prefix, key.prefix);
        assert_eq!(secret.len(), 64);
        assert_eq!(hash(secret), key.hash);
        assert_ne!(generate().full, key.full);
        assert!(split("ens_short_abc").is_none());
        assert!(split(&key.full.replace("ens_", "sk_")).is_none());
    }
}
