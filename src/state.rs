//! What every request can reach: configuration, the database, metrics.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;

use crate::{config::Config, metrics::Metrics};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    /// Commits batches (docs/write-path.md); mutations that leave an audit row go through
    /// `audit`, which uses it.
    pub writer: Arc<dyn crate::db::batch::BatchWriter>,
    pub audit: Arc<crate::service::audit::AuditChain>,
    pub metrics: Arc<Metrics>,
    /// Every in-process cache (tokens, keys, users, specs, templates, prices).
    pub caches: Arc<crate::cache::Caches>,
    pub auth: Arc<crate::auth::Authenticator>,
    pub usage: Arc<crate::service::usage::UsageMeter>,
    pub rate_limits: Arc<crate::rate_limit::RateLimits>,
    /// Starts, cancels and tracks runs; owns the providers, prices and the event bus.
    pub runner: Arc<crate::service::runs::Runner>,
    /// Templates and their cache.
    pub templates: Arc<crate::service::templates::Templates>,
    /// Starts, drives and resumes workflow runs.
    pub workflows: Arc<crate::service::workflows::Workflows>,
    /// Run events, audit wake-ups and notices, here and (with Redis) across instances.
    pub bus: Arc<crate::events::EventBus>,
    /// SQL statements run since start.
    pub statements: Arc<std::sync::atomic::AtomicU64>,
    pub started_at: DateTime<Utc>,
    /// Turns `true` when the server begins shutting down; long-lived sockets close on it.
    pub shutdown: watch::Receiver<bool>,
}
