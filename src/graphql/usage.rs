//! Usage: `usageReport` (the same report is `GET /reports/usage.csv`, `http::usage_csv`) and
//! `resourceUsage`.

use async_graphql::{ComplexObject, Context, ID, Object, SimpleObject};
use chrono::{DateTime, NaiveDate, Utc};

use super::{caller, names, runs::TimeRangeInput};
use crate::{
    error::GqlResultExt,
    metrics::CacheSnapshot,
    service::{
        resources::{self, Amount, PrincipalKind},
        usage_report::{self, Figures, Report, UsageGroup},
    },
    state::AppState,
};

#[derive(Default)]
pub struct UsageQuery;

#[Object]
impl UsageQuery {
    /// Usage (requests, runs, tokens, cost) summed per group of `groupBy`, in that order; an
    /// empty `groupBy` answers only the totals. The range defaults to the last 30 days and may
    /// span at most 400; usage is kept per UTC day, so every day the range touches counts whole.
    /// Admins see all usage; anyone else their own and that of the teams they own. An API key
    /// needs `teams:read` and sees what its owner sees (within its team, when restricted to
    /// one). At most 10,000 rows: past that, BAD_USER_INPUT asks for a narrower range or fewer
    /// groups.
    async fn usage_report(
        &self,
        ctx: &Context<'_>,
        range: Option<TimeRangeInput>,
        group_by: Vec<UsageGroup>,
    ) -> async_graphql::Result<UsageReport> {
        let state = ctx.data::<AppState>()?;
        let visibility = usage_report::visibility(&caller(ctx)).gql()?;
        let range = range.unwrap_or_default();
        let report = usage_report::report(&state.db, &visibility, range.from, range.to, group_by).await.gql()?;
        let rows = ctx.look_ahead().field("rows").selection_fields();
        names::preload(ctx, &rows, "userName", named(&report.rows)).await?;
        Ok(report.into())
    }

    /// What you (your user, API keys and owned teams) used today and this month against your
    /// daily budgets; and, for a signed-in admin, the server's resources. An API key needs
    /// `teams:read` and may not be restricted to a team.
    async fn resource_usage(&self, ctx: &Context<'_>) -> async_graphql::Result<ResourceUsage> {
        let (state, caller) = (ctx.data::<AppState>()?, caller(ctx));
        let principals = resources::principals(&state.db, &caller, &state.config.runs).await.gql()?;
        let server = resources::server(&state.db, &state.metrics, state.started_at, &caller).await.gql()?;
        Ok(ResourceUsage {
            principals: principals.into_iter().map(Into::into).collect(),
            server: server.map(Into::into),
        })
    }
}

/// The users, teams and API keys `rows` name.
fn named(rows: &[usage_report::UsageRow]) -> names::Ids {
    names::Ids {
        users: rows.iter().filter_map(|r| r.user_id.clone()).collect(),
        teams: rows.iter().filter_map(|r| r.team_id.clone()).collect(),
        api_keys: rows.iter().filter_map(|r| r.api_key_id.clone()).collect(),
    }
}

/// Usage over the UTC days of a range, grouped as asked.
#[derive(SimpleObject)]
pub struct UsageReport {
    /// Start of the range asked for.
    from: DateTime<Utc>,
    /// End of the range asked for (exclusive).
    to: DateTime<Utc>,
    /// The first UTC day counted.
    first_day: NaiveDate,
    /// The last UTC day counted.
    last_day: NaiveDate,
    /// The dimensions the rows are grouped by, in order.
    group_by: Vec<UsageGroup>,
    /// One row per group, sorted by the group keys in `groupBy` order (a missing key first);
    /// empty when `groupBy` is.
    rows: Vec<UsageRow>,
    /// Sums over all the usage counted.
    totals: UsageTotals,
}

impl From<Report> for UsageReport {
    fn from(report: Report) -> Self {
        Self {
            from: report.range.from,
            to: report.range.to,
            first_day: report.first_day,
            last_day: report.last_day,
            group_by: report.group_by,
            rows: report.rows.into_iter().map(UsageRow::from).collect(),
            totals: report.totals.into(),
        }
    }
}

/// One group of a usage report. A key is null when the report is not grouped by it, or when
/// the usage has none: requests name no model, anonymous requests no user, signed-in sessions
/// no API key, and only runs and requests made with a team-restricted API key name a team.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct UsageRow {
    user_id: Option<ID>,
    team_id: Option<ID>,
    api_key_id: Option<ID>,
    /// `provider/model`.
    model: Option<String>,
    /// The UTC day, `YYYY-MM-DD`.
    day: Option<String>,
    #[graphql(flatten)]
    figures: UsageTotals,
}

#[ComplexObject]
impl UsageRow {
    /// The user's display name (or email); null without `userId`, or for a deleted user.
    async fn user_name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        names::user(ctx, self.user_id.as_ref().map(|id| id.as_str())).await
    }
    /// The team's name; null without `teamId`, or for a deleted team.
    async fn team_name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        names::team(ctx, self.team_id.as_ref().map(|id| id.as_str())).await
    }
    /// The API key's name (revoked keys keep theirs); null without `apiKeyId`.
    async fn api_key_name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        names::api_key(ctx, self.api_key_id.as_ref().map(|id| id.as_str())).await
    }
}

impl From<usage_report::UsageRow> for UsageRow {
    fn from(row: usage_report::UsageRow) -> Self {
        Self {
            user_id: row.user_id.map(ID),
            team_id: row.team_id.map(ID),
            api_key_id: row.api_key_id.map(ID),
            model: row.model,
            day: row.day,
            figures: row.figures.into(),
        }
    }
}

/// The sums of a usage report, or of one of its rows.
#[derive(SimpleObject)]
pub struct UsageTotals {
    /// GraphQL operations (and CSV reports) made.
    requests: i64,
    /// Runs finished; a run counts on the row of the model that answered or tried last.
    runs: i64,
    tokens_in: i64,
    tokens_out: i64,
    cost_usd: f64,
}

impl From<Figures> for UsageTotals {
    fn from(f: Figures) -> Self {
        Self {
            requests: f.requests,
            runs: f.runs,
            tokens_in: f.tokens_in,
            tokens_out: f.tokens_out,
            cost_usd: f.cost_usd,
        }
    }
}

/// Your usage against your budgets, and the server's resources.
#[derive(SimpleObject)]
pub struct ResourceUsage {
    /// Your user first, then your API keys that are not revoked (oldest first), then the teams
    /// you own (by name).
    principals: Vec<PrincipalUsage>,
    /// Null unless you are a signed-in admin.
    server: Option<ServerResources>,
}

/// One principal's usage today and this month (UTC), and its daily budgets.
#[derive(SimpleObject)]
pub struct PrincipalUsage {
    kind: PrincipalKind,
    id: ID,
    /// The user's display name (or email), the key's or the team's name.
    name: String,
    today: UsageAmount,
    this_month: UsageAmount,
    /// Tokens a day, when a budget applies: every user's is set by the server, an API key's
    /// when it was made; teams have none.
    daily_token_budget: Option<i64>,
    /// US dollars a day, when a budget applies.
    daily_cost_budget_usd: Option<f64>,
    /// Tokens left today under the budget (never below 0); null without a budget.
    remaining_today_tokens: Option<i64>,
    /// US dollars left today under the budget (never below 0); null without a budget.
    remaining_today_cost_usd: Option<f64>,
}

impl From<resources::PrincipalUsage> for PrincipalUsage {
    fn from(p: resources::PrincipalUsage) -> Self {
        Self {
            kind: p.kind,
            remaining_today_tokens: p.remaining_today_tokens(),
            remaining_today_cost_usd: p.remaining_today_cost_usd(),
            id: ID(p.id),
            name: p.name,
            today: p.today.into(),
            this_month: p.this_month.into(),
            daily_token_budget: p.daily_token_budget,
            daily_cost_budget_usd: p.daily_cost_budget_usd,
        }
    }
}

/// Usage over a span of days. For a team, requests count only those made with an API key
/// restricted to it.
#[derive(SimpleObject)]
pub struct UsageAmount {
    requests: i64,
    runs: i64,
    /// Input and output tokens together, as budgets count them.
    tokens: i64,
    cost_usd: f64,
}

impl From<Amount> for UsageAmount {
    fn from(a: Amount) -> Self {
        Self { requests: a.requests, runs: a.runs, tokens: a.tokens, cost_usd: a.cost_usd }
    }
}

/// What this server instance holds.
#[derive(SimpleObject)]
pub struct ServerResources {
    /// The database's size: SQLite's main file (not its write-ahead log), or PostgreSQL's
    /// `pg_database_size`; null on Cloudflare D1, which does not tell (its dashboard does).
    database_bytes: Option<i64>,
    /// Seconds since this instance started.
    uptime_seconds: i64,
    /// Resident memory of the process; null where the system does not tell (not Linux).
    process_memory_bytes: Option<i64>,
    /// Websocket connections open now.
    open_websockets: i64,
    /// Operations streaming over websockets now (a query or mutation sent over a socket counts
    /// while it runs).
    open_subscriptions: i64,
    /// Every cache this instance runs, with its counts since start.
    caches: Vec<CacheStats>,
}

impl From<resources::ServerResources> for ServerResources {
    fn from(s: resources::ServerResources) -> Self {
        Self {
            database_bytes: s.database_bytes,
            uptime_seconds: s.uptime_seconds,
            process_memory_bytes: s.process_memory_bytes,
            open_websockets: s.open_websockets,
            open_subscriptions: s.open_subscriptions,
            caches: s.caches.into_iter().map(CacheStats::from).collect(),
        }
    }
}

/// Lookups of one cache since this instance started.
#[derive(SimpleObject)]
pub struct CacheStats {
    /// The cache's name, as in `/metrics` (`session_tokens`, `api_keys`, `team_specs`, …; see
    /// docs/cache.md).
    name: String,
    /// Lookups answered from the cache.
    hits: i64,
    /// Lookups that had to load (or verify) the value.
    misses: i64,
    /// Entries the cache dropped on its own: expired, or to make room.
    evictions: i64,
    /// Entries held now (approximate).
    entries: i64,
    /// Hits per lookup, 0 to 1; null before the first lookup.
    hit_rate: Option<f64>,
}

impl From<CacheSnapshot> for CacheStats {
    fn from(c: CacheSnapshot) -> Self {
        let hit_rate = c.hit_rate();
        Self {
            name: c.name.to_string(),
            hits: c.hits as i64,
            misses: c.misses as i64,
            evictions: c.evictions as i64,
            entries: c.entries as i64,
            hit_rate,
        }
    }
}
