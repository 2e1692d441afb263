//! One cache of one kind: read through, counted (hits, misses, evictions), and guarded so that
//! a load which raced with an invalidation is never kept.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use super::kinds::Kind;
use crate::{
    error::AppError,
    metrics::{CacheCounter, CacheStats, Evictions},
};

/// The cache of kind `K`; with caching off it holds nothing and every lookup loads.
#[derive(Clone)]
pub struct Cache<K: Kind> {
    store: Option<moka::future::Cache<K, K::Value>>,
    counter: Arc<CacheCounter>,
    /// Invalidations so far: a load that began before one is not kept.
    generation: Arc<AtomicU64>,
}

/// When a load began, as the cache's count of invalidations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp(u64);

impl<K: Kind> Cache<K> {
    /// Builds the cache by its kind's policy and registers its counts under the kind's name.
    pub fn new(enabled: bool, stats: &CacheStats) -> Self {
        let policy = K::POLICY;
        let evictions = Evictions::default();
        let store = enabled.then(|| {
            let evicted = evictions.clone();
            moka::future::Cache::builder()
                .max_capacity(policy.capacity)
                .time_to_live(policy.ttl)
                .eviction_listener(move |_, _, cause| {
                    if cause.was_evicted() {
                        evicted.record(1);
                    }
                })
                .build()
        });
        let held = store.clone();
        let entries = move || held.as_ref().map_or(0, |cache| cache.entry_count());
        Self { counter: stats.register(policy.name, entries, evictions), store, generation: Arc::default() }
    }

    /// The cached value, counted as a hit or a miss.
    pub async fn get(&self, key: &K) -> Option<K::Value> {
        self.get_if(key, |_| true).await
    }

    /// The cached value if `usable` accepts it; a refused one counts as a miss.
    pub async fn get_if(&self, key: &K, usable: impl FnOnce(&K::Value) -> bool) -> Option<K::Value> {
        let found = match &self.store {
            Some(store) => store.get(key).await.filter(usable),
            None => None,
        };
        self.counter.record(found.is_some());
        found
    }

    /// The cached value, else what `load` reads (then kept).
    pub async fn get_or_load(
        &self,
        key: K,
        load: impl Future<Output = Result<K::Value, AppError>>,
    ) -> Result<K::Value, AppError> {
        if let Some(value) = self.get(&key).await {
            return Ok(value);
        }
        let stamp = self.stamp();
        let value = load.await?;
        self.keep(stamp, key, value.clone()).await;
        Ok(value)
    }

    /// The cached value, else what `load` finds (kept when it finds something).
    pub async fn get_or_load_some(
        &self,
        key: K,
        load: impl Future<Output = Result<Option<K::Value>, AppError>>,
    ) -> Result<Option<K::Value>, AppError> {
        if let Some(value) = self.get(&key).await {
            return Ok(Some(value));
        }
        let stamp = self.stamp();
        let value = load.await?;
        if let Some(value) = &value {
            self.keep(stamp, key, value.clone()).await;
        }
        Ok(value)
    }

    /// Marks the start of a load whose result goes to [`Cache::keep`].
    pub fn stamp(&self) -> Stamp {
        Stamp(self.generation.load(Ordering::SeqCst))
    }

    /// Keeps what a load that began at `stamp` read, unless an invalidation came since: what it
    /// read may be from before the write that invalidated.
    pub async fn keep(&self, stamp: Stamp, key: K, value: K::Value) {
        let Some(store) = &self.store else {
            return;
        };
        if self.stamp() != stamp {
            return;
        }
        store.insert(key.clone(), value).await;
        // An invalidation between the check and the insert may have missed the new entry.
        if self.stamp() != stamp {
            store.invalidate(&key).await;
        }
    }

    /// Keeps a value that cannot be stale: one that never changes (a verified token, a
    /// version), or one read before the server serves (prefetch).
    pub async fn insert(&self, key: K, value: K::Value) {
        if let Some(store) = &self.store {
            store.insert(key, value).await;
        }
    }

    /// Whether `key` is cached (not counted as a lookup).
    pub fn contains(&self, key: &K) -> bool {
        self.store.as_ref().is_some_and(|store| store.contains_key(key))
    }

    /// Drops `key`; a load in flight is not kept either.
    pub async fn invalidate(&self, key: &K) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(store) = &self.store {
            store.invalidate(key).await;
        }
    }

    /// Drops every entry; a load in flight is not kept either.
    pub fn invalidate_all(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if let Some(store) = &self.store {
            store.invalidate_all();
        }
    }

    /// Runs moka's deferred work now (expiry, eviction and their notifications).
    pub async fn run_pending_tasks(&self) {
        if let Some(store) = &self.store {
            store.run_pending_tasks().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::kinds::{ModelName, Policy};

    fn counts(stats: &CacheStats) -> (u64, u64, u64) {
        let snapshot = &stats.snapshot()[0];
        (snapshot.hits, snapshot.misses, snapshot.evictions)
    }

    #[tokio::test]
    async fn a_value_is_loaded_once_then_served_from_the_cache() {
        let stats = CacheStats::default();
        let cache = Cache::<ModelName>::new(true, &stats);
        let key = ModelName("openai/gpt-4o".into());
        for _ in 0..3 {
            let price = cache.get_or_load(key.clone(), async { Ok(None) }).await.unwrap();
            assert_eq!(price, None);
        }
        assert_eq!(counts(&stats), (2, 1, 0));
    }

    #[tokio::test]
    async fn a_load_that_began_before_an_invalidation_is_not_kept() {
        let stats = CacheStats::default();
        let cache = Cache::<ModelName>::new(true, &stats);
        let key = ModelName("openai/gpt-4o".into());
        let stamp = cache.stamp();
        cache.invalidate(&key).await;
        cache.keep(stamp, key.clone(), None).await;
        assert!(!cache.contains(&key), "read before the write, so possibly stale");
        cache.keep(cache.stamp(), key.clone(), None).await;
        assert!(cache.contains(&key));
    }

    #[tokio::test]
    async fn with_caching_off_every_lookup_loads() {
        let stats = CacheStats::default();
        let cache = Cache::<ModelName>::new(false, &stats);
        let key = ModelName("openai/gpt-4o".into());
        for _ in 0..2 {
            cache.get_or_load(key.clone(), async { Ok(None) }).await.unwrap();
        }
        assert_eq!(counts(&stats), (0, 2, 0));
        assert_eq!(stats.snapshot()[0].entries, 0);
    }

    /// A kind with room for one entry.
    #[derive(Clone, Hash, PartialEq, Eq)]
    struct Tiny(u8);

    impl Kind for Tiny {
        type Value = ();
        const POLICY: Policy = Policy { name: "tiny", ttl: std::time::Duration::from_secs(60), capacity: 1 };
    }

    #[tokio::test]
    async fn entries_dropped_for_room_count_as_evictions_and_invalidated_ones_do_not() {
        let stats = CacheStats::default();
        let cache = Cache::<Tiny>::new(true, &stats);
        cache.insert(Tiny(1), ()).await;
        cache.invalidate(&Tiny(1)).await;
        cache.run_pending_tasks().await;
        assert_eq!(counts(&stats).2, 0, "an invalidation is not an eviction");
        for n in 2..5 {
            cache.insert(Tiny(n), ()).await;
            cache.run_pending_tasks().await;
        }
        assert_eq!(counts(&stats).2, 2, "three entries for a room of one");
    }
}
