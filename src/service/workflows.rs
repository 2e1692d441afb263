//! Workflow runs (docs/workflows.md): a WORKFLOW template started on a team is stored, then
//! driven step by step in a task of its own by the instance that holds its lease. Each step's
//! output is committed before the next step starts, so a workflow an instance left behind (a
//! crash, a SIGKILL, a stop) is taken over by another instance, or the next one to start, and
//! resumes from its last committed step.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use chrono::{SubsecRound, Utc};
use entity::{
    runs,
    states::{WorkflowStatus, WorkflowStepStatus},
    workflow_runs, workflow_steps,
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    sea_query::{Expr, ExprTrait},
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    audit::{AuditChain, Audited, Decision, Entry, actions},
    page::{Page, PageRequest},
    runs::Runner,
    templates::{
        Templates,
        body::{self, Node},
        workflow,
    },
};
use crate::{
    auth::guard,
    db::batch::{Batch, BatchWriter, Expect, MAX_PARAMS, OnGuard},
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
};

mod driver;

/// The guard code of a workflow run that has already finished.
const WORKFLOW_ENDED: &str = "workflow_ended";

/// The guard code of a decision on a step that is not waiting for one.
const NOT_WAITING: &str = "step_not_waiting";

/// The longest comment on a decision, in characters.
const MAX_COMMENT_CHARS: usize = 2_000;

/// A decision on an approval.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub step_id: String,
    pub approve: bool,
    pub comment: Option<String>,
}

/// The guard code of a retry of a workflow run that has not failed.
const NOT_FAILED: &str = "workflow_not_failed";

/// The guard code of a repeated idempotency key.
const KEY_USED: &str = "idempotency_key";

/// Longest idempotency key, in bytes.
const MAX_KEY_BYTES: usize = 255;

/// What to start.
#[derive(Clone, Debug, Default)]
pub struct StartInput {
    /// The WORKFLOW template, by id or slug.
    pub template: String,
    /// Its version; the current one when absent.
    pub version: Option<i32>,
    pub variables: Value,
    /// Wait (at most `ENSEMBLE_RUN_WAIT_SECS`) for it to end before answering.
    pub wait: bool,
    /// Starting again with the same key answers the first run.
    pub idempotency_key: Option<String>,
}

/// A workflow run's steps as a person reads them: the body's steps in order, each with its
/// latest execution, or as not run (pending while the workflow goes on, skipped once it ended).
#[derive(Clone, Debug)]
pub struct StepView {
    pub step_id: String,
    /// The agent the step names; none when the team's routing chose.
    pub agent: Option<String>,
    pub status: WorkflowStepStatus,
    pub execution: Option<workflow_steps::Model>,
    pub run: Option<runs::Model>,
}

/// Runs workflows and keeps driving the ones no instance drives.
pub struct Workflows {
    db: DatabaseConnection,
    writer: Arc<dyn BatchWriter>,
    runner: Arc<Runner>,
    templates: Arc<Templates>,
    audit: Arc<AuditChain>,
    /// This instance, as its leases name it.
    holder: String,
    /// How long a lease lasts unless renewed (`ENSEMBLE_WORKFLOW_LEASE_SECS`).
    lease: Duration,
    /// The workflow runs this instance drives, and how to learn that each has stopped.
    driving: Mutex<HashMap<String, watch::Receiver<bool>>>,
}

impl Workflows {
    pub fn new(
        db: DatabaseConnection,
        writer: Arc<dyn BatchWriter>,
        runner: Arc<Runner>,
        templates: Arc<Templates>,
        audit: Arc<AuditChain>,
        lease: Duration,
    ) -> Self {
        let holder = crate::db::lease::holder_name();
        Self { db, writer, runner, templates, audit, holder, lease, driving: Mutex::new(HashMap::new()) }
    }

    /// Workflow runs this instance drives now.
    pub fn in_progress(&self) -> usize {
        self.driving.lock().map_or(0, |driving| driving.len())
    }

    /// Checks and stores a workflow run (audited), starts driving it, and with `wait` waits for
    /// it to end, at most `ENSEMBLE_RUN_WAIT_SECS`. Answers the run as it then is. A repeated
    /// idempotency key answers the run it first started, starting nothing.
    #[tracing::instrument(skip_all, fields(team = %team_id, template = %input.template))]
    pub async fn start(
        self: &Arc<Self>,
        caller: &Caller,
        team_id: &str,
        input: StartInput,
    ) -> Result<workflow_runs::Model, AppError> {
        let key = input.idempotency_key.as_deref();
        if let Some(problem) = key.and_then(key_problem) {
            return Err(AppError::invalid(vec![problem]));
        }
        let planned =
            workflow::prepare(&self.templates, caller, &input.template, input.version, team_id, &input.variables)
                .await?;
        let now = Utc::now().trunc_subsecs(6);
        let (user_id, api_key_id) = super::runs::principal_ids(&caller.principal);
        let run = workflow_runs::Model {
            id: format!("wfr_{}", uuid::Uuid::now_v7().simple()),
            team_id: team_id.to_string(),
            template_id: planned.resolved.template.id.clone(),
            template_version: planned.resolved.version.version,
            variables: Some(Value::Object(planned.values)),
            status: WorkflowStatus::Running,
            position: 0,
            output: None,
            failed_step: None,
            error_code: None,
            error: None,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            user_id,
            api_key_id,
            idempotency_key: key.map(str::to_string),
            lease_holder: Some(self.holder.clone()),
            lease_expires_at: Some(self.lease_until()),
            created_at: now,
            started_at: Some(now),
            finished_at: None,
        };
        let plan = || async {
            if let Some(first) = self.started_with(team_id, key).await? {
                if first.template_id != run.template_id {
                    return Err(AppError::Conflict(
                        "This idempotency key already started a different workflow; use a new key.".into(),
                    ));
                }
                return Ok(Decision::Unchanged(None));
            }
            let insert = workflow_runs::Entity::insert(workflow_runs::ActiveModel::from(run.clone()))
                .on_conflict(
                    sea_orm::sea_query::OnConflict::columns([
                        workflow_runs::Column::TeamId,
                        workflow_runs::Column::IdempotencyKey,
                    ])
                    .do_nothing()
                    .to_owned(),
                )
                .into_query();
            let batch = Batch::new(self.writer.backend()).write(&insert).guard(Expect::One, KEY_USED);
            let entry = Entry::new(actions::WORKFLOW_START, "workflow_run", run.id.clone()).team(team_id).changes(
                json!({"templateId": run.template_id, "version": run.template_version, "idempotencyKey": key}),
            );
            Ok(Decision::Write(Audited { batch, entry, answer: Some(run.clone()) }))
        };
        // A key used meanwhile by another start: the next attempt finds its run.
        let (started, _) = self.audit.decide(caller, plan, |_, _| OnGuard::Retry).await?;
        let Some(started) = started else {
            let first = self.started_with(team_id, key).await?;
            return first.ok_or_else(|| AppError::internal("an idempotency key's run vanished"));
        };
        let ended = self.drive(started.clone(), caller.clone());
        if input.wait {
            let limit = Duration::from_secs(self.runner.wait_secs());
            let _ = tokio::time::timeout(limit, stopped(ended)).await;
        }
        self.reload(&started.id).await
    }

    /// The run `key` started on the team, when a key was given and it did.
    async fn started_with(&self, team_id: &str, key: Option<&str>) -> Result<Option<workflow_runs::Model>, AppError> {
        let Some(key) = key else { return Ok(None) };
        Ok(workflow_runs::Entity::find()
            .filter(workflow_runs::Column::TeamId.eq(team_id))
            .filter(workflow_runs::Column::IdempotencyKey.eq(key))
            .one(&self.db)
            .await?)
    }

    async fn reload(&self, id: &str) -> Result<workflow_runs::Model, AppError> {
        workflow_runs::Entity::find_by_id(id).one(&self.db).await?.ok_or_else(no_such_run)
    }

    /// A workflow run the caller may see (any role on its team).
    pub async fn get(&self, caller: &Caller, id: &str) -> Result<workflow_runs::Model, AppError> {
        let run = self.reload(id).await?;
        guard::team(&self.db, caller, &run.team_id, TeamRole::Viewer).await.map_err(|_| no_such_run())?;
        Ok(run)
    }

    /// A team's workflow runs, newest first, optionally of one status and within a time range.
    pub async fn list(
        &self,
        caller: &Caller,
        team_id: &str,
        filter: RunsFilter,
        page: &PageRequest,
    ) -> Result<Page<workflow_runs::Model>, AppError> {
        guard::team(&self.db, caller, team_id, TeamRole::Viewer).await?;
        let mut query = workflow_runs::Entity::find().filter(workflow_runs::Column::TeamId.eq(team_id));
        if let Some(status) = filter.status {
            query = query.filter(workflow_runs::Column::Status.eq(status));
        }
        if let Some(from) = filter.from {
            query = query.filter(workflow_runs::Column::CreatedAt.gte(from));
        }
        if let Some(to) = filter.to {
            query = query.filter(workflow_runs::Column::CreatedAt.lt(to));
        }
        if let Some(after) = &page.after {
            query = query.filter(workflow_runs::Column::Id.lt(after.as_str()));
        }
        let rows = query.order_by_desc(workflow_runs::Column::Id).limit(page.first + 1).all(&self.db).await?;
        Ok(page.page(rows))
    }

    /// The run's step executions in the order they started (each iteration of a looped step
    /// its own), then the body's steps that have not run, each with its run.
    pub async fn steps(&self, run: &workflow_runs::Model) -> Result<Vec<StepView>, AppError> {
        let version = self.templates.version_of(&run.template_id, run.template_version).await?;
        let body_steps = version.map(|v| body::steps(&v.body)).unwrap_or_default();
        let executions = executions(&self.db, &run.id).await?;
        let run_ids: Vec<&str> = executions.iter().filter_map(|e| e.run_id.as_deref()).collect();
        let mut runs_by_id = HashMap::new();
        for chunk in run_ids.chunks(MAX_PARAMS) {
            let found =
                runs::Entity::find().filter(runs::Column::Id.is_in(chunk.iter().copied())).all(&self.db).await?;
            runs_by_id.extend(found.into_iter().map(|r| (r.id.clone(), r)));
        }
        let not_run = if run.status.is_finished() { WorkflowStepStatus::Skipped } else { WorkflowStepStatus::Pending };
        let waiting = body_steps
            .into_iter()
            .filter(|step| !executions.iter().any(|e| e.step_id == step.id))
            .map(|step| StepView { step_id: step.id, agent: step.agent, status: not_run, execution: None, run: None });
        let ran: Vec<StepView> = executions
            .iter()
            .map(|execution| StepView {
                step_id: execution.step_id.clone(),
                agent: execution.agent.clone(),
                status: execution.status,
                run: execution.run_id.as_ref().and_then(|id| runs_by_id.get(id)).cloned(),
                execution: Some(execution.clone()),
            })
            .collect();
        Ok(ran.into_iter().chain(waiting).collect())
    }

    /// A workflow run the caller may act on (operators and up; NOT_FOUND to those who may not
    /// see it).
    async fn operated(&self, caller: &Caller, id: &str) -> Result<workflow_runs::Model, AppError> {
        let run = self.reload(id).await?;
        guard::team(&self.db, caller, &run.team_id, TeamRole::Operator).await.map_err(|e| match e {
            AppError::Forbidden(m) => AppError::Forbidden(m),
            _ => no_such_run(),
        })?;
        Ok(run)
    }

    /// Resumes a FAILED workflow run from the step that failed, keeping the outputs of the
    /// steps before it (operators and up; audited); its `limits.timeoutMs` counts afresh.
    /// CONFLICT unless it failed.
    pub async fn retry(self: &Arc<Self>, caller: &Caller, id: &str) -> Result<workflow_runs::Model, AppError> {
        let run = self.operated(caller, id).await?;
        let plan = || async {
            let now = Utc::now().trunc_subsecs(6);
            let none = Option::<String>::None;
            let again = workflow_runs::Entity::update_many()
                .col_expr(workflow_runs::Column::Status, Expr::value(WorkflowStatus::Running))
                .col_expr(workflow_runs::Column::FailedStep, Expr::value(none.clone()))
                .col_expr(workflow_runs::Column::ErrorCode, Expr::value(none.clone()))
                .col_expr(workflow_runs::Column::Error, Expr::value(none))
                .col_expr(workflow_runs::Column::StartedAt, Expr::value(now))
                .col_expr(workflow_runs::Column::FinishedAt, Expr::value(Option::<chrono::DateTime<Utc>>::None))
                .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(self.holder.as_str()))
                .col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(self.lease_until()))
                .filter(workflow_runs::Column::Id.eq(id))
                .filter(workflow_runs::Column::Status.eq(WorkflowStatus::Failed))
                .into_query();
            let batch = Batch::new(self.writer.backend()).write(&again).guard(Expect::One, NOT_FAILED);
            let entry = Entry::new(actions::WORKFLOW_RETRY, "workflow_run", id.to_string())
                .team(run.team_id.clone())
                .changes(json!({"failedStep": run.failed_step, "errorCode": run.error_code}));
            Ok(Audited { batch, entry, answer: () })
        };
        let not_failed = |_, code| match code {
            NOT_FAILED => OnGuard::Answer(AppError::Conflict(format!(
                "Only a FAILED workflow run can be retried; this one is {}.",
                run.status.to_string().to_uppercase()
            ))),
            _ => OnGuard::Retry,
        };
        self.audit.write(caller, plan, not_failed).await?;
        let again = self.reload(id).await?;
        self.drive(again.clone(), caller.clone());
        Ok(again)
    }

    /// Decides an approval the run waits on (operators and up; audited): approved, the
    /// workflow goes on here (the step's output is the comment, or `approved`); rejected, it
    /// fails with `REJECTED`. CONFLICT when the step was decided already; BAD_USER_INPUT when
    /// the run is not waiting on it.
    pub async fn approve(
        self: &Arc<Self>,
        caller: &Caller,
        id: &str,
        decision: Verdict,
    ) -> Result<workflow_runs::Model, AppError> {
        let run = self.operated(caller, id).await?;
        if decision.comment.as_ref().is_some_and(|c| c.chars().count() > MAX_COMMENT_CHARS) {
            let problem = Problem::new("input.comment", format!("must be at most {MAX_COMMENT_CHARS} characters"));
            return Err(AppError::invalid(vec![problem]));
        }
        let step = decision.step_id.as_str();
        let version = self.templates.version_of(&run.template_id, run.template_version).await?;
        let nodes = version.map(|v| body::nodes(&v.body)).unwrap_or_default();
        if !nodes.iter().any(|node| matches!(node, Node::Approval(approval) if approval.id == step)) {
            let problem = Problem::new("input.stepId", format!("the workflow has no approval step `{step}`"));
            return Err(AppError::invalid(vec![problem]));
        }
        let rows: Vec<workflow_steps::Model> =
            executions(&self.db, id).await?.into_iter().filter(|row| row.step_id == step).collect();
        if !rows.iter().any(|row| row.status == WorkflowStepStatus::Waiting) {
            if !rows.is_empty() {
                return Err(AppError::Conflict(format!("The step `{step}` has been decided already.")));
            }
            let problem = Problem::new("input.stepId", format!("the run has not reached the approval `{step}` yet"));
            return Err(AppError::invalid(vec![problem]));
        }
        let by = caller.principal.user_id().unwrap_or("an API key").to_string();
        let plan = || async {
            let now = Utc::now().trunc_subsecs(6);
            let remark = decision.comment.clone().filter(|c| !c.trim().is_empty());
            let mut row = workflow_steps::Entity::update_many()
                .col_expr(workflow_steps::Column::FinishedAt, Expr::value(now))
                .filter(workflow_steps::Column::WorkflowRunId.eq(id))
                .filter(workflow_steps::Column::StepId.eq(step))
                .filter(workflow_steps::Column::Status.eq(WorkflowStepStatus::Waiting));
            let mut workflow = workflow_runs::Entity::update_many()
                .filter(workflow_runs::Column::Id.eq(id))
                .filter(workflow_runs::Column::Status.eq(WorkflowStatus::Waiting));
            if decision.approve {
                let output = remark.clone().unwrap_or_else(|| "approved".into());
                row = row
                    .col_expr(workflow_steps::Column::Status, Expr::value(WorkflowStepStatus::Succeeded))
                    .col_expr(workflow_steps::Column::Output, Expr::value(output));
                workflow = workflow
                    .col_expr(workflow_runs::Column::Status, Expr::value(WorkflowStatus::Running))
                    .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(self.holder.as_str()))
                    .col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(self.lease_until()));
            } else {
                let why = match &remark {
                    Some(comment) => format!("rejected by {by}: {comment}"),
                    None => format!("rejected by {by}"),
                };
                row = row
                    .col_expr(workflow_steps::Column::Status, Expr::value(WorkflowStepStatus::Failed))
                    .col_expr(workflow_steps::Column::Error, Expr::value(why.clone()));
                workflow = workflow
                    .col_expr(workflow_runs::Column::Status, Expr::value(WorkflowStatus::Failed))
                    .col_expr(workflow_runs::Column::FailedStep, Expr::value(step))
                    .col_expr(workflow_runs::Column::ErrorCode, Expr::value("REJECTED"))
                    .col_expr(workflow_runs::Column::Error, Expr::value(format!("step `{step}` was {why}")))
                    .col_expr(workflow_runs::Column::FinishedAt, Expr::value(now))
                    .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(Option::<String>::None))
                    .col_expr(
                        workflow_runs::Column::LeaseExpiresAt,
                        Expr::value(Option::<chrono::DateTime<Utc>>::None),
                    );
            }
            let batch = Batch::new(self.writer.backend())
                .write(&row.into_query())
                .guard(Expect::One, NOT_WAITING)
                .write(&workflow.into_query())
                .guard(Expect::One, NOT_WAITING);
            let entry = Entry::new(actions::WORKFLOW_APPROVE, "workflow_run", id.to_string())
                .team(run.team_id.clone())
                .changes(json!({"stepId": step, "approve": decision.approve, "comment": remark}));
            Ok(Audited { batch, entry, answer: () })
        };
        let decided = |_, code| match code {
            NOT_WAITING => OnGuard::Answer(AppError::Conflict(format!("The step `{step}` has been decided already."))),
            _ => OnGuard::Retry,
        };
        self.audit.write(caller, plan, decided).await?;
        let after = self.reload(id).await?;
        if decision.approve {
            self.drive(after.clone(), caller.clone());
        }
        Ok(after)
    }

    /// Cancels a workflow run in progress (operators and up; audited): no step starts after
    /// this, and the step running now has its run cancelled. CONFLICT when it has ended.
    pub async fn cancel(&self, caller: &Caller, id: &str) -> Result<workflow_runs::Model, AppError> {
        let run = self.operated(caller, id).await?;
        let plan = || async {
            let now = Utc::now().trunc_subsecs(6);
            let end = workflow_runs::Entity::update_many()
                .col_expr(workflow_runs::Column::Status, Expr::value(WorkflowStatus::Cancelled))
                .col_expr(workflow_runs::Column::ErrorCode, Expr::value("CANCELLED"))
                .col_expr(workflow_runs::Column::Error, Expr::value("the workflow was cancelled"))
                .col_expr(workflow_runs::Column::FinishedAt, Expr::value(now))
                .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(Option::<String>::None))
                .filter(workflow_runs::Column::Id.eq(id))
                .filter(workflow_runs::Column::Status.is_in(WorkflowStatus::IN_PROGRESS))
                .into_query();
            let step = workflow_steps::Entity::update_many()
                .col_expr(workflow_steps::Column::Status, Expr::value(WorkflowStepStatus::Cancelled))
                .col_expr(workflow_steps::Column::Error, Expr::value("the workflow was cancelled"))
                .col_expr(workflow_steps::Column::FinishedAt, Expr::value(now))
                .filter(workflow_steps::Column::WorkflowRunId.eq(id))
                .filter(
                    workflow_steps::Column::Status.is_in([WorkflowStepStatus::Running, WorkflowStepStatus::Waiting]),
                )
                .into_query();
            let batch = Batch::new(self.writer.backend()).write(&end).guard(Expect::One, WORKFLOW_ENDED).write(&step);
            let entry = Entry::new(actions::WORKFLOW_CANCEL, "workflow_run", id.to_string()).team(run.team_id.clone());
            Ok(Audited { batch, entry, answer: () })
        };
        let ended = |_, code| match code {
            WORKFLOW_ENDED => OnGuard::Answer(AppError::Conflict("The workflow run has already ended.".into())),
            _ => OnGuard::Retry,
        };
        self.audit.write(caller, plan, ended).await?;
        // The step in flight: its run stops, wherever it runs; the driver stops at its next write.
        for execution in executions(&self.db, id).await? {
            if let Some(run_id) = execution.run_id.filter(|_| execution.status == WorkflowStepStatus::Cancelled) {
                match self.runner.cancel(caller, &run_id).await {
                    Ok(_) | Err(AppError::Conflict(_)) => {}
                    Err(error) => tracing::warn!(%error, run = %run_id, "cannot cancel a cancelled workflow's run"),
                }
            }
        }
        self.reload(id).await
    }

    /// When a lease taken or renewed now runs out.
    fn lease_until(&self) -> chrono::DateTime<Utc> {
        Utc::now().trunc_subsecs(6) + chrono::Duration::from_std(self.lease).unwrap_or(chrono::Duration::MAX)
    }

    /// Drives `run` in a task of its own unless this instance already does; the receiver
    /// learns when the task stops.
    fn drive(self: &Arc<Self>, run: workflow_runs::Model, caller: Caller) -> watch::Receiver<bool> {
        let (stopped, receiver) = watch::channel(false);
        {
            let Ok(mut driving) = self.driving.lock() else { return receiver };
            if let Some(existing) = driving.get(&run.id) {
                return existing.clone();
            }
            driving.insert(run.id.clone(), receiver.clone());
        }
        let workflows = self.clone();
        tokio::spawn(async move {
            if let Err(error) = driver::drive(&workflows, &run, &caller).await {
                // Given up so that the next look for workflows nobody drives takes it again.
                tracing::error!(workflow_run = %run.id, %error, "a workflow stopped on an error; it will be resumed");
                if let Err(error) = workflows.release(std::slice::from_ref(&run.id)).await {
                    tracing::warn!(workflow_run = %run.id, %error, "cannot give up a workflow's lease");
                }
            }
            if let Ok(mut driving) = workflows.driving.lock() {
                driving.remove(&run.id);
            }
            let _ = stopped.send(true);
        });
        receiver
    }

    /// Every `ENSEMBLE_WORKFLOW_LEASE_SECS` / 3: renews the leases of the workflows this
    /// instance drives, and takes over those nobody drives (never started here, or their
    /// instance stopped and their lease ran out), resuming each from its last committed step.
    pub async fn keep_driving(self: Arc<Self>) {
        let mut tick = tokio::time::interval((self.lease / 3).max(Duration::from_millis(100)));
        loop {
            tick.tick().await;
            if let Err(error) = self.renew().await {
                tracing::warn!(%error, "cannot renew the leases of the workflows this instance drives");
            }
            if let Err(error) = self.take_over().await {
                tracing::warn!(%error, "cannot look for workflows no instance drives");
            }
        }
    }

    /// Extends the lease of every workflow this instance drives.
    async fn renew(&self) -> Result<(), AppError> {
        let ids: Vec<String> = self.driving.lock().map(|d| d.keys().cloned().collect()).unwrap_or_default();
        let until = self.lease_until();
        let batch = ids.chunks(MAX_PARAMS - 1).fold(Batch::new(self.writer.backend()), |batch, chunk| {
            let renew = workflow_runs::Entity::update_many()
                .col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(until))
                .filter(workflow_runs::Column::Id.is_in(chunk.iter().map(String::as_str)))
                .filter(workflow_runs::Column::LeaseHolder.eq(self.holder.as_str()))
                .into_query();
            batch.write(&renew)
        });
        if !batch.is_empty() {
            self.writer.run(batch).await.map_err(sea_orm::DbErr::from)?;
        }
        Ok(())
    }

    /// Claims the workflows in progress whose lease is free or ran out, and drives each.
    async fn take_over(self: &Arc<Self>) -> Result<(), AppError> {
        let now = Utc::now().trunc_subsecs(6);
        let orphans: Vec<String> = workflow_runs::Entity::find()
            .select_only()
            .column(workflow_runs::Column::Id)
            .filter(driven_by_nobody(now))
            .order_by_asc(workflow_runs::Column::Id)
            .limit(TAKE_AT_ONCE)
            .into_tuple()
            .all(&self.db)
            .await?;
        for id in orphans {
            let Some(run) = driver::claim(self, &id).await? else { continue };
            match driver::caller_of(&self.db, &run).await {
                Ok(caller) => {
                    tracing::info!(workflow_run = %run.id, position = run.position, "resuming a workflow");
                    self.drive(run, caller);
                }
                Err(why) => driver::fail_unresumable(self, &run, &why).await?,
            }
        }
        Ok(())
    }

    /// Gives up the leases of `ids` held by this instance, so that another instance (or the
    /// next one to start) takes them over at once.
    async fn release(&self, ids: &[String]) -> Result<(), AppError> {
        let batch = ids.chunks(MAX_PARAMS - 1).fold(Batch::new(self.writer.backend()), |batch, chunk| {
            let free = workflow_runs::Entity::update_many()
                .col_expr(workflow_runs::Column::LeaseHolder, Expr::value(Option::<String>::None))
                .col_expr(workflow_runs::Column::LeaseExpiresAt, Expr::value(Option::<chrono::DateTime<Utc>>::None))
                .filter(workflow_runs::Column::Id.is_in(chunk.iter().map(String::as_str)))
                .filter(workflow_runs::Column::LeaseHolder.eq(self.holder.as_str()))
                .into_query();
            batch.write(&free)
        });
        if !batch.is_empty() {
            self.writer.run(batch).await.map_err(sea_orm::DbErr::from)?;
        }
        Ok(())
    }

    /// At shutdown: gives up every lease this instance holds. The steps running now are run
    /// again by whoever takes the workflows over.
    pub async fn release_all(&self) {
        let ids: Vec<String> = self.driving.lock().map(|d| d.keys().cloned().collect()).unwrap_or_default();
        if let Err(error) = self.release(&ids).await {
            tracing::warn!(%error, "cannot give up the leases of this instance's workflows");
        }
    }
}

/// Workflow runs claimed in one look for runs nobody drives.
const TAKE_AT_ONCE: u64 = 50;

#[derive(Clone, Debug, Default)]
pub struct RunsFilter {
    pub status: Option<WorkflowStatus>,
    pub from: Option<chrono::DateTime<Utc>>,
    pub to: Option<chrono::DateTime<Utc>>,
}

/// Runs in progress that no live instance drives: their lease is free or has run out.
/// Also the workflows waiting for an approval whose time ran out (their `lease_expires_at` is
/// the approval's deadline).
fn driven_by_nobody(now: chrono::DateTime<Utc>) -> sea_orm::Condition {
    use sea_orm::Condition;
    use workflow_runs::Column;
    let unheld = Column::LeaseHolder.is_null().or(Column::LeaseExpiresAt.is_null()).or(Column::LeaseExpiresAt.lt(now));
    let in_progress = Condition::all().add(Column::Status.is_in([WorkflowStatus::Queued, WorkflowStatus::Running]));
    let timed_out =
        Condition::all().add(Column::Status.eq(WorkflowStatus::Waiting)).add(Column::LeaseExpiresAt.lt(now));
    Condition::any().add(in_progress.add(unheld)).add(timed_out)
}

/// A run's step executions, in the order they started.
async fn executions(db: &DatabaseConnection, run_id: &str) -> Result<Vec<workflow_steps::Model>, AppError> {
    Ok(workflow_steps::Entity::find()
        .filter(workflow_steps::Column::WorkflowRunId.eq(run_id))
        .order_by_asc(workflow_steps::Column::StartedAt)
        .order_by_asc(workflow_steps::Column::Position)
        .order_by_asc(workflow_steps::Column::Iteration)
        .all(db)
        .await?)
}

/// Waits until a driver's task has stopped.
async fn stopped(mut receiver: watch::Receiver<bool>) {
    let _ = receiver.wait_for(|stopped| *stopped).await;
}

fn no_such_run() -> AppError {
    AppError::NotFound("No such workflow run.".into())
}

/// What is wrong with an idempotency key, if anything.
fn key_problem(key: &str) -> Option<Problem> {
    let problem = |message: &str| Some(Problem::new("input.idempotencyKey", message));
    if key.trim().is_empty() {
        problem("must not be empty")
    } else if key.len() > MAX_KEY_BYTES {
        problem(&format!("is {} bytes; the limit is {MAX_KEY_BYTES}", key.len()))
    } else {
        None
    }
}
