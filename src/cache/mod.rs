//! Every in-process cache, behind typed keys: the kinds and their policies (`kinds`), the
//! read-through cache that counts hits, misses and evictions (`store`), and the invalidations each write calls once it has committed, which the event bus carries
//! to the other instances. An invalidation that may take access away also has the open
//! subscriptions it concerns checked again. See docs/cache.md.

mod kinds;
mod store;

use std::sync::Arc;

pub use self::{
    kinds::{
        AllCategories, KeyPrefix, Kind, ModelName, Policy, SessionToken, TeamVersion, TemplateId, TemplateVersion,
        UnknownKeyPrefix, UserId,
    },
    store::{Cache, Stamp},
};
use crate::{
    config::Config,
    domain::Invalidation,
    events::{AccessChange, EventBus, Notice},
    metrics::CacheStats,
};

/// The open subscriptions an invalidation may end, if any.
fn access_change(what: &Invalidation) -> Option<AccessChange> {
    Some(match what {
        Invalidation::ApiKeyChanged(prefix) => AccessChange::Key(prefix.clone()),
        Invalidation::UserChanged(id) => AccessChange::User(id.clone()),
        Invalidation::TeamMemberChanged { team_id, user_id } => {
            AccessChange::Member { team_id: team_id.clone(), user_id: user_id.clone() }
        }
        Invalidation::TeamAccessChanged(team_id) => AccessChange::Team(team_id.clone()),
        Invalidation::ApiKeyCreated(_)
        | Invalidation::TemplateChanged(_)
        | Invalidation::CategoriesChanged
        | Invalidation::PricesChanged => return None,
    })
}

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
    bus: Arc<EventBus>,
}

impl Caches {
    /// Every cache, empty (holding nothing at all with `ENSEMBLE_CACHE=off`), registered in
    /// `stats`; invalidations go to the other instances over `bus`.
    pub fn new(config: &Config, stats: &CacheStats, bus: Arc<EventBus>) -> Self {
        let on = config.cache.is_on();
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
            bus,
        }
    }

    /// Drops what `what` made stale here, then on the other instances, waiting for them: once
    /// the write is answered, the next request to any instance sees it.
    pub async fn invalidate(&self, what: Invalidation) {
        self.apply(&what).await;
        self.bus.tell_others_and_wait(Notice::Invalidate(what)).await;
    }

    /// Drops what `what` made stale, on this instance only (for an invalidation from another),
    /// then has the open subscriptions it concerns checked again, against what is now stored.
    pub async fn apply(&self, what: &Invalidation) {
        self.drop_stale(what).await;
        if let Some(change) = access_change(what) {
            self.bus.access().changed(change).await;
        }
    }

    async fn drop_stale(&self, what: &Invalidation) {
        match what {
            Invalidation::ApiKeyCreated(prefix) => {
                self.unknown_api_keys.invalidate(&UnknownKeyPrefix(prefix.clone())).await;
            }
            Invalidation::ApiKeyChanged(prefix) => self.api_keys.invalidate(&KeyPrefix(prefix.clone())).await,
            Invalidation::UserChanged(id) => self.users.invalidate(&UserId(id.clone())).await,
            Invalidation::TemplateChanged(id) => self.templates.invalidate(&TemplateId(id.clone())).await,
            Invalidation::CategoriesChanged => self.template_categories.invalidate(&AllCategories).await,
            Invalidation::PricesChanged => self.model_prices.invalidate_all(),
            Invalidation::TeamMemberChanged { .. } | Invalidation::TeamAccessChanged(_) => {}
        }
    }

    /// Drops every value that another instance's write could make stale (after this instance
    /// may have missed invalidations), and has every open subscription checked again in the
    /// background. Immutable values (specs and template versions by version, session tokens,
    /// Clerk's keys) stay.
    pub fn clear(&self) {
        self.api_keys.invalidate_all();
        self.unknown_api_keys.invalidate_all();
        self.users.invalidate_all();
        self.templates.invalidate_all();
        self.template_categories.invalidate_all();
        self.model_prices.invalidate_all();
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let watchers = self.bus.access().clone();
            runtime.spawn(async move { watchers.changed(AccessChange::Missed).await });
        }
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
