//! Team analytics read from rollups (never raw runs): the overview panels, time series for
//! graphs, and the per-agent figures insights are built from.

use std::collections::HashMap;

use chrono::Duration;
use entity::{conversations, error_groups, run_latency, run_rollups, team_members};
use sea_orm::{
    ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, FromQueryResult, PaginatorTrait,
    QueryFilter, QueryOrder, QuerySelect, QueryTrait, Select, Statement,
    sea_query::{Expr, Query, SimpleExpr},
};

use super::{
    range::TimeRange,
    rollups::{self, Grain, Piece},
};
use crate::{
    auth::guard,
    domain::{Caller, Principal, Scope, TeamRole},
    error::{AppError, Problem},
};

/// The most points one series may have.
pub const MAX_POINTS: i64 = 1_500;

/// Busiest agents listed in an overview.
const BUSIEST: usize = 5;

/// Error groups listed in an overview.
const TOP_ERRORS: u64 = 5;

/// Sums of finished runs over some rollup rows.
#[derive(Clone, Debug, Default, PartialEq, FromQueryResult)]
pub struct Totals {
    pub runs: i64,
    pub failures: i64,
    pub retries: i64,
    pub fallbacks: i64,
    pub retried_runs: i64,
    pub fallback_runs: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub latency_ms_sum: i64,
}

impl Totals {
    pub fn add(&mut self, other: &Totals) {
        self.runs += other.runs;
        self.failures += other.failures;
        self.retries += other.retries;
        self.fallbacks += other.fallbacks;
        self.retried_runs += other.retried_runs;
        self.fallback_runs += other.fallback_runs;
        self.tokens_in += other.tokens_in;
        self.tokens_out += other.tokens_out;
        self.cost_usd += other.cost_usd;
        self.latency_ms_sum += other.latency_ms_sum;
    }

    /// `part` per run; none without runs.
    pub fn per_run(&self, part: i64) -> Option<f64> {
        (self.runs > 0).then(|| part as f64 / self.runs as f64)
    }

    pub fn success_rate(&self) -> Option<f64> {
        self.per_run(self.runs - self.failures)
    }

    pub fn average_latency_ms(&self) -> Option<f64> {
        self.per_run(self.latency_ms_sum)
    }
}

/// Latency percentiles, exact to two significant digits (see `rollups::latency_bucket`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: Option<i64>,
    pub p95: Option<i64>,
    pub p99: Option<i64>,
}

impl Latency {
    fn of(histogram: &[(i64, i64)]) -> Self {
        Self {
            p50: rollups::percentile(histogram, 0.50),
            p95: rollups::percentile(histogram, 0.95),
            p99: rollups::percentile(histogram, 0.99),
        }
    }
}

/// One slice of a team's runs: an agent, a rule, a model, or a combination.
#[derive(Clone, Debug, Default)]
pub struct Slice {
    pub agent: String,
    pub rule: String,
    pub model: String,
    pub totals: Totals,
    pub latency: Latency,
    /// Latency buckets and their runs, which `latency` was read from.
    pub histogram: Vec<(i64, i64)>,
}

/// A team's panels over a range.
pub struct Overview {
    pub range: TimeRange,
    pub totals: Totals,
    pub latency: Latency,
    pub active_conversations: u64,
    pub top_errors: Vec<error_groups::Model>,
    /// Agents with the most runs, most first.
    pub busiest_agents: Vec<Slice>,
}

/// The teams whose rows a caller may read.
#[derive(Clone, Debug, Default)]
pub enum Teams {
    /// Every team (an admin).
    #[default]
    All,
    /// These teams.
    These(Vec<String>),
    /// The teams this user is a member of: a subquery, not a list, so that a member of many
    /// teams stays within D1's 100 bound parameters.
    MemberOf(String),
}

impl Teams {
    /// The condition on `team` (none for every team).
    pub fn condition<C: ColumnTrait>(&self, team: C) -> Option<SimpleExpr> {
        match self {
            Self::All => None,
            Self::These(ids) => Some(team.is_in(ids.clone())),
            Self::MemberOf(user_id) => {
                let member_of = Query::select()
                    .column(team_members::Column::TeamId)
                    .from(team_members::Entity)
                    .and_where(team_members::Column::UserId.eq(user_id.as_str()))
                    .to_owned();
                Some(team.in_subquery(member_of))
            }
        }
    }

    /// Whether it is known to hold no team, so there is nothing to read.
    fn is_none(&self) -> bool {
        matches!(self, Self::These(ids) if ids.is_empty())
    }
}

/// What rows to read: the teams, and optionally one agent or model.
#[derive(Clone, Debug, Default)]
pub struct Selection {
    pub teams: Teams,
    pub agent: Option<String>,
    pub model: Option<String>,
}

impl Selection {
    pub fn team(team_id: &str) -> Self {
        Self { teams: Teams::These(vec![team_id.to_string()]), ..Self::default() }
    }

    fn condition<C: ColumnTrait>(&self, team: C, agent: C, model: C) -> Condition {
        let mut all = Condition::all();
        if let Some(teams) = self.teams.condition(team) {
            all = all.add(teams);
        }
        if let Some(name) = &self.agent {
            all = all.add(agent.eq(name.clone()));
        }
        if let Some(name) = &self.model {
            all = all.add(model.eq(name.clone()));
        }
        all
    }
}

/// A team's overview: totals, percentiles, active conversations, top error groups and busiest
/// agents over `range`, from rollups (the range widened to whole minutes).
pub async fn overview(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    range: TimeRange,
) -> Result<Overview, AppError> {
    readable_team(db, caller, team_id).await?;
    let (from, to) = range.seconds();
    let pieces = rollups::cover(from, to);
    let by_agent = slices(db, &Selection::team(team_id), &pieces, By::AGENT).await?;
    let mut totals = Totals::default();
    let mut histogram = Vec::new();
    for slice in &by_agent {
        totals.add(&slice.totals);
        histogram.extend_from_slice(&slice.histogram);
    }
    let active_conversations = conversations::Entity::find()
        .filter(conversations::Column::TeamId.eq(team_id))
        .filter(conversations::Column::LastActiveAt.gte(range.from))
        .filter(conversations::Column::CreatedAt.lt(range.to))
        .count(db)
        .await?;
    let top_errors = error_groups::Entity::find()
        .filter(error_groups::Column::TeamId.eq(team_id))
        .filter(error_groups::Column::LastSeen.gte(range.from))
        .filter(error_groups::Column::LastSeen.lt(range.to))
        .order_by_desc(error_groups::Column::Count)
        .order_by_desc(error_groups::Column::LastSeen)
        .limit(TOP_ERRORS)
        .all(db)
        .await?;
    let mut busiest_agents = by_agent;
    busiest_agents.sort_by(|a, b| b.totals.runs.cmp(&a.totals.runs).then_with(|| a.agent.cmp(&b.agent)));
    busiest_agents.truncate(BUSIEST);
    Ok(Overview {
        range: effective(&pieces, range),
        totals,
        latency: Latency::of(&histogram),
        active_conversations,
        top_errors,
        busiest_agents,
    })
}

/// The range the rollups actually cover: widened to whole minutes.
fn effective(pieces: &[Piece], asked: TimeRange) -> TimeRange {
    match (pieces.first(), pieces.last()) {
        (Some(first), Some(last)) => TimeRange { from: rollups::time(first.from), to: rollups::time(last.to) },
        _ => asked,
    }
}

/// Which dimensions rows are grouped by; the others are summed over.
#[derive(Clone, Copy, Debug, Default)]
pub struct By {
    pub bucket: bool,
    pub agent: bool,
    pub rule: bool,
    pub model: bool,
    /// Whether to read the latency histograms too (percentiles stay empty otherwise).
    pub latency: bool,
}

impl By {
    /// Per agent, with percentiles.
    pub const AGENT: By = By { bucket: false, agent: true, rule: false, model: false, latency: true };
}

/// The key columns both rollup tables share.
struct Keys<C> {
    team: C,
    grain: C,
    start: C,
    agent: C,
    rule: C,
    model: C,
}

/// A rollup table's rows over `pieces` within `scope`, selecting and grouping the `by`
/// columns (the others read as '' or 0).
fn grouped<E: EntityTrait>(scope: &Selection, pieces: &[Piece], by: By, keys: Keys<E::Column>) -> Select<E> {
    let within = scope.condition(keys.team, keys.agent, keys.model);
    let mut query = E::find().select_only().filter(rollups::covering(pieces, keys.grain, keys.start, within));
    for (grouped, column, name) in [
        (by.bucket, keys.start, "bucket_start"),
        (by.agent, keys.agent, "agent"),
        (by.rule, keys.rule, "rule"),
        (by.model, keys.model, "model"),
    ] {
        query = if grouped {
            query.column(column).group_by(column)
        } else if name == "bucket_start" {
            query.column_as(Expr::cust("CAST(0 AS BIGINT)"), name)
        } else {
            query.column_as(Expr::cust("''"), name)
        };
    }
    query
}

#[derive(FromQueryResult)]
struct SliceRow {
    bucket_start: i64,
    agent: String,
    rule: String,
    model: String,
    #[sea_orm(nested)]
    totals: Totals,
}

/// Rollup sums over `pieces`, grouped `by` (with each slice's percentiles).
pub async fn slices(
    db: &DatabaseConnection,
    scope: &Selection,
    pieces: &[Piece],
    by: By,
) -> Result<Vec<Slice>, AppError> {
    Ok(bucketed_slices(db, scope, pieces, by).await?.into_iter().map(|(_, slice)| slice).collect())
}

/// Like `slices`, with each slice's bucket start (0 unless grouped by bucket).
pub async fn bucketed_slices(
    db: &DatabaseConnection,
    scope: &Selection,
    pieces: &[Piece],
    by: By,
) -> Result<Vec<(i64, Slice)>, AppError> {
    if pieces.is_empty() || scope.teams.is_none() {
        return Ok(Vec::new());
    }
    use run_rollups::Column as C;
    let keys = Keys {
        team: C::TeamId,
        grain: C::Grain,
        start: C::BucketStart,
        agent: C::Agent,
        rule: C::Rule,
        model: C::Model,
    };
    let mut query = grouped::<run_rollups::Entity>(scope, pieces, by, keys);
    for name in [
        "runs",
        "failures",
        "retries",
        "fallbacks",
        "retried_runs",
        "fallback_runs",
        "tokens_in",
        "tokens_out",
        "latency_ms_sum",
    ] {
        query = query.column_as(Expr::cust(format!("CAST(SUM({name}) AS BIGINT)")), name);
    }
    let rows = query.column_as(Expr::cust("SUM(cost_usd)"), "cost_usd").into_model::<SliceRow>().all(db).await?;
    let mut percentiles: HashMap<SliceKey, Vec<(i64, i64)>> = HashMap::new();
    if by.latency {
        for (key, latency, runs) in histograms(db, scope, pieces, by).await? {
            percentiles.entry(key).or_default().push((latency, runs));
        }
    }
    Ok(rows
        .into_iter()
        .map(|row| {
            let key = (row.bucket_start, row.agent, row.rule, row.model);
            let histogram = percentiles.remove(&key).unwrap_or_default();
            let (bucket_start, agent, rule, model) = key;
            let latency = Latency::of(&histogram);
            (bucket_start, Slice { agent, rule, model, totals: row.totals, latency, histogram })
        })
        .collect())
}

#[derive(FromQueryResult)]
struct HistogramRow {
    bucket_start: i64,
    agent: String,
    rule: String,
    model: String,
    latency_ms: i64,
    runs: i64,
}

/// A slice's bucket start, agent, rule and model ('' or 0 where not grouped by).
type SliceKey = (i64, String, String, String);

/// Latency histograms over `pieces`, grouped `by`: (slice, latency bucket, runs).
async fn histograms(
    db: &DatabaseConnection,
    scope: &Selection,
    pieces: &[Piece],
    by: By,
) -> Result<Vec<(SliceKey, i64, i64)>, AppError> {
    if pieces.is_empty() || scope.teams.is_none() {
        return Ok(Vec::new());
    }
    use run_latency::Column as C;
    let keys = Keys {
        team: C::TeamId,
        grain: C::Grain,
        start: C::BucketStart,
        agent: C::Agent,
        rule: C::Rule,
        model: C::Model,
    };
    let query = grouped::<run_latency::Entity>(scope, pieces, by, keys);
    let rows = query
        .column(C::LatencyMs)
        .group_by(C::LatencyMs)
        .column_as(Expr::cust("CAST(SUM(runs) AS BIGINT)"), "runs")
        .into_model::<HistogramRow>()
        .all(db)
        .await?;
    Ok(rows.into_iter().map(|r| ((r.bucket_start, r.agent, r.rule, r.model), r.latency_ms, r.runs)).collect())
}

/// What a series plots.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
pub enum Metric {
    Runs,
    Failures,
    LatencyP50,
    LatencyP95,
    LatencyP99,
    Tokens,
    Cost,
    RetryRate,
    FallbackRate,
}

impl Metric {
    /// The percentile a latency metric plots.
    fn percent(self) -> Option<u8> {
        match self {
            Self::LatencyP50 => Some(50),
            Self::LatencyP95 => Some(95),
            Self::LatencyP99 => Some(99),
            _ => None,
        }
    }

    /// The metric of `slice`; none for a latency or a rate without runs.
    fn value(self, slice: &Slice) -> Option<f64> {
        let t = &slice.totals;
        let ms = |p: Option<i64>| p.map(|ms| ms as f64);
        match self {
            Self::Runs => Some(t.runs as f64),
            Self::Failures => Some(t.failures as f64),
            // Read from the histograms by `percentile_series` instead.
            Self::LatencyP50 => ms(slice.latency.p50),
            Self::LatencyP95 => ms(slice.latency.p95),
            Self::LatencyP99 => ms(slice.latency.p99),
            Self::Tokens => Some((t.tokens_in + t.tokens_out) as f64),
            Self::Cost => Some(t.cost_usd),
            Self::RetryRate => t.per_run(t.retried_runs),
            Self::FallbackRate => t.per_run(t.fallback_runs),
        }
    }

    /// The metric of a bucket without runs: 0 for a count or a sum, none for a latency or a
    /// rate (there is nothing to measure, and 0 ms would be a lie).
    fn empty(self) -> Option<f64> {
        match self {
            Self::Runs | Self::Failures | Self::Tokens | Self::Cost => Some(0.0),
            Self::LatencyP50 | Self::LatencyP95 | Self::LatencyP99 | Self::RetryRate | Self::FallbackRate => None,
        }
    }
}

/// A series: one point per bucket of the range; see [`Metric::empty`] for buckets without runs.
pub struct Series {
    pub range: TimeRange,
    pub points: Vec<(i64, Option<f64>)>,
}

/// `metric` per `grain` bucket over `range`, for one team or (none) every team the caller may
/// see, optionally for one agent or model.
pub async fn series(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: Option<&str>,
    metric: Metric,
    grain: Grain,
    range: TimeRange,
    filter: (Option<String>, Option<String>),
) -> Result<Series, AppError> {
    let (from, to) = range.seconds();
    let (from, to) = (grain.floor(from), grain.ceil(to));
    let count = (to - from) / grain.seconds();
    if count > MAX_POINTS {
        let message = format!(
            "A series may have at most {MAX_POINTS} points; {count} {} buckets were asked for. Use a larger bucket or a shorter range.",
            grain
        );
        return Err(AppError::BadUserInput {
            message: message.clone(),
            problems: vec![Problem::new("bucket", message)],
        });
    }
    let teams = match team_id {
        Some(team_id) => Teams::These(vec![readable_team(db, caller, team_id).await?.id]),
        None => visible_teams(caller, Scope::AnalyticsRead)?,
    };
    let scope = Selection { teams, agent: filter.0, model: filter.1 };
    let pieces = [Piece { grain, from, to }];
    let by_bucket: HashMap<i64, Option<f64>> = match metric.percent() {
        Some(percent) => {
            percentile_series(db, &scope, &pieces, percent).await?.into_iter().map(|(at, ms)| (at, Some(ms))).collect()
        }
        None => bucketed_slices(db, &scope, &pieces, By { bucket: true, ..By::default() })
            .await?
            .into_iter()
            .map(|(start, slice)| (start, metric.value(&slice)))
            .collect(),
    };
    let points = (0..count)
        .map(|i| from + i * grain.seconds())
        .map(|start| (start, by_bucket.get(&start).copied().unwrap_or(metric.empty())))
        .collect();
    Ok(Series { range: TimeRange { from: rollups::time(from), to: rollups::time(to) }, points })
}

/// A team whose figures the caller may read: any role on it, and for an API key the
/// `analytics:read` scope.
pub async fn readable_team(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
) -> Result<entity::teams::Model, AppError> {
    guard::key_scope(caller, Scope::AnalyticsRead)?;
    Ok(guard::team(db, caller, team_id, TeamRole::Viewer).await?.team)
}

/// A latency percentile per bucket, computed by the database from the histograms: a month of
/// hourly histograms is tens of thousands of rows, and only one value per bucket comes back.
/// Nearest-rank, as `rollups::percentile`: the smallest latency whose running count reaches
/// `percent`% of the bucket's runs.
async fn percentile_series(
    db: &DatabaseConnection,
    scope: &Selection,
    pieces: &[Piece],
    percent: u8,
) -> Result<HashMap<i64, f64>, AppError> {
    if scope.teams.is_none() {
        return Ok(HashMap::new());
    }
    use run_latency::Column as C;
    let within = scope.condition(C::TeamId, C::Agent, C::Model);
    let histogram = run_latency::Entity::find()
        .select_only()
        .column(C::BucketStart)
        .column(C::LatencyMs)
        .column_as(Expr::cust("SUM(runs)"), "n")
        .filter(rollups::covering(pieces, C::Grain, C::BucketStart, within))
        .group_by(C::BucketStart)
        .group_by(C::LatencyMs)
        .build(db.get_database_backend());
    let sql = format!(
        "SELECT bucket_start, MIN(latency_ms) FROM (SELECT bucket_start, latency_ms, \
         SUM(n) OVER (PARTITION BY bucket_start ORDER BY latency_ms) AS seen, \
         SUM(n) OVER (PARTITION BY bucket_start) AS total FROM ({}) histogram) running \
         WHERE seen * 100 >= total * {percent} GROUP BY bucket_start",
        histogram.sql
    );
    let rows = db.query_all_raw(Statement { sql, ..histogram }).await?;
    rows.iter()
        .map(|row| Ok((row.try_get_by_index::<i64>(0)?, row.try_get_by_index::<i64>(1)? as f64)))
        .collect::<Result<_, sea_orm::DbErr>>()
        .map_err(AppError::from)
}

/// The teams whose figures the caller may read across teams: every team for admins, else the
/// teams they are a member of (an API key with `scope`: its team, or its owner's).
pub fn visible_teams(caller: &Caller, scope: Scope) -> Result<Teams, AppError> {
    guard::key_scope(caller, scope)?;
    let user = match &caller.principal {
        Principal::ApiKey(key) => {
            if let Some(team) = &key.team_id {
                return Ok(Teams::These(vec![team.clone()]));
            }
            &key.owner
        }
        _ => guard::account(caller)?,
    };
    if guard::sees_all(caller) {
        return Ok(Teams::All);
    }
    Ok(Teams::MemberOf(user.id.clone()))
}

/// The default span of a range left open.
pub fn default_span() -> Duration {
    Duration::hours(24)
}
