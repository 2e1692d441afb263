//! Runs: `runTeam`, `run`, `runs`, `cancelRun`, `errorGroups`, and the live `runEvents` and
//! `teamActivity` subscriptions.

use std::collections::HashSet;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, Subscription, connection::Connection};
use chrono::{DateTime, Utc};
use entity::{run_attempts, runs as rows};
use futures_util::{Stream, StreamExt, stream};
use serde_json::Value;
use tokio_stream::wrappers::BroadcastStream;

use super::{
    caller, connection,
    loaders::{Loaders, nodes_select},
    rechecks,
    shareable::shareable,
    states::RunStatus,
};
use crate::{
    auth::guard,
    domain::{RunEvent, TeamRole},
    error::GqlResultExt,
    graphql::scalars::Json,
    service::{
        error_groups,
        page::PageRequest,
        range::TimeRange,
        runs::{self, RunFilter, RunInput as NewRun},
    },
    state::AppState,
};

#[derive(Default)]
pub struct RunsQuery;

#[Object]
impl RunsQuery {
    /// A run of a team you may see.
    async fn run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Run> {
        let state = ctx.data::<AppState>()?;
        state.runner.get(&caller(ctx), &id).await.map(Run).gql()
    }

    /// A team's runs, newest first; `status` and `range` narrow them.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn runs(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        status: Option<RunStatus>,
        range: Option<TimeRangeInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Run>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let range = range.unwrap_or_default();
        let filter = RunFilter { status: status.map(Into::into), from: range.from, to: range.to };
        let rows = state.runner.list(&caller(ctx), &team_id, filter, &page).await.gql()?;
        if nodes_select(ctx, &["attempts"]) {
            // Up front, in one query: see `loaders`.
            let ids = rows.items.iter().map(|r| r.id.clone());
            ctx.data::<Loaders>()?.attempts.load_many(ids).await.gql()?;
        }
        Ok(connection(&page, rows, |r| r.id.clone(), Run))
    }

    /// Failures grouped by fingerprint, most recently seen first: one team's, or without
    /// `teamId` those of every team you are a member of (admins: every team). `range` keeps
    /// the groups last seen within it.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn error_groups(
        &self,
        ctx: &Context<'_>,
        team_id: Option<ID>,
        range: Option<TimeRangeInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, ErrorGroup>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let range = range.map(|r| TimeRange::resolve(r.from, r.to, chrono::Duration::days(30))).transpose().gql()?;
        let rows = error_groups::list(&state.db, &caller(ctx), team_id.as_ref().map(|id| id.as_str()), range, &page)
            .await
            .gql()?;
        Ok(connection(&page, rows, error_groups::cursor, ErrorGroup::from))
    }
}

#[derive(Default)]
pub struct RunsMutation;

#[Object]
impl RunsMutation {
    /// Runs a team on a message (operators and up; API keys need `runs:execute`). With `wait`
    /// the answer is the finished run, or the running one once the wait limit passes.
    async fn run_team(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        input: RunInput,
        #[graphql(default = true)] wait: bool,
    ) -> async_graphql::Result<Run> {
        let state = ctx.data::<AppState>()?;
        state.runner.start(&caller(ctx), &team_id, input.into(), wait).await.map(Run).gql()
    }

    /// Marks an error group resolved (operators and up). It reopens when the same failure
    /// happens again.
    async fn resolve_error_group(&self, ctx: &Context<'_>, fingerprint: ID) -> async_graphql::Result<ErrorGroup> {
        let state = ctx.data::<AppState>()?;
        error_groups::resolve(&state.db, &state.audit, &caller(ctx), &fingerprint).await.map(ErrorGroup::from).gql()
    }

    /// Stops a queued or running run; it ends `CANCELLED`.
    async fn cancel_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Run> {
        let state = ctx.data::<AppState>()?;
        state.runner.cancel(&caller(ctx), &id).await.map(Run).gql()
    }
}

#[derive(Default)]
pub struct RunsSubscription;

#[Subscription]
impl RunsSubscription {
    /// What happens to one run, from now until it ends. A run that has already ended answers
    /// its final event and completes.
    async fn run_events(&self, ctx: &Context<'_>, run_id: ID) -> async_graphql::Result<impl Stream<Item = RunEvent>> {
        let state = ctx.data::<AppState>()?;
        let events = BroadcastStream::new(state.runner.events.subscribe());
        let run = run_id.to_string();
        rechecks::register(ctx, None, move |state, caller| {
            let run = run.clone();
            async move { state.runner.get(&caller, &run).await.map(drop) }
        });
        let run = state.runner.get(&caller(ctx), &run_id).await.gql()?;
        let finished = run.status.is_finished().then(|| runs::terminal_event(&run));
        // Ends right after the run's terminal event.
        let live = stream::unfold(Some(events), move |events| {
            let run_id = run.id.clone();
            async move {
                let mut events = events?;
                while let Some(event) = events.next().await {
                    if let Ok(event) = event
                        && event.run_id.as_str() == run_id
                    {
                        let more = (!event.kind.is_terminal()).then_some(events);
                        return Some(((*event).clone(), more));
                    }
                }
                None
            }
        });
        Ok(match finished {
            Some(last) => stream::iter([last]).left_stream(),
            None => {
                shareable(ctx);
                live.right_stream()
            }
        })
    }

    /// Every run event of a team, as it happens.
    async fn team_activity(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = RunEvent>> {
        let state = ctx.data::<AppState>()?;
        let events = BroadcastStream::new(state.runner.events.subscribe());
        let team = team_id.to_string();
        rechecks::register(ctx, Some(&team_id), move |state, caller| {
            let team = team.clone();
            async move { guard::team(&state.db, &caller, &team, TeamRole::Viewer).await.map(drop) }
        });
        guard::team(&state.db, &caller(ctx), &team_id, TeamRole::Viewer).await.gql()?;
        let mut lulls = shareable(ctx).map(|lull| (lull, UnderWay::default()));
        let team_id = team_id.0;
        Ok(events.filter_map(move |event| {
            let event = event.ok().filter(|e| e.team_id.as_str() == team_id);
            if let (Some((lull, under_way)), Some(event)) = (&mut lulls, &event)
                && under_way.ended_last(event)
            {
                lull.mark();
            }
            async move { event.map(|e| (*e).clone()) }
        }))
    }
}

/// The runs of a team under way, as its activity shows them.
#[derive(Default)]
struct UnderWay(HashSet<ID>);

impl UnderWay {
    /// Runs followed at most: past these, a run's end may be taken for the last (a lull only
    /// writes sooner what was gathered).
    const MOST: usize = 1024;

    /// Notes `event`; answers whether it ended the last run under way.
    fn ended_last(&mut self, event: &RunEvent) -> bool {
        if event.kind.is_terminal() {
            self.0.remove(&event.run_id);
            self.0.is_empty()
        } else {
            if self.0.len() < Self::MOST {
                self.0.insert(event.run_id.clone());
            }
            false
        }
    }
}

/// What to run.
#[derive(InputObject)]
pub struct RunInput {
    /// The message (not empty; at most `ENSEMBLE_RUN_MAX_INPUT_BYTES`).
    pub content: String,
    /// Values routing rules can test (`{"variable": {"name": …, "equals": …}}`); a JSON object.
    pub variables: Option<Json<Value>>,
    /// The spec version to run; the current one when absent.
    pub version: Option<i32>,
    /// Continue this conversation.
    pub conversation_id: Option<ID>,
    /// Answer this message (a new branch when it already has an answer).
    pub parent_message_id: Option<ID>,
    /// Run this agent of the team, skipping routing (the run's rule is then null and its
    /// reason says the agent was asked for).
    pub agent: Option<String>,
}

impl From<RunInput> for NewRun {
    fn from(input: RunInput) -> Self {
        Self {
            content: input.content,
            variables: input.variables.map(|v| v.0),
            version: input.version,
            conversation_id: input.conversation_id.map(|id| id.0),
            parent_message_id: input.parent_message_id.map(|id| id.0),
            agent: input.agent,
            ..Self::default()
        }
    }
}

/// A time range: `from` inclusive, `to` exclusive; either may be open.
#[derive(InputObject, Default)]
pub struct TimeRangeInput {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// One run of a team.
pub struct Run(pub rows::Model);

#[Object]
impl Run {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn team_id(&self) -> ID {
        ID(self.0.team_id.clone())
    }
    /// The spec version the run used.
    async fn team_version(&self) -> i32 {
        self.0.team_version
    }
    async fn status(&self) -> RunStatus {
        self.0.status.into()
    }
    async fn input(&self) -> &str {
        &self.0.input
    }
    async fn variables(&self) -> Option<Json<Value>> {
        self.0.variables.clone().map(Json)
    }
    /// The answer, once the run has succeeded.
    async fn output(&self) -> Option<&str> {
        self.0.output.as_deref()
    }
    /// The agent routing chose.
    async fn routed_agent(&self) -> Option<&str> {
        self.0.routed_agent.as_deref()
    }
    /// The routing rule that matched; null when the default agent was used.
    async fn rule(&self) -> Option<&str> {
        self.0.rule.as_deref()
    }
    /// Why routing chose the agent, e.g. `contains "refund"`.
    async fn rule_reason(&self) -> Option<&str> {
        self.0.rule_reason.as_deref()
    }
    /// The agent that answered (after any fallback), or tried last.
    async fn agent(&self) -> Option<&str> {
        self.0.agent.as_deref()
    }
    async fn model(&self) -> Option<&str> {
        self.0.model.as_deref()
    }
    /// Calls to models, retries and fallbacks included.
    async fn attempt_count(&self) -> i32 {
        self.0.attempts
    }
    async fn retries(&self) -> i32 {
        self.0.retries
    }
    async fn fallbacks(&self) -> i32 {
        self.0.fallbacks
    }
    async fn tokens_in(&self) -> i64 {
        self.0.tokens_in
    }
    async fn tokens_out(&self) -> i64 {
        self.0.tokens_out
    }
    async fn cost_usd(&self) -> f64 {
        self.0.cost_usd
    }
    /// What the run was expected to cost as it started: one answer from the routed agent, as
    /// `estimateCost` reckons it. Null for runs from before estimates were kept.
    async fn estimated_cost_usd(&self) -> Option<f64> {
        self.0.estimated_cost_usd
    }
    /// The most the run could cost as it started: every retry and fallback, as `estimateCost`
    /// reckons its worst case. Null for runs from before estimates were kept.
    async fn estimated_max_cost_usd(&self) -> Option<f64> {
        self.0.estimated_max_cost_usd
    }
    async fn latency_ms(&self) -> Option<i64> {
        self.0.latency_ms
    }
    /// Why the run failed: an error class (`timeout`, `rate_limited`, …), `cost_limit`,
    /// `cancelled` or `interrupted`.
    async fn error_code(&self) -> Option<String> {
        self.0.error_code.map(|code| code.to_string())
    }
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    async fn conversation_id(&self) -> Option<ID> {
        self.0.conversation_id.clone().map(ID)
    }
    /// The user message the run answers, in a conversation.
    async fn message_id(&self) -> Option<ID> {
        self.0.message_id.clone().map(ID)
    }
    /// The answer's message, in a conversation.
    async fn response_message_id(&self) -> Option<ID> {
        self.0.response_message_id.clone().map(ID)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.started_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// Every call to a model, in order.
    async fn attempts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<RunAttempt>> {
        let loaders = ctx.data::<Loaders>()?;
        let rows = loaders.attempts.load_one(self.0.id.clone()).await.gql()?;
        Ok(rows.unwrap_or_default().into_iter().map(RunAttempt::from).collect())
    }
}

/// One call to a model within a run.
#[derive(SimpleObject)]
pub struct RunAttempt {
    /// 1, 2, … across the run.
    pub seq: i32,
    pub agent: String,
    pub model: String,
    /// 1 for the agent's first call, 2 for its first retry, …
    pub attempt: i32,
    /// `ok`, an error class (`timeout`, `rate_limited`, `server_error`, …) or `cancelled`.
    pub outcome: String,
    pub latency_ms: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    /// The wait before the next attempt, when one followed.
    pub backoff_ms: Option<i64>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
}

impl From<run_attempts::Model> for RunAttempt {
    fn from(a: run_attempts::Model) -> Self {
        Self {
            seq: a.seq,
            agent: a.agent,
            model: a.model,
            attempt: a.attempt,
            outcome: a.outcome.to_string(),
            latency_ms: a.latency_ms,
            tokens_in: a.tokens_in,
            tokens_out: a.tokens_out,
            cost_usd: a.cost_usd,
            backoff_ms: a.backoff_ms,
            error: a.error,
            started_at: a.started_at,
        }
    }
}

/// Failed runs that share team, agent, error code and message (numbers blanked).
#[derive(SimpleObject)]
pub struct ErrorGroup {
    pub fingerprint: String,
    pub agent: String,
    pub code: String,
    pub message: String,
    pub count: i64,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub last_run_id: ID,
    pub resolved_at: Option<DateTime<Utc>>,
}

impl From<entity::error_groups::Model> for ErrorGroup {
    fn from(g: entity::error_groups::Model) -> Self {
        Self {
            fingerprint: g.fingerprint,
            agent: g.agent,
            code: g.code.to_string(),
            message: g.message,
            count: g.count,
            first_seen: g.first_seen,
            last_seen: g.last_seen,
            last_run_id: ID(g.last_run_id),
            resolved_at: g.resolved_at,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::UnderWay;
    use crate::domain::{RunEvent, RunEventKind};

    #[test]
    fn a_team_lulls_when_its_last_run_under_way_ends() {
        let mut under_way = UnderWay::default();
        let mut ends_last = |run: &str, kind| under_way.ended_last(&RunEvent::new(run, "team", kind));
        assert!(!ends_last("a", RunEventKind::Queued));
        assert!(!ends_last("b", RunEventKind::Routed), "joined mid-run: b is under way too");
        assert!(!ends_last("a", RunEventKind::Completed), "b is still under way");
        assert!(ends_last("b", RunEventKind::Failed));
        assert!(ends_last("c", RunEventKind::Cancelled), "a run seen only ending leaves none under way");
    }
}
