//! Resource usage: what the caller's user, API keys and owned teams used today and this month
//! against their daily budgets; and, for admins, what the server itself holds.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, Duration, NaiveDate, Utc};
use entity::{api_keys, teams, usage_daily, users};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Statement, sea_query::Expr,
};

use super::usage_report::{day, owned_teams, sum};
use crate::{
    auth::guard,
    config::RunConfig,
    domain::{Caller, Scope},
    error::AppError,
    metrics::{CacheSnapshot, Metrics},
};

/// What a principal is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
pub enum PrincipalKind {
    /// You, across all your sessions, keys and teams.
    User,
    /// One of your API keys.
    ApiKey,
    /// A team you own, across all its members.
    Team,
}

/// Usage over a span of days.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Amount {
    pub requests: i64,
    pub runs: i64,
    /// Input and output tokens together, as budgets count them.
    pub tokens: i64,
    pub cost_usd: f64,
}

/// One principal's usage and daily budgets.
pub struct PrincipalUsage {
    pub kind: PrincipalKind,
    pub id: String,
    pub name: String,
    pub today: Amount,
    pub this_month: Amount,
    pub daily_token_budget: Option<i64>,
    pub daily_cost_budget_usd: Option<f64>,
}

impl PrincipalUsage {
    pub fn remaining_today_tokens(&self) -> Option<i64> {
        self.daily_token_budget.map(|budget| (budget - self.today.tokens).max(0))
    }

    pub fn remaining_today_cost_usd(&self) -> Option<f64> {
        self.daily_cost_budget_usd.map(|budget| (budget - self.today.cost_usd).max(0.0))
    }
}

/// The caller's user, their API keys that are not revoked (oldest first) and the teams they own
/// (by name). A signed-in user, or an API key with `teams:read` not restricted to a team.
#[tracing::instrument(skip_all)]
pub async fn principals(
    db: &DatabaseConnection,
    caller: &Caller,
    budgets: &RunConfig,
) -> Result<Vec<PrincipalUsage>, AppError> {
    let me = guard::acting_user(caller, Scope::TeamsRead)?;
    let user = users::Entity::find_by_id(&me.id).one(db).await?;
    let keys = api_keys::Entity::find()
        .filter(api_keys::Column::UserId.eq(&me.id))
        .filter(api_keys::Column::RevokedAt.is_null())
        .order_by_asc(api_keys::Column::CreatedAt)
        .all(db)
        .await?;
    let teams = teams::Entity::find()
        .filter(teams::Column::Id.in_subquery(owned_teams(&me.id)))
        .order_by_asc(teams::Column::Name)
        .all(db)
        .await?;
    let today = Utc::now().date_naive();
    let mut of_user = amounts(db, usage_daily::Column::UserId, vec![me.id.clone()], today).await?;
    let mut of_keys =
        amounts(db, usage_daily::Column::ApiKeyId, keys.iter().map(|k| k.id.clone()).collect(), today).await?;
    let mut of_teams =
        amounts(db, usage_daily::Column::TeamId, teams.iter().map(|t| t.id.clone()).collect(), today).await?;
    let name = user.and_then(|u| u.display_name.or(u.email)).unwrap_or_else(|| me.id.clone());
    let user_budgets = (budgets.daily_token_budget, budgets.daily_cost_budget_usd);
    let mut all = vec![usage(PrincipalKind::User, me.id.clone(), name, &mut of_user, user_budgets)];
    for key in keys {
        let key_budgets = (key.daily_token_budget, key.daily_cost_budget_usd);
        all.push(usage(PrincipalKind::ApiKey, key.id, key.name, &mut of_keys, key_budgets));
    }
    for team in teams {
        all.push(usage(PrincipalKind::Team, team.id, team.name, &mut of_teams, (None, None)));
    }
    Ok(all)
}

fn usage(
    kind: PrincipalKind,
    id: String,
    name: String,
    used: &mut HashMap<String, (Amount, Amount)>,
    (daily_token_budget, daily_cost_budget_usd): (Option<i64>, Option<f64>),
) -> PrincipalUsage {
    let (today, this_month) = used.remove(&id).unwrap_or_default();
    PrincipalUsage { kind, id, name, today, this_month, daily_token_budget, daily_cost_budget_usd }
}

/// Today's and this month's usage (UTC) of each of `ids` in `column`, one query per 98 ids (D1
/// binds at most 100 parameters per statement; the month's bounds take two).
async fn amounts(
    db: &DatabaseConnection,
    column: usage_daily::Column,
    ids: Vec<String>,
    today: NaiveDate,
) -> Result<HashMap<String, (Amount, Amount)>, AppError> {
    let mut used = HashMap::new();
    for chunk in ids.chunks(crate::db::batch::MAX_PARAMS - 2) {
        used.extend(amounts_of(db, column, chunk.to_vec(), today).await?);
    }
    Ok(used)
}

async fn amounts_of(
    db: &DatabaseConnection,
    column: usage_daily::Column,
    ids: Vec<String>,
    today: NaiveDate,
) -> Result<HashMap<String, (Amount, Amount)>, AppError> {
    let month_start = today - Duration::days(i64::from(today.day0()));
    let rows: Vec<(String, String, i64, i64, i64, f64)> = usage_daily::Entity::find()
        .select_only()
        .column_as(column, "id")
        .column(usage_daily::Column::Day)
        .column_as(sum("requests"), "requests")
        .column_as(sum("runs"), "runs")
        .column_as(sum("tokens_in + tokens_out"), "tokens")
        .column_as(Expr::cust("COALESCE(SUM(cost_usd), 0.0)"), "cost_usd")
        .filter(column.is_in(ids))
        .filter(usage_daily::Column::Day.between(day(month_start), day(today)))
        .group_by(column)
        .group_by(usage_daily::Column::Day)
        .into_tuple()
        .all(db)
        .await?;
    let today = day(today);
    let mut used: HashMap<String, (Amount, Amount)> = HashMap::new();
    for (id, on, requests, runs, tokens, cost_usd) in rows {
        let amount = Amount { requests, runs, tokens, cost_usd };
        let (on_today, in_month) = used.entry(id).or_default();
        add(in_month, amount);
        if on == today {
            add(on_today, amount);
        }
    }
    Ok(used)
}

fn add(total: &mut Amount, more: Amount) {
    total.requests += more.requests;
    total.runs += more.runs;
    total.tokens += more.tokens;
    total.cost_usd += more.cost_usd;
}

/// What the server holds: its database, process, sockets and caches.
pub struct ServerResources {
    /// `None` on D1, which refuses SQLite's pragmas and has no size function.
    pub database_bytes: Option<i64>,
    pub uptime_seconds: i64,
    pub process_memory_bytes: Option<i64>,
    pub open_websockets: i64,
    pub open_subscriptions: i64,
    pub caches: Vec<CacheSnapshot>,
}

/// The server's resources for a signed-in admin; `None` for anyone else.
#[tracing::instrument(skip_all)]
pub async fn server(
    db: &DatabaseConnection,
    metrics: &Metrics,
    started_at: DateTime<Utc>,
    caller: &Caller,
) -> Result<Option<ServerResources>, AppError> {
    if guard::admin(caller).is_err() {
        return Ok(None);
    }
    Ok(Some(ServerResources {
        database_bytes: database_bytes(db).await?,
        uptime_seconds: (Utc::now() - started_at).num_seconds().max(0),
        process_memory_bytes: tokio::fs::read_to_string("/proc/self/status").await.ok().and_then(|s| resident(&s)),
        open_websockets: metrics.open_websockets(),
        open_subscriptions: metrics.open_subscriptions(),
        caches: metrics.caches.snapshot(),
    }))
}

/// The size of the database: SQLite's pages (the main file, not its WAL), or PostgreSQL's own
/// count for the current database; nothing on D1 (`pragma_page_count()` is refused there).
async fn database_bytes(db: &DatabaseConnection) -> Result<Option<i64>, AppError> {
    if crate::db::is_proxy(db) {
        return Ok(None);
    }
    let backend = db.get_database_backend();
    let sql = match backend {
        DbBackend::Sqlite => "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
        _ => "SELECT pg_database_size(current_database())",
    };
    let row = db.query_one_raw(Statement::from_string(backend, sql)).await?;
    let bytes = row.map(|r| r.try_get_by_index::<i64>(0)).transpose()?;
    bytes.map(Some).ok_or_else(|| AppError::internal("the database size query answered no row"))
}

/// Resident memory in bytes from the text of `/proc/self/status` (`VmRSS: … kB`).
fn resident(status: &str) -> Option<i64> {
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:"))?;
    let kib: i64 = line.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resident_memory_is_read_from_vm_rss() {
        let status = "Name:\tensemble\nVmPeak:\t  900 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(resident(status), Some(12345 * 1024));
        assert_eq!(resident("Name:\tensemble\n"), None);
    }

    #[test]
    fn what_remains_of_a_budget_never_goes_below_zero() {
        let used = PrincipalUsage {
            kind: PrincipalKind::ApiKey,
            id: "key_1".into(),
            name: "ci".into(),
            today: Amount { requests: 1, runs: 1, tokens: 150, cost_usd: 0.25 },
            this_month: Amount::default(),
            daily_token_budget: Some(100),
            daily_cost_budget_usd: Some(1.0),
        };
        assert_eq!(used.remaining_today_tokens(), Some(0));
        assert_eq!(used.remaining_today_cost_usd(), Some(0.75));
    }
}
