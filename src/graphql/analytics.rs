//! Analytics: `teamOverview`, `metricsSeries`, `performanceInsights` and the `liveMetrics`
//! subscription, all read from rollups.

use std::time::Duration;

use async_graphql::{Context, Enum, ID, Object, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures_util::{Stream, stream};
use tokio::sync::broadcast::{self, error::TryRecvError};

use super::{
    caller, rechecks,
    runs::{ErrorGroup, TimeRangeInput},
    states::Grain,
};
use crate::{
    domain::Caller,
    error::{AppError, GqlResultExt},
    service::{
        analytics::{self, Latency, Metric, Overview, Slice},
        insights::{self, Finding},
        range::TimeRange,
        rollups,
    },
    state::AppState,
};

#[derive(Default)]
pub struct AnalyticsQuery;

#[Object]
impl AnalyticsQuery {
    /// A team's panels over `range` (default: the last 24 hours), read from per-minute
    /// rollups; the range is widened to whole minutes.
    async fn team_overview(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        range: Option<TimeRangeInput>,
    ) -> async_graphql::Result<TeamOverview> {
        let state = ctx.data::<AppState>()?;
        let range = resolve(range, analytics::default_span()).gql()?;
        let overview = analytics::overview(&state.db, &caller(ctx), &team_id, range).await.gql()?;
        Ok(TeamOverview::new(team_id, overview))
    }

    /// One metric per time bucket, for graphs: every bucket of the range is present; one
    /// without runs is 0 for a count or a sum and null for a latency or a rate (a gap in a
    /// graph). Without `teamId`, every team you are a member of (admins: every team).
    /// `agent` (the agent routing picked) and `model` (the model that answered) narrow it.
    #[allow(clippy::too_many_arguments)]
    async fn metrics_series(
        &self,
        ctx: &Context<'_>,
        team_id: Option<ID>,
        metric: Metric,
        bucket: Grain,
        range: Option<TimeRangeInput>,
        agent: Option<String>,
        model: Option<String>,
    ) -> async_graphql::Result<MetricSeries> {
        let state = ctx.data::<AppState>()?;
        let range = resolve(range, analytics::default_span()).gql()?;
        let team = team_id.as_ref().map(|id| id.as_str());
        let series = analytics::series(&state.db, &caller(ctx), team, metric, bucket.into(), range, (agent, model))
            .await
            .gql()?;
        Ok(MetricSeries {
            metric,
            bucket,
            from: series.range.from,
            to: series.range.to,
            points: series.points.into_iter().map(|(at, value)| Point { at: rollups::time(at), value }).collect(),
        })
    }

    /// Findings about a team's runs over `range` (default: the last 7 days), each with the
    /// figures behind it and a suggested change.
    async fn performance_insights(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        range: Option<TimeRangeInput>,
    ) -> async_graphql::Result<Vec<Insight>> {
        let state = ctx.data::<AppState>()?;
        let range = resolve(range, chrono::Duration::days(7)).gql()?;
        let findings = insights::find(&state.db, &state.runner.prices, &caller(ctx), &team_id, range).await.gql()?;
        Ok(findings.into_iter().map(Insight::from).collect())
    }
}

fn resolve(range: Option<TimeRangeInput>, span: chrono::Duration) -> Result<TimeRange, AppError> {
    let range = range.unwrap_or_default();
    TimeRange::resolve(range.from, range.to, span)
}

#[derive(Default)]
pub struct AnalyticsSubscription;

#[Subscription]
impl AnalyticsSubscription {
    /// A team's overview of the last 24 hours: one at once, then a fresh one every
    /// `intervalSeconds` (1–3600) in which a run of the team changed.
    async fn live_metrics(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        #[graphql(default = 5)] interval_seconds: i32,
    ) -> async_graphql::Result<impl Stream<Item = async_graphql::Result<TeamOverview>>> {
        if !(1..=3600).contains(&interval_seconds) {
            return Err(AppError::bad_input("intervalSeconds must be between 1 and 3600.")).gql();
        }
        let state = ctx.data::<AppState>()?.clone();
        let team = team_id.to_string();
        rechecks::register(ctx, Some(&team_id), move |state, caller| {
            let team = team.clone();
            async move { analytics::readable_team(&state.db, &caller, &team).await.map(drop) }
        });
        let period = Duration::from_secs(interval_seconds as u64);
        // The first overview goes out at once; the first tick comes one interval later.
        let watcher = Watcher {
            events: state.runner.events.subscribe(),
            ticks: tokio::time::interval_at(tokio::time::Instant::now() + period, period),
            caller: caller(ctx),
            team_id,
            state,
        };
        // Access is checked by computing the first overview before the stream starts.
        let first = watcher.overview().await.gql()?;
        // After an error the stream ends (`None` as the watcher).
        Ok(stream::unfold((Some(watcher), Some(first)), |(watcher, first)| async move {
            let mut watcher = watcher?;
            if let Some(first) = first {
                return Some((Ok(first), (Some(watcher), None)));
            }
            match watcher.next().await? {
                Ok(next) => Some((Ok(next), (Some(watcher), None))),
                Err(failed) => Some((Err(failed).gql(), (None, None))),
            }
        }))
    }
}

/// The state of one `liveMetrics` subscription.
struct Watcher {
    events: broadcast::Receiver<std::sync::Arc<crate::domain::RunEvent>>,
    ticks: tokio::time::Interval,
    caller: Caller,
    team_id: ID,
    state: AppState,
}

impl Watcher {
    async fn overview(&self) -> Result<TeamOverview, AppError> {
        let range = TimeRange::resolve(None, None, analytics::default_span())?;
        let overview = analytics::overview(&self.state.db, &self.caller, &self.team_id, range).await?;
        Ok(TeamOverview::new(self.team_id.clone(), overview))
    }

    /// The next overview, after the first tick in which a run of the team changed; none when
    /// the team can no longer be read (the subscription ends), an error when it could not be
    /// computed (the cause is logged; the subscription ends with INTERNAL).
    async fn next(&mut self) -> Option<Result<TeamOverview, AppError>> {
        loop {
            self.ticks.tick().await;
            if self.changed() {
                return match self.overview().await {
                    Ok(overview) => Some(Ok(overview)),
                    Err(failed @ (AppError::Internal(_) | AppError::Unavailable(_))) => Some(Err(failed)),
                    Err(_) => None,
                };
            }
        }
    }

    /// Whether an event of the team arrived since the last look (falling behind counts).
    fn changed(&mut self) -> bool {
        let mut changed = false;
        loop {
            match self.events.try_recv() {
                Ok(event) => changed |= event.team_id == self.team_id,
                Err(TryRecvError::Lagged(_)) => changed = true,
                Err(TryRecvError::Empty | TryRecvError::Closed) => return changed,
            }
        }
    }
}

/// A team's panels over a range.
#[derive(SimpleObject)]
pub struct TeamOverview {
    pub team_id: ID,
    /// The range covered, widened to whole minutes.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    /// Finished runs (succeeded or failed; cancelled runs are not counted).
    pub runs: i64,
    pub failures: i64,
    /// Succeeded runs per finished run; null without runs.
    pub success_rate: Option<f64>,
    pub latency: LatencySummary,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    /// Conversations started before the range ends and active after it starts.
    pub active_conversations: i64,
    /// Retries summed over runs.
    pub retries: i64,
    /// Fallback steps summed over runs.
    pub fallbacks: i64,
    /// Runs retried at least once, per run.
    pub retry_rate: Option<f64>,
    /// Runs that moved to a fallback agent, per run.
    pub fallback_rate: Option<f64>,
    /// The five error groups seen in the range with the most failures (all-time counts).
    pub top_errors: Vec<ErrorGroup>,
    /// The five agents routing picked most often.
    pub busiest_agents: Vec<AgentStats>,
}

impl TeamOverview {
    fn new(team_id: ID, o: Overview) -> Self {
        let t = &o.totals;
        Self {
            team_id,
            from: o.range.from,
            to: o.range.to,
            runs: t.runs,
            failures: t.failures,
            success_rate: t.success_rate(),
            latency: LatencySummary::new(&o.latency, t.average_latency_ms()),
            tokens_in: t.tokens_in,
            tokens_out: t.tokens_out,
            cost_usd: t.cost_usd,
            active_conversations: o.active_conversations as i64,
            retries: t.retries,
            fallbacks: t.fallbacks,
            retry_rate: t.per_run(t.retried_runs),
            fallback_rate: t.per_run(t.fallback_runs),
            top_errors: o.top_errors.into_iter().map(ErrorGroup::from).collect(),
            busiest_agents: o.busiest_agents.iter().map(AgentStats::from).collect(),
        }
    }
}

/// Latency of finished runs in milliseconds. Percentiles are nearest-rank and exact to two
/// significant digits (rounded down: a p95 of 1,234 ms reads 1,200); null without runs.
#[derive(SimpleObject)]
pub struct LatencySummary {
    pub p50_ms: Option<i64>,
    pub p95_ms: Option<i64>,
    pub p99_ms: Option<i64>,
    pub avg_ms: Option<f64>,
}

impl LatencySummary {
    fn new(latency: &Latency, avg_ms: Option<f64>) -> Self {
        Self { p50_ms: latency.p50, p95_ms: latency.p95, p99_ms: latency.p99, avg_ms }
    }
}

/// One agent's runs (the agent routing picked, whichever agent answered).
#[derive(SimpleObject)]
pub struct AgentStats {
    pub agent: String,
    pub runs: i64,
    pub failures: i64,
    pub failure_rate: Option<f64>,
    pub retry_rate: Option<f64>,
    pub fallback_rate: Option<f64>,
    pub latency: LatencySummary,
    pub tokens: i64,
    pub cost_usd: f64,
}

impl From<&Slice> for AgentStats {
    fn from(s: &Slice) -> Self {
        let t = &s.totals;
        Self {
            agent: s.agent.clone(),
            runs: t.runs,
            failures: t.failures,
            failure_rate: t.per_run(t.failures),
            retry_rate: t.per_run(t.retried_runs),
            fallback_rate: t.per_run(t.fallback_runs),
            latency: LatencySummary::new(&s.latency, t.average_latency_ms()),
            tokens: t.tokens_in + t.tokens_out,
            cost_usd: t.cost_usd,
        }
    }
}

/// A metric over time.
#[derive(SimpleObject)]
pub struct MetricSeries {
    pub metric: Metric,
    pub bucket: Grain,
    /// The range covered, widened to whole buckets.
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    pub points: Vec<Point>,
}

/// One bucket of a series: its start and value (runs, ms, tokens, USD or a 0–1 rate).
#[derive(SimpleObject)]
pub struct Point {
    pub at: DateTime<Utc>,
    /// Null for a latency or a rate in a bucket without runs.
    pub value: Option<f64>,
}

/// How much a finding matters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
pub enum Severity {
    Info,
    Warning,
}

/// One figure behind a finding.
#[derive(SimpleObject)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    /// `runs`, `ms`, `USD`, `ratio`, …
    pub unit: String,
}

/// A finding about a team's runs, with the figures behind it and a suggested change.
#[derive(SimpleObject)]
pub struct Insight {
    pub kind: insights::Kind,
    pub severity: Severity,
    /// The agent, rule or model the finding is about.
    pub subject: String,
    pub summary: String,
    pub suggestion: String,
    pub figures: Vec<Figure>,
}

impl From<Finding> for Insight {
    fn from(f: Finding) -> Self {
        Self {
            kind: f.kind,
            severity: if f.warning { Severity::Warning } else { Severity::Info },
            subject: f.subject,
            summary: f.summary,
            suggestion: f.suggestion,
            figures: f
                .figures
                .into_iter()
                .map(|(name, value, unit)| Figure { name: name.into(), value, unit: unit.into() })
                .collect(),
        }
    }
}
