//! Workflows (docs/workflows.md): `startWorkflow`, `runWorkflow` (start and wait),
//! `cancelWorkflowRun`, `retryWorkflowRun`, `approveWorkflowStep`, and the stored runs, `workflowRun` and `workflowRuns`.

use async_graphql::{Context, ID, InputObject, Object, connection::Connection};
use chrono::{DateTime, Utc};
use entity::workflow_runs;
use serde_json::Value;

use super::{
    caller, connection,
    runs::{Run, TimeRangeInput},
    states::{WorkflowStatus, WorkflowStepStatus},
};
use crate::{
    error::GqlResultExt,
    graphql::scalars::Json,
    service::{
        page::PageRequest,
        workflows::{RunsFilter, StartInput, StepView, Verdict},
    },
    state::AppState,
};

#[derive(Default)]
pub struct WorkflowsQuery;

#[Object]
impl WorkflowsQuery {
    /// A workflow run of a team you may see.
    async fn workflow_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<WorkflowRun> {
        let state = ctx.data::<AppState>()?;
        state.workflows.get(&caller(ctx), &id).await.map(WorkflowRun).gql()
    }

    /// A team's workflow runs, newest first; `status` and `range` narrow them.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn workflow_runs(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        status: Option<WorkflowStatus>,
        range: Option<TimeRangeInput>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, WorkflowRun>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let range = range.unwrap_or_default();
        let filter = RunsFilter { status: status.map(Into::into), from: range.from, to: range.to };
        let rows = state.workflows.list(&caller(ctx), &team_id, filter, &page).await.gql()?;
        Ok(connection(&page, rows, |r| r.id.clone(), WorkflowRun))
    }
}

/// What `startWorkflow` starts.
#[derive(InputObject)]
pub struct StartWorkflowInput {
    /// The WORKFLOW template, by id or slug.
    pub template_id: ID,
    /// The workflow's variables (a JSON object), checked against its declarations.
    pub variables: Option<Json<Value>>,
    /// The template version to run; its current one when absent.
    pub version: Option<i32>,
    /// Wait for the workflow to end, at most `ENSEMBLE_RUN_WAIT_SECS`, before answering.
    #[graphql(default = false)]
    pub wait: bool,
    /// Starting again with the same key (per team) answers the run it first started, and starts
    /// nothing: safe to retry after a lost answer. At most 255 bytes.
    pub idempotency_key: Option<String>,
}

/// A decision on an approval step.
#[derive(InputObject)]
pub struct ApproveWorkflowStepInput {
    /// The approval step's id in the workflow.
    pub step_id: String,
    /// True to go on, false to reject (the workflow fails).
    pub approve: bool,
    /// Why; it becomes the step's output (approved) or part of the error (rejected). At most
    /// 2,000 characters.
    pub comment: Option<String>,
}

#[derive(Default)]
pub struct WorkflowsMutation;

#[Object]
impl WorkflowsMutation {
    /// Starts a WORKFLOW template on a team (operators and up; API keys need `runs:execute`)
    /// and answers at once with the run, its steps running in the background. Missing,
    /// mistyped or unknown variables and step agents the team lacks are BAD_USER_INPUT, all
    /// listed, before anything runs.
    async fn start_workflow(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The team whose agents answer the steps.")] team_id: ID,
        input: StartWorkflowInput,
    ) -> async_graphql::Result<WorkflowRun> {
        let state = ctx.data::<AppState>()?;
        let input = StartInput {
            template: input.template_id.0,
            version: input.version,
            variables: input.variables.map_or(Value::Null, |v| v.0),
            wait: input.wait,
            idempotency_key: input.idempotency_key,
        };
        state.workflows.start(&caller(ctx), &team_id, input).await.map(WorkflowRun).gql()
    }

    /// Starts a WORKFLOW template's current version on a team and waits for it, at most
    /// `ENSEMBLE_RUN_WAIT_SECS`: `startWorkflow` with `wait: true`. A workflow still running
    /// then is answered RUNNING; read it later with `workflowRun`.
    async fn run_workflow(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The WORKFLOW template, by id or slug; its current version runs.")] template_id: ID,
        #[graphql(desc = "The team whose agents answer the steps.")] team_id: ID,
        #[graphql(desc = "The workflow's variables (a JSON object), checked against its declarations.")]
        variables: Option<Json<Value>>,
    ) -> async_graphql::Result<WorkflowRun> {
        let state = ctx.data::<AppState>()?;
        let input = StartInput {
            template: template_id.0,
            variables: variables.map_or(Value::Null, |v| v.0),
            wait: true,
            ..StartInput::default()
        };
        state.workflows.start(&caller(ctx), &team_id, input).await.map(WorkflowRun).gql()
    }

    /// Resumes a FAILED workflow run from the step that failed (operators and up), keeping
    /// the outputs of the steps before it; answers at once with it RUNNING. CONFLICT unless it
    /// failed.
    async fn retry_workflow_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<WorkflowRun> {
        let state = ctx.data::<AppState>()?;
        state.workflows.retry(&caller(ctx), &id).await.map(WorkflowRun).gql()
    }

    /// Decides an approval step the run is WAITING on (operators and up): approved, the
    /// workflow goes on (the step's output is the comment, or `approved`); rejected, it fails
    /// with REJECTED. CONFLICT when the step was decided already.
    async fn approve_workflow_step(
        &self,
        ctx: &Context<'_>,
        workflow_run_id: ID,
        input: ApproveWorkflowStepInput,
    ) -> async_graphql::Result<WorkflowRun> {
        let state = ctx.data::<AppState>()?;
        let decision = Verdict { step_id: input.step_id, approve: input.approve, comment: input.comment };
        state.workflows.approve(&caller(ctx), &workflow_run_id, decision).await.map(WorkflowRun).gql()
    }

    /// Cancels a workflow run in progress (operators and up): no further step starts and the
    /// running step's run is cancelled. CONFLICT when it has already ended.
    async fn cancel_workflow_run(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<WorkflowRun> {
        let state = ctx.data::<AppState>()?;
        state.workflows.cancel(&caller(ctx), &id).await.map(WorkflowRun).gql()
    }
}

/// A WORKFLOW template run on a team: stored as it goes, step by step.
pub struct WorkflowRun(workflow_runs::Model);

#[Object]
impl WorkflowRun {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    /// The template that runs.
    async fn template_id(&self) -> ID {
        ID(self.0.template_id.clone())
    }
    /// The version of the template that runs.
    async fn template_version(&self) -> i32 {
        self.0.template_version
    }
    /// The team whose agents answer.
    async fn team_id(&self) -> ID {
        ID(self.0.team_id.clone())
    }
    async fn status(&self) -> WorkflowStatus {
        self.0.status.into()
    }
    /// The variables it runs with, defaults filled in.
    async fn variables(&self) -> Option<Json<Value>> {
        self.0.variables.clone().map(Json)
    }
    /// The last step's output, once it succeeded.
    async fn output(&self) -> Option<&str> {
        self.0.output.as_deref()
    }
    /// The id of the step that failed; null when none did.
    async fn failed_step(&self) -> Option<&str> {
        self.0.failed_step.as_deref().filter(|step| !step.is_empty())
    }
    /// Why it did not succeed: `QUOTA_EXCEEDED`, `TIMEOUT`, `CANCELLED`, `INTERRUPTED`, …
    async fn error_code(&self) -> Option<&str> {
        self.0.error_code.as_deref()
    }
    /// Why it did not succeed, in words.
    async fn error(&self) -> Option<&str> {
        self.0.error.as_deref()
    }
    /// Tokens its steps' runs used, in and out.
    async fn tokens_in(&self) -> i64 {
        self.0.tokens_in
    }
    async fn tokens_out(&self) -> i64 {
        self.0.tokens_out
    }
    /// What its steps' runs cost, in US dollars.
    async fn cost_usd(&self) -> f64 {
        self.0.cost_usd
    }
    /// The idempotency key it was started with.
    async fn idempotency_key(&self) -> Option<&str> {
        self.0.idempotency_key.as_deref()
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.finished_at
    }
    /// From start to end (to now while it runs), in milliseconds.
    async fn duration_ms(&self) -> i64 {
        (self.0.finished_at.unwrap_or_else(Utc::now) - self.0.started_at.unwrap_or(self.0.created_at))
            .num_milliseconds()
            .max(0)
    }
    /// Its step executions in the order they started (each round of a loop its own), then the
    /// steps not run: PENDING while it goes on, SKIPPED once it ended.
    async fn steps(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<WorkflowStep>> {
        let state = ctx.data::<AppState>()?;
        let steps = state.workflows.steps(&self.0).await.gql()?;
        Ok(steps.into_iter().map(WorkflowStep).collect())
    }
}

/// One step of a workflow run.
pub struct WorkflowStep(StepView);

#[Object]
impl WorkflowStep {
    /// The step's id in the workflow.
    async fn id(&self) -> &str {
        &self.0.step_id
    }
    /// The round of the loop it ran in (from 1); 0 outside a loop, and for a step not run.
    async fn iteration(&self) -> i32 {
        self.0.execution.as_ref().map_or(0, |e| e.iteration)
    }
    /// The agent the step names; null when the team's routing chose (the run says which).
    async fn agent(&self) -> Option<&str> {
        self.0.agent.as_deref()
    }
    async fn status(&self) -> WorkflowStepStatus {
        self.0.status.into()
    }
    /// The rendered prompt the step sent; null when it could not be rendered, or did not run.
    async fn input(&self) -> Option<&str> {
        self.0.execution.as_ref().and_then(|e| e.input.as_deref())
    }
    /// The step's run (the latest, when an interruption made it run again); null when it
    /// started none.
    async fn run(&self) -> Option<Run> {
        self.0.run.clone().map(Run)
    }
    /// The run's answer, which later steps read as `{{ steps.<id>.output }}`; null unless the
    /// step succeeded.
    async fn output(&self) -> Option<&str> {
        self.0.execution.as_ref().and_then(|e| e.output.as_deref())
    }
    /// Why the step failed: a render problem, a refused run, or the run's own error.
    async fn error(&self) -> Option<&str> {
        self.0.execution.as_ref().and_then(|e| e.error.as_deref())
    }
    /// How many times it was started: more than 1 when an interruption made it run again.
    async fn attempts(&self) -> i32 {
        self.0.execution.as_ref().map_or(0, |e| e.attempts)
    }
    async fn started_at(&self) -> Option<DateTime<Utc>> {
        self.0.execution.as_ref().map(|e| e.started_at)
    }
    async fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.0.execution.as_ref().and_then(|e| e.finished_at)
    }
}
