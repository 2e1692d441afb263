//! `serverInfo` and the `heartbeat` subscription: the first slice through every layer.

use async_graphql::{Context, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, StreamExt};
use tokio_stream::wrappers::IntervalStream;

use crate::{
    config,
    error::GqlResultExt,
    service::system::{self, ServerStatus},
    state::AppState,
};

#[derive(Default)]
pub struct SystemQuery;

#[Object]
impl SystemQuery {
    /// What this server runs: version, database, migration level and the active request limits.
    async fn server_info(&self, ctx: &Context<'_>) -> async_graphql::Result<ServerInfo> {
        let state = ctx.data::<AppState>()?;
        system::status(&state.db, &state.config.limits).await.map(ServerInfo::from).gql()
    }
}

#[derive(Default)]
pub struct SystemSubscription;

#[Subscription]
impl SystemSubscription {
    /// A beat every `intervalSeconds` (1–60): the server's time and a sequence number from 1.
    async fn heartbeat(&self, interval_seconds: i32) -> async_graphql::Result<impl Stream<Item = Heartbeat>> {
        let period = system::heartbeat_interval(interval_seconds).gql()?;
        let ticks = IntervalStream::new(tokio::time::interval(period));
        Ok(ticks.enumerate().map(|(n, _)| Heartbeat { seq: n as i64 + 1, time: Utc::now() }))
    }
}

/// One beat of the `heartbeat` subscription.
#[derive(SimpleObject)]
pub struct Heartbeat {
    /// 1 for the first beat, then one more each beat.
    seq: i64,
    /// The server's clock when the beat was sent (UTC).
    time: DateTime<Utc>,
}

/// The server's version, storage and limits.
#[derive(SimpleObject)]
pub struct ServerInfo {
    /// The running release (semver).
    version: String,
    /// `sqlite` or `postgres`.
    database: String,
    /// Migrations applied to the database.
    migrations_applied: usize,
    /// Migrations this release has that the database does not (0 when current).
    migrations_pending: usize,
    /// Name of the newest applied migration.
    latest_migration: Option<String>,
    /// Limits every request is held to.
    limits: RequestLimits,
}

impl From<ServerStatus> for ServerInfo {
    fn from(s: ServerStatus) -> Self {
        Self {
            version: s.version.to_string(),
            database: s.database.to_string(),
            migrations_applied: s.migrations_applied,
            migrations_pending: s.migrations_pending,
            latest_migration: s.latest_migration,
            limits: s.limits.into(),
        }
    }
}

/// Limits on one request (each set by an `ENSEMBLE_LIMIT_*` variable).
#[derive(SimpleObject)]
pub struct RequestLimits {
    /// Deepest selection nesting.
    depth: usize,
    /// Highest complexity; a list field weighs its `first` times its children.
    complexity: usize,
    /// Deepest parser recursion.
    recursion: usize,
    /// Most aliases in one document.
    aliases: usize,
    /// Most directives on one field.
    directives_per_field: usize,
    /// Largest page a connection returns.
    max_page_size: u64,
    /// Largest request body in bytes.
    body_bytes: usize,
    /// Most operations in one batch; 0 when batching is off.
    batch: usize,
}

impl From<config::Limits> for RequestLimits {
    fn from(l: config::Limits) -> Self {
        Self {
            depth: l.depth,
            complexity: l.complexity,
            recursion: l.recursion,
            aliases: l.aliases,
            directives_per_field: l.directives,
            max_page_size: l.max_page_size,
            body_bytes: l.body_bytes,
            batch: l.batch,
        }
    }
}
