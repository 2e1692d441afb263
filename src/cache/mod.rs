//! Every in-process cache, behind typed keys: the kinds and their policies (`kinds`), the
//! read-through cache that counts hits, misses and evictions (`store`), Clerk's JWKS (`jwks`),
//! and the invalidations each write calls once it has committed. See docs/cache.md.

pub mod jwks;
mod kinds;
mod store;

use std::sync::Arc;

pub use self::{
    jwks::JwksCache,
    kinds::{
        AllCategories, KeyPrefix, Kind, ModelName, Policy, SessionToken, TeamVersion, TemplateId, TemplateVersion,
        UnknownKeyPrefix, UserId,
    },
    store::{Cache, Stamp},
};
use crate::{config::Config, metrics::CacheStats};

/// The caches of one server; what invalidates each is listed on its key type.
pub struct Caches {
    pub session_tokens: Cache<SessionToken>,
    pub users: Cache<UserId>,
    pub api_keys: Cache<KeyPrefix>,
    pub unknown_api_keys: Cache<UnknownKeyPrefix>,
    pub team_specs: Cache<TeamVersion>,
    pub templates: Cache<TemplateId>,
    pub template_versions: Cache<TemplateVersion>,
    pub template_categories: Cache<AllCategories>,
    pub model_prices: Cache<ModelName>,
    /// Clerk's signing keys, when tokens are checked against `CLERK_JWKS_URL`.
    pub jwks: Option<Arc<JwksCache>>,
}

impl Caches {
    /// Every cache, empty (holding nothing at all with `ENSEMBLE_CACHE=off`), registered in
    /// `stats`.
    pub fn new(config: &Config, stats: &CacheStats) -> Self {
        let on = config.cache.is_on();
        let jwks = config.auth.clerk_jwks_url.as_ref().filter(|_| config.auth.clerk_jwt_key.is_none()).map(|url| {
            let refetch_every = std::time::Duration::from_secs(config.auth.clerk_jwks_refetch_secs);
            Arc::new(JwksCache::new(url.clone(), refetch_every, stats))
        });
        Self {
            session_tokens: Cache::new(on, stats),
            users: Cache::new(on, stats),
            api_keys: Cache::new(on, stats),
            unknown_api_keys: Cache::new(on, stats),
            team_specs: Cache::new(on, stats),
            templates: Cache::new(on, stats),
            template_versions: Cache::new(on, stats),
            template_categories: Cache::new(on, stats),
            model_prices: Cache::new(on, stats),
            jwks,
        }
    }

    /// After `createApiKey` commits: its prefix is no longer unknown.
    pub async fn api_key_created(&self, prefix: &str) {
        self.unknown_api_keys.invalidate(&UnknownKeyPrefix(prefix.to_string())).await;
    }

    /// After a key is revoked or rotated (or revoked with its deleted owner).
    pub async fn api_key_changed(&self, prefix: &str) {
        self.api_keys.invalidate(&KeyPrefix(prefix.to_string())).await;
    }

    /// After a user's row changes: role, profile, deletion, a sync from Clerk.
    pub async fn user_changed(&self, id: &str) {
        self.users.invalidate(&UserId(id.to_string())).await;
    }

    /// After a template is saved (a new version, a move, a share) or deleted.
    pub async fn template_changed(&self, id: &str) {
        self.templates.invalidate(&TemplateId(id.to_string())).await;
    }

    /// After a category is created, changed or deleted.
    pub async fn categories_changed(&self) {
        self.template_categories.invalidate(&AllCategories).await;
    }

    /// After a price is set: any model may have been priced by it.
    pub fn prices_changed(&self) {
        self.model_prices.invalidate_all();
    }
}

#[cfg(test)]
mod tests {
    use super::kinds::ALL;

    #[test]
    fn every_kind_has_its_own_name_and_a_bounded_life_and_size() {
        let mut names: Vec<&str> = ALL.iter().map(|p| p.name).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ALL.len(), "names are unique");
        assert!(ALL.iter().all(|p| !p.ttl.is_zero() && p.capacity > 0));
    }

    #[test]
    fn the_guide_lists_every_kind_with_its_time_to_live() {
        let guide = include_str!("../../docs/cache.md");
        for policy in ALL {
            let row = guide.lines().find(|line| line.starts_with(&format!("| `{}` |", policy.name)));
            let row = row.unwrap_or_else(|| panic!("docs/cache.md has no row for `{}`", policy.name));
            let ttl = policy.ttl.as_secs();
            let shown = match ttl {
                t if t % 3600 == 0 => format!("{} h", t / 3600),
                t if t % 60 == 0 => format!("{} min", t / 60),
                t => format!("{t} s"),
            };
            assert!(row.contains(&shown), "`{}` lives {shown}: {row}", policy.name);
        }
    }
}
