//! Group commit for runs: the writes of concurrent runs (a run stored as it starts, a run's
//! end) queue here and share one batch (docs/write-path.md), so a busy server pays for one
//! commit and multi-row statements instead of a transaction per run. Each ended run's row is
//! guarded on still running: a cancel that landed first keeps its row, and the batch is written
//! again without that run. A batch that fails is written again one job at a time, so one bad
//! run cannot fail the others.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use chrono::{SubsecRound, Utc};
use entity::{conversations, error_groups, messages, run_attempts, runs, states::RunStatus, usage_daily};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, QueryFilter, QuerySelect, QueryTrait,
    Set,
    sea_query::{Expr, ExprTrait, OnConflict, UpdateStatement},
};
use tokio::sync::{mpsc, oneshot};

use super::budgets::{self, Settlement};
use crate::{
    db::batch::{Attempts, Batch, BatchError, BatchWriter, Expect, MAX_PARAMS, OnGuard, rows_per_insert},
    error::AppError,
};

/// Most jobs in one transaction.
const MAX_BATCH: usize = 256;

/// How a run ended, as rows to write.
pub struct RunEnd {
    /// The run's columns as they now are.
    pub run: runs::Model,
    pub attempts: Vec<run_attempts::Model>,
    /// The answer, in a conversation.
    pub answer: Option<messages::Model>,
    /// Usage to add, one row per key.
    pub usage: Vec<usage_daily::Model>,
    /// The error group to count, for a failure.
    pub error: Option<error_groups::Model>,
    /// What it spent and gives back on its user's and API key's budget rows.
    pub budgets: Vec<Settlement>,
}

enum Job {
    /// A run as it starts, and the user message that asked (in a conversation).
    Start { rows: Box<(runs::Model, Option<messages::Model>)>, reply: oneshot::Sender<Result<(), String>> },
    /// Answers whether the end was stored (false: the run was cancelled elsewhere meanwhile).
    Finish { end: Box<RunEnd>, reply: oneshot::Sender<Result<bool, String>> },
}

#[derive(Clone)]
pub struct RunWriter {
    jobs: mpsc::Sender<Job>,
}

impl RunWriter {
    pub fn spawn(db: DatabaseConnection, writer: Arc<dyn BatchWriter>) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(db, writer, queue));
        Self { jobs }
    }

    /// Stores a run as it starts (with the user message that asked, in a conversation).
    pub async fn start(&self, run: runs::Model, message: Option<messages::Model>) -> Result<(), AppError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Start { rows: Box::new((run, message)), reply }).await?;
        answer.await.map_err(AppError::internal)?.map_err(AppError::internal)
    }

    /// Stores a run's end; false when the run had been cancelled elsewhere (nothing changed).
    pub async fn finish(&self, end: RunEnd) -> Result<bool, AppError> {
        let (reply, answer) = oneshot::channel();
        self.send(Job::Finish { end: Box::new(end), reply }).await?;
        answer.await.map_err(AppError::internal)?.map_err(AppError::internal)
    }

    async fn send(&self, job: Job) -> Result<(), AppError> {
        self.jobs.send(job).await.map_err(|_| AppError::internal("the run writer has stopped"))
    }
}

async fn write_batches(db: DatabaseConnection, writer: Arc<dyn BatchWriter>, mut queue: mpsc::Receiver<Job>) {
    let writer = writer.as_ref();
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        match write(&db, writer, &jobs).await {
            Ok(stored) => reply(jobs, |i| Ok(stored.contains(&i))),
            Err(error) if jobs.len() == 1 => {
                tracing::error!(%error, "cannot store a run");
                reply(jobs, |_| Err(error.to_string()));
            }
            Err(error) => {
                tracing::warn!(%error, jobs = jobs.len(), "a batch of run writes failed; writing them one by one");
                for job in jobs {
                    let result = write(&db, writer, std::slice::from_ref(&job)).await;
                    reply(vec![job], |_| result.as_ref().map(|stored| !stored.is_empty()).map_err(|e| e.to_string()));
                }
            }
        }
    }
}

/// Answers every job; `outcome(i)` says how job `i` went.
fn reply(jobs: Vec<Job>, outcome: impl Fn(usize) -> Result<bool, String>) {
    for (i, job) in jobs.into_iter().enumerate() {
        match job {
            Job::Start { reply, .. } => drop(reply.send(outcome(i).map(|_| ()))),
            Job::Finish { reply, .. } => drop(reply.send(outcome(i))),
        }
    }
}

/// Writes `jobs` in one batch; answers the indexes of the jobs whose writes took effect. An
/// ending run found no longer running (cancelled or recovered elsewhere) is left out; one
/// whose guard meets such a change after the read is left out and the rest written again.
async fn write(db: &DatabaseConnection, writer: &dyn BatchWriter, jobs: &[Job]) -> Result<HashSet<usize>, AppError> {
    let ending: Vec<&str> = jobs
        .iter()
        .filter_map(|job| match job {
            Job::Finish { end, .. } => Some(end.run.id.as_str()),
            Job::Start { .. } => None,
        })
        .collect();
    let mut ended_elsewhere: HashSet<usize> = HashSet::new();
    let mut attempts = Attempts::default();
    loop {
        let running = still_running(db, &ending).await?;
        let plan = plan(writer.backend(), jobs, |i, id| running.contains(id) && !ended_elsewhere.contains(&i));
        match writer.run(plan.batch).await {
            Ok(_) => return Ok(plan.stored),
            Err(BatchError::Guard { index, code: RUN_ENDED }) => match plan.ends.get(&index) {
                Some(job) => drop(ended_elsewhere.insert(*job)),
                None => {
                    return Err(AppError::internal(format!("guard `{RUN_ENDED}` on step {index}, not a run's end")));
                }
            },
            Err(BatchError::Constraint { source, .. }) => return Err(source.into()),
            Err(err) => attempts.failed(err, &|_, _| OnGuard::Retry).await?,
        }
    }
}

/// The guard of an ended run's row: it was no longer running (a cancel or a recovery landed).
pub const RUN_ENDED: &str = "run_ended";

/// Which of the runs `ids` are still running, read `MAX_PARAMS - 1` ids at a time.
async fn still_running(db: &DatabaseConnection, ids: &[&str]) -> Result<HashSet<String>, AppError> {
    let mut running = HashSet::new();
    for chunk in ids.chunks(MAX_PARAMS - 1) {
        let found: Vec<String> = runs::Entity::find()
            .select_only()
            .column(runs::Column::Id)
            .filter(runs::Column::Id.is_in(chunk.iter().copied()))
            .filter(runs::Column::Status.eq(RunStatus::Running))
            .into_tuple()
            .all(db)
            .await?;
        running.extend(found);
    }
    Ok(running)
}

/// A batch of run writes, and what it stands for.
struct Plan {
    batch: Batch,
    /// The jobs whose writes it holds.
    stored: HashSet<usize>,
    /// The job of each ended run's guarded update, by its step in the batch.
    ends: HashMap<usize, usize>,
}

/// The batch that stores `jobs`: new messages and runs; then, for each end of a run
/// `ending(job, run id)` says is still running, its row guarded on still running; then the
/// rows their ends add, summed per key. Multi-row inserts stay within D1's limit on bound values.
fn plan(backend: DbBackend, jobs: &[Job], ending: impl Fn(usize, &str) -> bool) -> Plan {
    let mut stored = HashSet::new();
    let mut new_runs = Vec::new();
    let mut new_messages = Vec::new();
    let mut ended = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        match job {
            Job::Start { rows, .. } => {
                let (run, message) = rows.as_ref();
                stored.insert(i);
                new_runs.push(runs::ActiveModel::from(run.clone()).reset_all());
                new_messages.extend(message.clone().map(|m| messages::ActiveModel::from(m).reset_all()));
            }
            Job::Finish { end, .. } if ending(i, &end.run.id) => {
                stored.insert(i);
                ended.push((i, end.as_ref()));
            }
            Job::Finish { .. } => {}
        }
    }
    let mut batch = Batch::new(backend);
    // Messages first: a run points at its user message.
    for chunk in new_messages.chunks(rows_per_insert::<messages::Entity>()) {
        batch = batch.write(&messages::Entity::insert_many(chunk.to_vec()).into_query());
    }
    for chunk in new_runs.chunks(rows_per_insert::<runs::Entity>()) {
        batch = batch.write(&runs::Entity::insert_many(chunk.to_vec()).into_query());
    }
    let mut ends = HashMap::new();
    for (i, end) in &ended {
        ends.insert(batch.len(), *i);
        batch = batch.write(&end_of(&end.run)).guard(Expect::One, RUN_ENDED);
    }
    if !ended.is_empty() {
        batch = finish(batch, &ended);
    }
    Plan { batch, stored, ends }
}

/// The ended run's new columns, on its row while it is still running.
fn end_of(run: &runs::Model) -> UpdateStatement {
    let columns = runs::ActiveModel {
        status: Set(run.status),
        agent: Set(run.agent.clone()),
        model: Set(run.model.clone()),
        output: Set(run.output.clone()),
        response_message_id: Set(run.response_message_id.clone()),
        attempts: Set(run.attempts),
        retries: Set(run.retries),
        fallbacks: Set(run.fallbacks),
        tokens_in: Set(run.tokens_in),
        tokens_out: Set(run.tokens_out),
        cost_usd: Set(run.cost_usd),
        latency_ms: Set(run.latency_ms),
        error_code: Set(run.error_code),
        error: Set(run.error.clone()),
        finished_at: Set(run.finished_at),
        ..Default::default()
    };
    runs::Entity::update_many()
        .set(columns)
        .filter(runs::Column::Id.eq(run.id.as_str()))
        .filter(runs::Column::Status.eq(RunStatus::Running))
        .into_query()
}

/// Adds what the ended runs write besides their rows: answers, attempts, rollups, the
/// conversations' activity, usage, budgets and error groups.
fn finish(mut batch: Batch, ended: &[(usize, &RunEnd)]) -> Batch {
    let mut finished = Vec::new();
    let mut attempts = Vec::new();
    let mut answers = Vec::new();
    let mut usage: HashMap<(String, String, String, String, String), usage_daily::Model> = HashMap::new();
    let mut errors: HashMap<String, error_groups::Model> = HashMap::new();
    let mut settlements: Vec<Settlement> = Vec::new();
    for (_, end) in ended {
        finished.push(end.run.clone());
        settlements.extend(end.budgets.iter().cloned());
        attempts.extend(end.attempts.iter().map(|a| run_attempts::ActiveModel::from(a.clone()).reset_all()));
        answers.extend(end.answer.clone().map(|m| messages::ActiveModel::from(m).reset_all()));
        for row in &end.usage {
            let key =
                (row.day.clone(), row.user_id.clone(), row.team_id.clone(), row.api_key_id.clone(), row.model.clone());
            let sum = usage.entry(key).or_insert_with(|| usage_daily::Model {
                runs: 0,
                tokens_in: 0,
                tokens_out: 0,
                cost_usd: 0.0,
                ..row.clone()
            });
            sum.runs += row.runs;
            sum.tokens_in += row.tokens_in;
            sum.tokens_out += row.tokens_out;
            sum.cost_usd += row.cost_usd;
        }
        if let Some(group) = &end.error {
            errors
                .entry(group.fingerprint.clone())
                .and_modify(|g| {
                    g.count += 1;
                    g.last_seen = group.last_seen;
                    g.last_run_id = group.last_run_id.clone();
                })
                .or_insert_with(|| group.clone());
        }
    }
    for chunk in answers.chunks(rows_per_insert::<messages::Entity>()) {
        batch = batch.write(&messages::Entity::insert_many(chunk.to_vec()).into_query());
    }
    for chunk in attempts.chunks(rows_per_insert::<run_attempts::Entity>()) {
        batch = batch.write(&run_attempts::Entity::insert_many(chunk.to_vec()).into_query());
    }
    batch = super::rollups::add(batch, &finished);
    let mut active: Vec<&String> = finished.iter().filter_map(|run| run.conversation_id.as_ref()).collect();
    active.sort_unstable();
    active.dedup();
    let now = Utc::now().trunc_subsecs(6);
    for chunk in active.chunks(MAX_PARAMS - 1) {
        let touch = conversations::Entity::update_many()
            .col_expr(conversations::Column::LastActiveAt, Expr::value(now))
            .filter(conversations::Column::Id.is_in(chunk.iter().copied()))
            .into_query();
        batch = batch.write(&touch);
    }
    batch = super::usage::add(batch, usage.into_values().collect());
    batch = budgets::settle(batch, settlements);
    for group in errors.into_values() {
        let bump = OnConflict::column(error_groups::Column::Fingerprint)
            .value(
                error_groups::Column::Count,
                Expr::col((error_groups::Entity, error_groups::Column::Count)).add(group.count),
            )
            .update_columns([
                error_groups::Column::LastSeen,
                error_groups::Column::LastRunId,
                error_groups::Column::ResolvedAt,
            ])
            .to_owned();
        let row = error_groups::ActiveModel::from(group).reset_all();
        batch = batch.write(&error_groups::Entity::insert(row).on_conflict(bump).into_query());
    }
    batch
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use entity::states::{AttemptOutcome, BudgetHolder, ErrorCode};

    use super::*;
    use crate::service::budgets::Amount;

    fn run(i: usize) -> runs::Model {
        let now = Utc::now();
        runs::Model {
            id: format!("run_{i}"),
            team_id: format!("team_{i}"),
            team_version: 1,
            conversation_id: Some(format!("conv_{i}")),
            user_id: Some(format!("user_{i}")),
            api_key_id: Some(format!("key_{i}")),
            status: RunStatus::Failed,
            input: "question".into(),
            variables: None,
            message_id: Some(format!("msg_q{i}")),
            routed_agent: Some("triage".into()),
            rule: None,
            rule_reason: None,
            agent: Some("triage".into()),
            model: Some("local/down".into()),
            output: None,
            response_message_id: None,
            attempts: 3,
            retries: 2,
            fallbacks: 0,
            tokens_in: 3,
            tokens_out: 0,
            cost_usd: 0.0,
            latency_ms: Some(i as i64),
            error_code: Some(ErrorCode::ServerError),
            error: Some("down".into()),
            created_at: now,
            started_at: Some(now),
            finished_at: Some(now),
            estimated_cost_usd: None,
            estimated_max_cost_usd: None,
            reserved_tokens: Some(10),
            reserved_nano_usd: Some(0),
        }
    }

    fn message(i: usize, id: &str) -> messages::Model {
        messages::Model {
            id: id.into(),
            conversation_id: format!("conv_{i}"),
            parent_id: None,
            role: crate::orchestrator::providers::Role::User,
            agent: None,
            content: "question".into(),
            run_id: Some(format!("run_{i}")),
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            created_at: Utc::now(),
        }
    }

    fn end(i: usize) -> RunEnd {
        let run = run(i);
        let attempts = (1..=3)
            .map(|seq| run_attempts::Model {
                run_id: run.id.clone(),
                seq,
                agent: "triage".into(),
                model: "local/down".into(),
                attempt: seq,
                outcome: AttemptOutcome::ServerError,
                latency_ms: 1,
                tokens_in: 1,
                tokens_out: 0,
                cost_usd: 0.0,
                backoff_ms: Some(20),
                error: Some("down".into()),
                started_at: Utc::now(),
            })
            .collect();
        let usage = usage_daily::Model {
            day: "2026-03-01".into(),
            user_id: format!("user_{i}"),
            team_id: run.team_id.clone(),
            api_key_id: format!("key_{i}"),
            model: "local/down".into(),
            requests: 0,
            runs: 1,
            tokens_in: 3,
            tokens_out: 0,
            cost_usd: 0.0,
        };
        let error = error_groups::Model {
            fingerprint: format!("fp_{i}"),
            team_id: run.team_id.clone(),
            agent: "triage".into(),
            code: ErrorCode::ServerError,
            message: "down".into(),
            count: 1,
            first_seen: Utc::now(),
            last_seen: Utc::now(),
            last_run_id: run.id.clone(),
            resolved_at: None,
        };
        let budgets = [BudgetHolder::User, BudgetHolder::ApiKey]
            .into_iter()
            .map(|holder| Settlement {
                day: "2026-03-01".into(),
                holder,
                id: format!("holder_{i}"),
                spent: Amount { tokens: 3, nano_usd: 0 },
                released: Amount { tokens: 10, nano_usd: 0 },
            })
            .collect();
        RunEnd {
            answer: Some(message(i, &format!("msg_a{i}"))),
            run,
            attempts,
            usage: vec![usage],
            error: Some(error),
            budgets,
        }
    }

    /// A full group of jobs: runs starting with their messages, runs ending with everything an
    /// end writes, all of them distinct so that nothing is summed away.
    fn jobs() -> Vec<Job> {
        (0..MAX_BATCH)
            .map(|i| {
                if i % 2 == 0 {
                    let (reply, _) = oneshot::channel();
                    Job::Start { rows: Box::new((run(i), Some(message(i, &format!("msg_q{i}"))))), reply }
                } else {
                    let (reply, _) = oneshot::channel();
                    Job::Finish { end: Box::new(end(i)), reply }
                }
            })
            .collect()
    }

    #[test]
    fn no_statement_of_a_full_batch_binds_more_values_than_d1_allows() {
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let plan = plan(backend, &jobs(), |_, _| true);
            assert_eq!(plan.stored.len(), MAX_BATCH);
            assert_eq!(plan.ends.len(), MAX_BATCH / 2, "one guarded row per ended run");
            for statement in plan.batch.into_sql() {
                let values = statement.statement.values.map_or(0, |values| values.0.len());
                assert!(values <= MAX_PARAMS, "{values} values: {}", statement.statement.sql);
            }
        }
    }

    #[test]
    fn an_end_found_ended_elsewhere_writes_nothing_of_its_own() {
        let jobs = jobs();
        let all = plan(DbBackend::Sqlite, &jobs, |_, _| true);
        let without = plan(DbBackend::Sqlite, &jobs, |_, id| id != "run_1");
        assert!(!without.stored.contains(&1) && without.stored.len() == MAX_BATCH - 1);
        let sql = |plan: Plan| plan.batch.into_sql().into_iter().map(|s| s.statement.to_string()).collect::<Vec<_>>();
        let (all, without) = (sql(all), sql(without));
        assert!(all.iter().any(|s| s.contains("'run_1'")));
        assert!(!without.iter().any(|s| s.contains("'run_1'") || s.contains("'msg_a1'")), "run_1's end is left out");
    }
}
