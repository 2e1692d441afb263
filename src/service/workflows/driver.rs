//! Driving one workflow run (docs/workflows.md, "Durable execution"): from its position, each
//! step is rendered, its run started and the step recorded as running, then the run's end and
//! the step's output are committed with the workflow's new position in one batch, before the
//! next step starts. Every write is guarded on this instance still holding the workflow's lease
//! and the workflow still running: when another instance took it over, or it was cancelled,
//! the driver stops.

use std::{collections::HashMap, sync::Arc};

use chrono::{DateTime, SubsecRound, Utc};
use entity::{
    runs,
    states::{RunStatus, WorkflowStatus, WorkflowStepStatus},
    users, workflow_runs, workflow_steps,
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryTrait,
    sea_query::{Expr, ExprTrait, OnConflict},
};
use serde_json::{Map, Value, json};

use super::{Workflows, driven_by_nobody, executions};
use crate::{
    db::batch::{self, Batch, Expect, OnGuard},
    domain::{Caller, Principal, RequestMeta, UserPrincipal},
    error::AppError,
    orchestrator::spec,
    service::{
        runs::RunInput,
        templates::{
            body::{self, Approval, Loop, Node, OnTimeout, Step, StepSource, WorkflowLimits},
            workflow,
        },
    },
};

/// The guard code of a write made without the workflow's lease, or after it stopped running.
const NOT_OURS: &str = "workflow_lease";

/// Walks the workflow's body from the start, replaying each step execution already committed
/// (its output, or its skip) and running the others, each committed before the next starts.
/// Conditions depend only on the variables and the outputs, so the replay takes the same path
/// the first walk took. Answers once the workflow ended, or stopped being this driver's.
/// Database errors are answered: the caller gives the lease up, and the workflow is resumed.
pub(super) async fn drive(
    workflows: &Arc<Workflows>,
    run: &workflow_runs::Model,
    caller: &Caller,
) -> Result<(), AppError> {
    let db = &workflows.db;
    let version = workflows.templates.version_of(&run.template_id, run.template_version).await?;
    let Some(version) = version else {
        let why = format!("version {} of its template no longer exists", run.template_version);
        return fail_unresumable(workflows, run, &why).await;
    };
    let nodes = body::nodes(&version.body);
    let mut order: HashMap<String, usize> =
        body::steps(&version.body).into_iter().enumerate().map(|(at, step)| (step.id, at)).collect();
    for node in &nodes {
        if let Node::Loop(looped) = node {
            let first = looped.steps.first().and_then(|step| order.get(&step.id)).copied().unwrap_or(0);
            order.insert(looped.id.clone(), first);
        }
    }
    let (committed, waiting): (Vec<_>, Vec<_>) = executions(db, &run.id)
        .await?
        .into_iter()
        .filter(|done| {
            matches!(
                done.status,
                WorkflowStepStatus::Succeeded | WorkflowStepStatus::Skipped | WorkflowStepStatus::Waiting
            )
        })
        .map(|done| ((done.step_id.clone(), done.iteration), done))
        .partition(|(_, done)| done.status != WorkflowStepStatus::Waiting);
    let (committed, waiting) = (committed.into_iter().collect(), waiting.into_iter().collect());
    let variables = run.variables.clone().unwrap_or_else(|| Value::Object(Map::new()));
    let mut walk = Walk {
        workflows,
        run,
        caller,
        limits: body::workflow_limits(&version.body),
        order,
        committed,
        waiting,
        context: variables.as_object().cloned().unwrap_or_default(),
        variables,
        steps: Map::new(),
        turns: HashMap::new(),
        totals: Totals::default(),
        executed: 0,
        last_output: None,
    };
    for node in &nodes {
        let flow = match node {
            Node::Step(step) => walk.step(step, 0).await?,
            Node::Loop(looped) => walk.looped(looped).await?,
            Node::Approval(approval) => walk.approval(approval).await?,
        };
        if flow == Flow::Stop {
            return Ok(());
        }
    }
    let output = walk.last_output.clone().unwrap_or_default();
    commit(workflows, run, None, Moment::Closed { position: walk.executed, output }).await?;
    Ok(())
}

/// Whether the walk goes on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Go,
    /// The workflow failed, or is no longer this driver's.
    Stop,
}

/// One walk of a workflow's body by its driver.
struct Walk<'a> {
    workflows: &'a Arc<Workflows>,
    run: &'a workflow_runs::Model,
    caller: &'a Caller,
    limits: WorkflowLimits,
    /// Each step's place in the body, loops' steps in place.
    order: HashMap<String, usize>,
    /// The executions committed before this walk, by step and iteration.
    committed: HashMap<(String, i32), workflow_steps::Model>,
    /// Approvals waiting for a decision when this walk began (their time ran out).
    waiting: HashMap<(String, i32), workflow_steps::Model>,
    /// The variables, `steps` and (in a loop) `loop`, as texts and conditions read them.
    context: Map<String, Value>,
    variables: Value,
    /// `steps.<id>`: `{output}` and, for looped steps, `{iterations: [{output}]}`.
    steps: Map<String, Value>,
    /// Answers so far per agent (`""`: routed), for `local/script`.
    turns: HashMap<String, u32>,
    /// What this walk's runs used, added to the workflow's row at each commit.
    totals: Totals,
    /// Step executions so far, replayed ones included.
    executed: usize,
    /// The output of the last step that succeeded: the workflow's, once it ends.
    last_output: Option<String>,
}

impl Walk<'_> {
    /// A loop: its steps round after round until `until` holds, at most `maxIterations`
    /// rounds; skipped whole when its `when` does not hold.
    async fn looped(&mut self, looped: &Loop) -> Result<Flow, AppError> {
        // A condition of the loop that cannot be evaluated fails the loop itself.
        let itself = Step {
            id: looped.id.clone(),
            path: looped.path.clone(),
            when: None,
            agent: None,
            source: StepSource::Prompt(String::new()),
            timeout_ms: None,
            retry: None,
        };
        if let Some(when) = &looped.when {
            match self.holds(&format!("{}.when", looped.path), when, (&itself, 0)).await? {
                None => return Ok(Flow::Stop),
                Some(false) => return Ok(Flow::Go),
                Some(true) => {}
            }
        }
        for iteration in 1..=looped.max_iterations {
            self.context.insert("loop".into(), json!({ "index": iteration }));
            for step in &looped.steps {
                if self.step(step, iteration as i32).await? == Flow::Stop {
                    return Ok(Flow::Stop);
                }
            }
            let until = format!("{}.loop.until", looped.path);
            match self.holds(&until, &looped.until, (&itself, iteration as i32)).await? {
                None => return Ok(Flow::Stop),
                Some(true) => break,
                Some(false) => {}
            }
        }
        self.context.remove("loop");
        Ok(Flow::Go)
    }

    /// An approval: replayed once decided; else the workflow waits (no driver, the lease free)
    /// until `approveWorkflowStep`, or until its `timeoutMs` runs out and an instance takes the
    /// workflow up again to apply `onTimeout`.
    async fn approval(&mut self, approval: &Approval) -> Result<Flow, AppError> {
        let itself = Step {
            id: approval.id.clone(),
            path: approval.path.clone(),
            when: approval.when.clone(),
            agent: None,
            source: StepSource::Prompt(approval.message.clone().unwrap_or_default()),
            timeout_ms: approval.timeout_ms,
            retry: None,
        };
        if let Some(done) = self.committed.remove(&(approval.id.clone(), 0)) {
            self.executed += 1;
            self.apply(&itself, &done);
            return Ok(Flow::Go);
        }
        if let Some(mut waited) = self.waiting.remove(&(approval.id.clone(), 0)) {
            return self.timed_out(&itself, approval, &mut waited).await;
        }
        if let Some(when) = &approval.when {
            match self.holds(&format!("{}.when", approval.path), when, (&itself, 0)).await? {
                None => return Ok(Flow::Stop),
                Some(false) => return self.skip(&itself, 0).await,
                Some(true) => {}
            }
        }
        let mut asking = self.execution(&itself, 0);
        asking.status = WorkflowStepStatus::Waiting;
        self.context.insert("steps".into(), Value::Object(self.steps.clone()));
        if let Some(message) = &approval.message {
            match body::render(&format!("{}.approval.message", approval.path), message, &self.context) {
                Ok(text) => asking.input = Some(text),
                Err(problems) => return self.end(&itself, refused(asking, AppError::invalid(problems))?).await,
            }
        }
        let deadline = approval
            .timeout_ms
            .map(|ms| asking.started_at + chrono::Duration::milliseconds(i64::try_from(ms).unwrap_or(i64::MAX)));
        let moment = Moment::Waiting { position: self.executed, deadline };
        commit(self.workflows, self.run, Some(&asking), moment).await?;
        Ok(Flow::Stop)
    }

    /// An approval whose time ran out: approved or failed as its `onTimeout` says.
    async fn timed_out(
        &mut self,
        itself: &Step,
        approval: &Approval,
        waited: &mut workflow_steps::Model,
    ) -> Result<Flow, AppError> {
        let ms = approval.timeout_ms.unwrap_or_default();
        waited.finished_at = Some(Utc::now().trunc_subsecs(6));
        let (status, code) = match approval.on_timeout {
            OnTimeout::Approve => (WorkflowStepStatus::Succeeded, None),
            OnTimeout::Reject => (WorkflowStepStatus::Failed, Some("REJECTED")),
            OnTimeout::Fail => (WorkflowStepStatus::Failed, Some("APPROVAL_TIMEOUT")),
        };
        waited.status = status;
        match code {
            None => waited.output = Some(format!("approved: no decision within {ms} ms")),
            Some(_) => {
                waited.error =
                    Some(format!("no decision within {ms} ms; onTimeout is {}", approval.on_timeout.as_str()))
            }
        }
        let ended = Ended { execution: waited.clone(), run: None, code: code.map(str::to_string) };
        self.end(itself, ended).await
    }

    /// Whether `condition` holds now. One that cannot be evaluated fails the workflow at
    /// `step` (`iteration`) with the condition's problem: None, the walk stops.
    async fn holds(
        &mut self,
        path: &str,
        condition: &str,
        (step, iteration): (&Step, i32),
    ) -> Result<Option<bool>, AppError> {
        self.context.insert("steps".into(), Value::Object(self.steps.clone()));
        match body::holds(path, condition, &self.context) {
            Ok(holds) => Ok(Some(holds)),
            Err(problems) => {
                let why = problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
                let ended = self.stopped(step, iteration, "BAD_CONDITION", why);
                self.end(step, ended).await.map(|_| None)
            }
        }
    }

    /// One step execution: replayed when committed, skipped when its `when` does not hold,
    /// else run within what the workflow's limits leave and committed.
    async fn step(&mut self, step: &Step, iteration: i32) -> Result<Flow, AppError> {
        if let Some(done) = self.committed.remove(&(step.id.clone(), iteration)) {
            self.executed += 1;
            self.apply(step, &done);
            return Ok(Flow::Go);
        }
        let when = match &step.when {
            Some(when) => self.holds(&format!("{}.when", step.path), when, (step, iteration)).await?,
            None => Some(true),
        };
        if when.is_none() {
            return Ok(Flow::Stop);
        }
        if when == Some(false) {
            return self.skip(step, iteration).await;
        }
        self.context.insert("steps".into(), Value::Object(self.steps.clone()));
        let ended = match self.allowance(step) {
            Ok(allowed) => match self.run_step(step, iteration, allowed).await? {
                Some(ended) => ended,
                None => return Ok(Flow::Stop),
            },
            Err((code, why)) => self.stopped(step, iteration, code, why),
        };
        self.end(step, ended).await
    }

    /// Commits `step` (`iteration`) as skipped: its condition does not hold.
    async fn skip(&mut self, step: &Step, iteration: i32) -> Result<Flow, AppError> {
        let mut skipped = self.execution(step, iteration);
        skipped.status = WorkflowStepStatus::Skipped;
        skipped.finished_at = Some(skipped.started_at);
        self.end(step, Ended { execution: skipped, run: None, code: None }).await
    }

    /// Commits a step's end (and the workflow's, when it failed); answers whether to go on.
    async fn end(&mut self, step: &Step, ended: Ended) -> Result<Flow, AppError> {
        let status = ended.execution.status;
        self.workflows.runner.metrics().runs.workflow_step(status_label(status));
        let mut spent = Totals::default();
        spent.add(ended.run.as_ref());
        self.totals.add(ended.run.as_ref());
        let failed = !matches!(status, WorkflowStepStatus::Succeeded | WorkflowStepStatus::Skipped);
        let end = if failed {
            End::Failed {
                step: step.id.clone(),
                code: ended.code.clone().unwrap_or_else(|| "STEP_FAILED".into()),
                error: format!("step `{}` failed: {}", step.id, ended.execution.error.as_deref().unwrap_or("")),
            }
        } else {
            End::Not
        };
        // A failed step is not committed as done: `retryWorkflowRun` runs it again.
        let position = if failed { self.executed } else { self.executed + 1 };
        let moment = Moment::Ended { position, spent: &spent, end };
        if !commit(self.workflows, self.run, Some(&ended.execution), moment).await? {
            return Ok(Flow::Stop);
        }
        if failed {
            let seen = self.steps.len() + 1;
            for _ in seen..self.order.len() {
                self.workflows.runner.metrics().runs.workflow_step("skipped");
            }
            return Ok(Flow::Stop);
        }
        self.executed += 1;
        self.apply(step, &ended.execution);
        Ok(Flow::Go)
    }

    /// What a committed execution of `step` adds to what later texts read.
    fn apply(&mut self, step: &Step, done: &workflow_steps::Model) {
        if done.run_id.is_some() {
            *self.turns.entry(step.agent.clone().unwrap_or_default()).or_default() += 1;
        }
        if done.status != WorkflowStepStatus::Succeeded {
            return;
        }
        let output = done.output.clone().unwrap_or_default();
        let entry = self.steps.entry(done.step_id.clone()).or_insert_with(|| json!({}));
        entry["output"] = json!(output);
        if done.iteration > 0 {
            let iterations = entry.as_object_mut().map(|e| e.entry("iterations").or_insert_with(|| json!([])));
            if let Some(Value::Array(list)) = iterations {
                list.push(json!({ "output": output }));
            }
        }
        self.last_output = Some(output);
    }

    /// A new execution row of `step` at `iteration`, running from now.
    fn execution(&self, step: &Step, iteration: i32) -> workflow_steps::Model {
        let mut execution = execution_of(self.run, self.order.get(&step.id).copied().unwrap_or(0), &step.id);
        execution.iteration = iteration;
        execution.agent = step.agent.clone();
        execution
    }

    /// A step that did not start: a workflow limit, or its condition, stopped it.
    fn stopped(&self, step: &Step, iteration: i32, code: &str, why: String) -> Ended {
        let mut execution = self.execution(step, iteration);
        execution.status = WorkflowStepStatus::Failed;
        execution.error = Some(why);
        execution.finished_at = Some(execution.started_at);
        Ended { execution, run: None, code: Some(code.to_string()) }
    }
}

/// A step as it ended: its execution row, its run, and the code of its error.
struct Ended {
    execution: workflow_steps::Model,
    run: Option<runs::Model>,
    code: Option<String>,
}

/// What a step may still use of its workflow's limits.
struct Allowance {
    timeout_ms: Option<u64>,
    max_cost_usd: Option<f64>,
}

impl Walk<'_> {
    /// The step's share of the workflow's `limits`, or why it may not start: the workflow has
    /// run `maxSteps` steps, spent `maxCostUsd`, or run past `timeoutMs`.
    fn allowance(&self, step: &Step) -> Result<Allowance, (&'static str, String)> {
        let (limits, run, executed) = (&self.limits, self.run, self.executed);
        if let Some(most) = limits.max_steps
            && executed >= most as usize
        {
            return Err(("LIMIT_EXCEEDED", format!("the workflow has run {executed} steps, its limits.maxSteps")));
        }
        let spent = run.cost_usd + self.totals.cost_usd;
        let max_cost_usd = match limits.max_cost_usd {
            Some(most) if spent > 0.0 && spent >= most => {
                let why = format!("the workflow has cost ${spent:.6}; its limits.maxCostUsd is ${most}");
                return Err(("COST_LIMIT", why));
            }
            most => most.map(|most| most - spent),
        };
        let mut timeout_ms = step.timeout_ms;
        if let Some(most) = limits.timeout_ms {
            let started = run.started_at.unwrap_or(run.created_at);
            let elapsed = u64::try_from((Utc::now() - started).num_milliseconds()).unwrap_or(0);
            let Some(left) = most.checked_sub(elapsed).filter(|left| *left > 0) else {
                return Err(("TIMEOUT", format!("the workflow ran past its limits.timeoutMs ({most} ms)")));
            };
            timeout_ms = Some(timeout_ms.map_or(left, |ms| std::cmp::min(ms, left)));
        }
        Ok(Allowance { timeout_ms, max_cost_usd })
    }

    /// Renders the step, starts its run within its `allowance`, records the step as running
    /// and waits for the run to end. None when the workflow stopped being this driver's.
    async fn run_step(&self, step: &Step, iteration: i32, allowance: Allowance) -> Result<Option<Ended>, AppError> {
        let workflows = self.workflows;
        let mut execution = self.execution(step, iteration);
        let content = match workflow::prompt(&workflows.templates, self.caller, step, &self.context).await {
            Ok(content) => content,
            Err(error) => return refused(execution, error).map(Some),
        };
        execution.input = Some(content.clone());
        // Checked when the template was saved.
        let retry = step.retry.as_ref().and_then(|retry| spec::retry_policy(retry, "retry").ok());
        let turn = self.turns.get(&step.agent.clone().unwrap_or_default()).copied().unwrap_or(0) + 1;
        let input = RunInput {
            content,
            agent: step.agent.clone(),
            variables: Some(self.variables.clone()),
            timeout_ms: allowance.timeout_ms,
            max_cost_usd: allowance.max_cost_usd,
            retry,
            turn: Some(turn),
            ..Default::default()
        };
        let (started, ended) = match workflows.runner.begin(self.caller, &self.run.team_id, input).await {
            Ok(started) => started,
            Err(error) => return refused(execution, error).map(Some),
        };
        execution.run_id = Some(started.id.clone());
        if !commit(workflows, self.run, Some(&execution), Moment::Started).await? {
            workflows.runner.cancel_here(&started.id).await;
            return Ok(None);
        }
        let finished = match ended.await {
            Ok(Some(finished)) => finished,
            _ => workflows.runner.reload(&started.id).await?,
        };
        execution.finished_at = Some(Utc::now().trunc_subsecs(6));
        let code = match finished.status {
            RunStatus::Succeeded => {
                execution.status = WorkflowStepStatus::Succeeded;
                execution.output = Some(finished.output.clone().unwrap_or_default());
                None
            }
            status => {
                execution.status = WorkflowStepStatus::Failed;
                let why = finished.error.clone().unwrap_or_else(|| "no reason given".into());
                execution.error = Some(format!("the run {status}: {why}"));
                Some(finished.error_code.map_or_else(|| "STEP_FAILED".into(), |code| code.to_string().to_uppercase()))
            }
        };
        Ok(Some(Ended { execution, run: Some(finished), code }))
    }
}

/// The step failed before a run of it ended: its text could not be rendered, or its run was
/// refused (a budget, a bad variable). Errors the caller cannot fix are answered instead.
fn refused(mut execution: workflow_steps::Model, error: AppError) -> Result<Ended, AppError> {
    if matches!(error, AppError::Internal(_) | AppError::Unavailable(_)) {
        return Err(error);
    }
    execution.status = WorkflowStepStatus::Failed;
    execution.finished_at = Some(Utc::now().trunc_subsecs(6));
    execution.error = Some(match &error {
        AppError::BadUserInput { problems, .. } if !problems.is_empty() => {
            problems.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")
        }
        other => other.to_string(),
    });
    Ok(Ended { execution, run: None, code: Some(error.code().to_string()) })
}

/// A new execution row of step `step_id` at `index`, running from now.
fn execution_of(run: &workflow_runs::Model, index: usize, step_id: &str) -> workflow_steps::Model {
    workflow_steps::Model {
        id: format!("wfs_{}", uuid::Uuid::now_v7().simple()),
        workflow_run_id: run.id.clone(),
        position: index as i32,
        step_id: step_id.to_string(),
        iteration: 0,
        branch: String::new(),
        agent: None,
        run_id: None,
        input: None,
        output: None,
        status: WorkflowStepStatus::Running,
        error: None,
        attempts: 1,
        started_at: Utc::now().trunc_subsecs(6),
        finished_at: None,
    }
}

/// What runs used: one step's (added to the workflow's row when it is committed), or all of
/// this walk's (what the workflow's limits see).
#[derive(Default)]
struct Totals {
    tokens_in: i64,
    tokens_out: i64,
    cost_usd: f64,
}

impl Totals {
    fn add(&mut self, run: Option<&runs::Model>) {
        if let Some(run) = run {
            self.tokens_in += run.tokens_in;
            self.tokens_out += run.tokens_out;
            self.cost_usd += run.cost_usd;
        }
    }
}

/// How the workflow ends with the step being committed.
enum End {
    /// It goes on.
    Not,
    /// It waits for an approval.
    Pauses,
    Succeeded {
        output: String,
    },
    Failed {
        step: String,
        code: String,
        error: String,
    },
}

/// What a commit records.
enum Moment<'a> {
    /// The step's run started.
    Started,
    /// The step ended, its run having used `spent`; the workflow is at `position`.
    Ended { position: usize, spent: &'a Totals, end: End },
    /// An approval waits for a decision until `deadline` (forever when none): the workflow is
    /// `waiting`, driven by no one.
    Waiting { position: usize, deadline: Option<DateTime<Utc>> },
    /// The walk reached the end after `position` executions; the workflow succeeded with
    /// `output`.
    Closed { position: usize, output: String },
}

/// Commits `execution` and the workflow's row in one batch, guarded on this instance holding
/// the lease of a running workflow. False when it does not (taken over, or cancelled).
async fn commit(
    workflows: &Workflows,
    run: &workflow_runs::Model,
    execution: Option<&workflow_steps::Model>,
    moment: Moment<'_>,
) -> Result<bool, AppError> {
    let now = Utc::now().trunc_subsecs(6);
    let mut row = workflow_runs::Entity::update_many()
        .filter(workflow_runs::Column::Id.eq(run.id.as_str()))
        .filter(workflow_runs::Column::LeaseHolder.eq(workflows.holder.as_str()))
        .filter(workflow_runs::Column::Status.eq(WorkflowStatus::Running));
    let end = match moment {
        Moment::Started => End::Not,
        Moment::Ended { position, spent: totals, end } => {
            let add = |column: workflow_runs::Column, amount: sea_orm::Value| Expr::col(column).add(amount);
            row = row
                .col_expr(workflow_runs::Column::Position, Expr::value(position as i32))
                .col_expr(
                    workflow_runs::Column::TokensIn,
                    add(workflow_runs::Column::TokensIn, totals.tokens_in.into()),
                )
                .col_expr(
                    workflow_runs::Column::TokensOut,
                    add(workflow_runs::Column::TokensOut, totals.tokens_out.into()),
                )
                .col_expr(workflow_runs::Column::CostUsd, add(workflow_runs::Column::CostUsd, totals.cost_usd.into()));
            end
        }
        Moment::Closed { position, output } => {
            row = row.col_expr(workflow_runs::Column::Position, Expr::value(position as i32));
            End::Succeeded { output }
        }
        Moment::Waiting { position, deadline } => {
            row = row
                .col_expr(workflow_runs::Column::Position, Expr::value(position as i32))
                .col_expr(workflow_runs::Column::Status, Expr::value(WorkflowStatus::Waiting))
                .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(Option::<String>::None))
                .col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(deadline));
            End::Pauses
        }
    };
    row = match end {
        End::Pauses => row,
        End::Not => row.col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(workflows.lease_until())),
        End::Succeeded { output } => {
            ended(row, WorkflowStatus::Succeeded, now).col_expr(workflow_runs::Column::Output, Expr::value(output))
        }
        End::Failed { step, code, error } => ended(row, WorkflowStatus::Failed, now)
            .col_expr(workflow_runs::Column::FailedStep, Expr::value(step))
            .col_expr(workflow_runs::Column::ErrorCode, Expr::value(code))
            .col_expr(workflow_runs::Column::Error, Expr::value(error)),
    };
    let mut batch = Batch::new(workflows.writer.backend()).write(&row.into_query()).guard(Expect::One, NOT_OURS);
    if let Some(execution) = execution {
        batch = batch.write(&upsert(execution));
    }
    let written = batch::write(
        workflows.writer.as_ref(),
        || {
            let batch = batch.clone();
            async move { Ok(batch) }
        },
        |_, _| OnGuard::Answer(AppError::Conflict(NOT_OURS.into())),
    )
    .await;
    match written {
        Ok(_) => Ok(true),
        Err(AppError::Conflict(_)) => {
            tracing::info!(workflow_run = %run.id, "the workflow is no longer this instance's to drive; stopping");
            Ok(false)
        }
        Err(error) => Err(error),
    }
}

/// The workflow row's update, ending it with `status` and giving its lease up.
fn ended(
    row: sea_orm::UpdateMany<workflow_runs::Entity>,
    status: WorkflowStatus,
    now: DateTime<Utc>,
) -> sea_orm::UpdateMany<workflow_runs::Entity> {
    row.col_expr(workflow_runs::Column::Status, Expr::value(status))
        .col_expr(workflow_runs::Column::FinishedAt, Expr::value(now))
        .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(Option::<String>::None))
        .col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(Option::<DateTime<Utc>>::None))
}

/// Inserts the execution row, or updates the one an earlier attempt of the same step left:
/// a start (a running row) counts one more attempt.
fn upsert(execution: &workflow_steps::Model) -> sea_orm::sea_query::InsertStatement {
    use workflow_steps::Column as C;
    let mut on_conflict = OnConflict::columns([C::WorkflowRunId, C::StepId, C::Iteration, C::Branch]);
    on_conflict.update_columns([C::Agent, C::RunId, C::Input, C::Output, C::Status, C::Error, C::FinishedAt]);
    if execution.status == WorkflowStepStatus::Running {
        on_conflict.update_columns([C::StartedAt]);
        on_conflict.value(C::Attempts, Expr::col((workflow_steps::Entity, C::Attempts)).add(1));
    }
    workflow_steps::Entity::insert(workflow_steps::ActiveModel::from(execution.clone()))
        .on_conflict(on_conflict)
        .into_query()
}

fn status_label(status: WorkflowStepStatus) -> &'static str {
    match status {
        WorkflowStepStatus::Succeeded => "succeeded",
        WorkflowStepStatus::Skipped => "skipped",
        _ => "failed",
    }
}

/// Takes the lease of workflow run `id` when it is in progress and no live instance holds it:
/// one conditional `UPDATE … RETURNING`. Answers the run when this instance now holds it.
pub(super) async fn claim(workflows: &Workflows, id: &str) -> Result<Option<workflow_runs::Model>, AppError> {
    let now = Utc::now().trunc_subsecs(6);
    let take = workflow_runs::Entity::update_many()
        .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(workflows.holder.as_str()))
        .col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(workflows.lease_until()))
        .col_expr(workflow_runs::Column::Status, Expr::value(WorkflowStatus::Running))
        .filter(workflow_runs::Column::Id.eq(id))
        .filter(driven_by_nobody(now))
        .into_query()
        .returning_all()
        .to_owned();
    let results = workflows
        .writer
        .run(Batch::new(workflows.writer.backend()).write_returning(&take))
        .await
        .map_err(sea_orm::DbErr::from)?;
    match results.first().filter(|taken| !taken.rows.is_empty()) {
        Some(taken) => taken.one().map(Some),
        None => Ok(None),
    }
}

/// Whom a resumed workflow's steps run as: the user who started it (an API key's owner when a
/// key did), with their global role as it is now.
pub(super) async fn caller_of(db: &DatabaseConnection, run: &workflow_runs::Model) -> Result<Caller, String> {
    let Some(user_id) = &run.user_id else {
        return Err("it was started by no user, so no one can run its steps".into());
    };
    let user = users::Entity::find_by_id(user_id.as_str()).one(db).await.map_err(|e| e.to_string())?;
    let Some(user) = user.filter(|user| user.deleted_at.is_none()) else {
        return Err("the user who started it no longer exists".into());
    };
    let principal = Principal::User(UserPrincipal {
        id: user.id,
        role: user.role,
        email: user.email,
        org: None,
        expires_at: Utc::now() + chrono::Duration::days(1),
    });
    let meta = RequestMeta { request_id: format!("resume {}", run.id), ..RequestMeta::default() };
    Ok(Caller { principal, meta })
}

/// Ends a workflow that cannot go on, whatever step it is at, while this instance holds it.
pub(super) async fn fail_unresumable(
    workflows: &Workflows,
    run: &workflow_runs::Model,
    why: &str,
) -> Result<(), AppError> {
    tracing::warn!(workflow_run = %run.id, why, "a workflow cannot be resumed; it is marked failed");
    let mine = workflow_runs::Entity::update_many()
        .filter(workflow_runs::Column::Id.eq(run.id.as_str()))
        .filter(workflow_runs::Column::LeaseHolder.eq(workflows.holder.as_str()));
    let row = ended(mine, WorkflowStatus::Failed, Utc::now().trunc_subsecs(6))
        .col_expr(workflow_runs::Column::ErrorCode, Expr::value("INTERRUPTED"))
        .col_expr(workflow_runs::Column::Error, Expr::value(format!("cannot resume: {why}")));
    workflows
        .writer
        .run(Batch::new(workflows.writer.backend()).write(&row.into_query()))
        .await
        .map_err(sea_orm::DbErr::from)?;
    Ok(())
}
