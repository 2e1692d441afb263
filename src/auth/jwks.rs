//! Clerk's JWKS, cached: fresh for 5 minutes, refetched at most once a minute (for an unknown
//! `kid` or a stale set), and still used while the endpoint is down. No keys at all → refuse.
//! Keys a refetch no longer lists count as evictions. `ENSEMBLE_CACHE=off` leaves it on: without
//! it every request would fetch from Clerk.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use jsonwebtoken::{DecodingKey, jwk::JwkSet};
use tokio::sync::{Mutex, RwLock};

use crate::{
    auth::jwt::Rejected,
    metrics::{CacheCounter, CacheStats, Evictions},
};

/// How long a fetched set is used without asking again.
const FRESH_FOR: Duration = Duration::from_secs(300);

pub struct JwksCache {
    url: String,
    client: reqwest::Client,
    /// Least time between two fetches (Clerk's SDK: a minute).
    refetch_every: Duration,
    keys: Arc<RwLock<Keys>>,
    stats: Arc<CacheCounter>,
    evictions: Evictions,
    /// Held while fetching, so concurrent misses cause one fetch; holds the last attempt.
    fetching: Mutex<Option<Instant>>,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<DecodingKey>>,
    fetched_at: Option<Instant>,
}

impl Keys {
    fn fresh(&self) -> bool {
        self.fetched_at.is_some_and(|t| t.elapsed() < FRESH_FOR)
    }
}

impl JwksCache {
    pub fn new(url: String, refetch_every: Duration, caches: &CacheStats) -> Self {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
        let keys = Arc::new(RwLock::new(Keys::default()));
        let held = keys.clone();
        let evictions = Evictions::default();
        let stats =
            caches.register("jwks", move || held.try_read().map_or(0, |k| k.by_kid.len() as u64), evictions.clone());
        Self { url, client, refetch_every, keys, stats, evictions, fetching: Mutex::new(None) }
    }

    /// The key for `kid`, fetching the set when it is unknown or stale (within the limits above).
    pub async fn key(&self, kid: &str) -> Result<Arc<DecodingKey>, Rejected> {
        {
            let keys = self.keys.read().await;
            if let Some(key) = keys.by_kid.get(kid)
                && keys.fresh()
            {
                self.stats.record(true);
                return Ok(key.clone());
            }
        }
        self.stats.record(false);
        let mut last_attempt = self.fetching.lock().await;
        let needs_fetch = {
            let keys = self.keys.read().await;
            !keys.fresh() || !keys.by_kid.contains_key(kid)
        };
        if needs_fetch && last_attempt.is_none_or(|t| t.elapsed() >= self.refetch_every) {
            *last_attempt = Some(Instant::now());
            match self.fetch().await {
                Ok(fetched) => self.replace(fetched).await,
                Err(error) => {
                    tracing::warn!(url = %self.url, %error, "cannot fetch the JWKS; using the cached keys")
                }
            }
        }
        drop(last_attempt);
        let keys = self.keys.read().await;
        if keys.by_kid.is_empty() {
            return Err(Rejected("Tokens cannot be verified right now: no signing keys are available.".into()));
        }
        keys.by_kid.get(kid).cloned().ok_or_else(|| Rejected("The token was signed with an unknown key (kid).".into()))
    }

    /// Puts a fetched set in place of the held one.
    async fn replace(&self, fetched: HashMap<String, Arc<DecodingKey>>) {
        let mut keys = self.keys.write().await;
        let dropped = keys.by_kid.keys().filter(|kid| !fetched.contains_key(*kid)).count();
        self.evictions.record(dropped as u64);
        *keys = Keys { by_kid: fetched, fetched_at: Some(Instant::now()) };
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<DecodingKey>>, String> {
        let response = self.client.get(&self.url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("HTTP {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, Arc::new(DecodingKey::from_jwk(jwk).ok()?))))
            .collect())
    }
}
