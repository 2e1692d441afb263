//! Group commit for runs: the writes of concurrent runs (a run stored as it starts, a run's
//! end) queue here and share one transaction, so a busy server pays for one commit and a few
//! multi-row statements per batch instead of several round trips per run. A batch that fails
//! is written again one job at a time, so one bad run cannot fail the others.

use std::collections::{HashMap, HashSet};

use chrono::{SubsecRound, Utc};
use entity::{conversations, error_groups, messages, run_attempts, runs, states::RunStatus, usage_daily};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, OnConflict},
};
use tokio::sync::{mpsc, oneshot};

use super::budgets::{self, Settlement};
use crate::{db, error::AppError};

use sea_orm::sea_query::ExprTrait;

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
    pub fn spawn(db: DatabaseConnection) -> Self {
        let (jobs, queue) = mpsc::channel(4 * MAX_BATCH);
        tokio::spawn(write_batches(db, queue));
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

async fn write_batches(db: DatabaseConnection, mut queue: mpsc::Receiver<Job>) {
    while let Some(first) = queue.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        match write(&db, &jobs).await {
            Ok(stored) => reply(jobs, |i| Ok(stored.contains(&i))),
            Err(error) if jobs.len() == 1 => {
                tracing::error!(%error, "cannot store a run");
                reply(jobs, |_| Err(error.to_string()));
            }
            Err(error) => {
                tracing::warn!(%error, jobs = jobs.len(), "a batch of run writes failed; writing them one by one");
                for job in jobs {
                    let result = write(&db, std::slice::from_ref(&job)).await;
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

/// Writes `jobs` in one transaction; answers the indexes of the jobs whose writes took effect.
async fn write(db: &DatabaseConnection, jobs: &[Job]) -> Result<HashSet<usize>, AppError> {
    let txn = db::begin_write(db).await?;
    let mut stored = HashSet::new();
    let mut new_runs = Vec::new();
    let mut new_messages = Vec::new();
    let mut ends = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        match job {
            Job::Start { rows, .. } => {
                let (run, message) = rows.as_ref();
                stored.insert(i);
                new_runs.push(runs::ActiveModel::from(run.clone()).reset_all());
                new_messages.extend(message.clone().map(|m| messages::ActiveModel::from(m).reset_all()));
            }
            Job::Finish { end, .. } => ends.push((i, end.as_ref())),
        }
    }
    // Messages first: a run points at its user message.
    if !new_messages.is_empty() {
        messages::Entity::insert_many(new_messages).exec_without_returning(&txn).await?;
    }
    if !new_runs.is_empty() {
        runs::Entity::insert_many(new_runs).exec_without_returning(&txn).await?;
    }
    if !ends.is_empty() {
        finish(&txn, &ends, &mut stored).await?;
    }
    txn.commit().await?;
    Ok(stored)
}

async fn finish(
    txn: &DatabaseTransaction,
    ends: &[(usize, &RunEnd)],
    stored: &mut HashSet<usize>,
) -> Result<(), AppError> {
    // A run cancelled from another instance keeps its cancelled row.
    let ids: Vec<String> = ends.iter().map(|(_, end)| end.run.id.clone()).collect();
    let running: HashSet<String> = runs::Entity::find()
        .select_only()
        .column(runs::Column::Id)
        .filter(runs::Column::Id.is_in(ids))
        .filter(runs::Column::Status.eq(RunStatus::Running))
        .lock_exclusive()
        .into_tuple()
        .all(txn)
        .await?
        .into_iter()
        .collect();
    let mut ended = Vec::new();
    let mut finished = Vec::new();
    let mut attempts = Vec::new();
    let mut answers = Vec::new();
    let mut usage: HashMap<(String, String, String, String, String), usage_daily::Model> = HashMap::new();
    let mut errors: HashMap<String, error_groups::Model> = HashMap::new();
    let mut settlements = Vec::new();
    for (i, end) in ends {
        if !running.contains(&end.run.id) {
            continue;
        }
        stored.insert(*i);
        ended.push(runs::ActiveModel::from(end.run.clone()).reset_all());
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
    if !ended.is_empty() {
        // Every run's new columns in one statement: the rows exist, so each insert becomes an update.
        let columns = <runs::Column as sea_orm::Iterable>::iter().filter(|c| !matches!(c, runs::Column::Id));
        let replace = OnConflict::column(runs::Column::Id).update_columns(columns).to_owned();
        runs::Entity::insert_many(ended).on_conflict(replace).exec_without_returning(txn).await?;
    }
    if !answers.is_empty() {
        messages::Entity::insert_many(answers).exec_without_returning(txn).await?;
    }
    if !attempts.is_empty() {
        run_attempts::Entity::insert_many(attempts).exec_without_returning(txn).await?;
    }
    super::rollups::add(txn, &finished).await?;
    let active: HashSet<&String> = finished.iter().filter_map(|run| run.conversation_id.as_ref()).collect();
    if !active.is_empty() {
        conversations::Entity::update_many()
            .col_expr(conversations::Column::LastActiveAt, Expr::value(Utc::now().trunc_subsecs(6)))
            .filter(conversations::Column::Id.is_in(active))
            .exec(txn)
            .await?;
    }
    for row in usage.into_values() {
        super::usage::add(txn, row).await?;
    }
    budgets::settle(txn, settlements).await?;
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
        error_groups::Entity::insert(row).on_conflict(bump).exec_without_returning(txn).await?;
    }
    Ok(())
}
