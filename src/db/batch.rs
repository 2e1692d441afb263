//! The batch-shaped write path (docs/write-path.md): a mutation reads, decides in Rust, then
//! hands one [`Batch`] to a [`BatchWriter`]. The batch's statements run in order as one
//! transaction; a statement may carry a [`Guard`] (how many rows it must change) and the batch
//! may assert a condition on what the earlier statements left. A guard that does not hold
//! aborts the whole batch, so nothing of it is written, and the caller reads and decides again
//! or answers the error the guard stands for.
//!
//! [`SqlxWriter`] runs a batch on SQLite (`BEGIN IMMEDIATE`) and PostgreSQL inside a transaction
//! and checks each guard against the statement's row count. Cloudflare D1, which has no
//! interactive transactions, gets the same batch through its bridge with the guards written as
//! SQL (docs/write-path.md, "The mechanism per database").

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use rand::Rng;
use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    FromQueryResult, Iterable, QueryResult, QueryTrait, Statement, StatementBuilder, sea_query::SelectStatement,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::AppError;

/// How many rows a guarded statement must change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    One,
    AtLeastOne,
    Exactly(u64),
}

impl Expect {
    fn holds(self, changed: u64) -> bool {
        match self {
            Self::One => changed == 1,
            Self::AtLeastOne => changed >= 1,
            Self::Exactly(n) => changed == n,
        }
    }
}

/// What a guarded statement must change, and the fixed code that names the guard (for
/// example `team_version`); the sentence a person reads is the service's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Guard {
    pub expect: Expect,
    pub code: &'static str,
}

#[derive(Clone, Debug)]
enum Step {
    /// An INSERT, UPDATE or DELETE; with `returns`, its `RETURNING` rows are answered.
    Write { statement: Statement, returns: bool, guard: Option<Guard> },
    /// A query answering at least one row while the condition holds.
    Assert { condition: Statement, code: &'static str },
}

/// Statements that run in order as one transaction, built for one database.
#[derive(Clone, Debug)]
pub struct Batch {
    backend: DbBackend,
    steps: Vec<Step>,
}

impl Batch {
    pub fn new(backend: DbBackend) -> Self {
        Self { backend, steps: Vec::new() }
    }

    /// Adds a write; its result's `rows_affected` says how many rows it changed.
    pub fn write(mut self, statement: &impl StatementBuilder) -> Self {
        let statement = self.backend.build(statement);
        self.steps.push(Step::Write { statement, returns: false, guard: None });
        self
    }

    /// Adds a write with a `RETURNING` clause; its result carries the rows.
    pub fn write_returning(mut self, statement: &impl StatementBuilder) -> Self {
        let statement = self.backend.build(statement);
        self.steps.push(Step::Write { statement, returns: true, guard: None });
        self
    }

    /// Adds a query whose rows are answered, run on what the steps before it left.
    pub fn read(mut self, query: &SelectStatement) -> Self {
        let statement = self.backend.build(query);
        self.steps.push(Step::Write { statement, returns: true, guard: None });
        self
    }

    /// Guards the write added last: the batch aborts unless it changed rows as `expect` says.
    ///
    /// # Panics
    /// When the last step is not a write (a mistake in the code that builds the batch).
    pub fn guard(mut self, expect: Expect, code: &'static str) -> Self {
        match self.steps.last_mut() {
            Some(Step::Write { guard, .. }) => *guard = Some(Guard { expect, code }),
            _ => panic!("a guard follows the write it guards"),
        }
        self
    }

    /// Adds INSERTs of `rows` (each setting the same columns), as many rows to a statement as
    /// D1's [`MAX_PARAMS`] bound parameters allow (docs/write-path.md, "D1's limits: chunking").
    pub fn insert_chunked<A: ActiveModelTrait>(mut self, rows: Vec<A>) -> Self {
        let Some(first) = rows.first() else { return self };
        let columns = <A::Entity as EntityTrait>::Column::iter().filter(|column| first.get(*column).is_set()).count();
        let per_statement = (MAX_PARAMS / columns.max(1)).max(1);
        let mut rows = rows.into_iter().peekable();
        while rows.peek().is_some() {
            let chunk: Vec<A> = rows.by_ref().take(per_statement).collect();
            self = self.write(&A::Entity::insert_many(chunk).into_query());
        }
        self
    }

    /// Adds every step of `other` after this batch's own.
    pub fn then(mut self, other: Batch) -> Self {
        self.steps.extend(other.steps);
        self
    }

    /// Aborts the batch unless `condition` answers a row, run on what the steps before it left.
    pub fn assert(mut self, condition: &SelectStatement, code: &'static str) -> Self {
        let condition = self.backend.build(condition);
        self.steps.push(Step::Assert { condition, code });
        self
    }

    pub fn backend(&self) -> DbBackend {
        self.backend
    }

    /// The codes of the batch's guards and assertions, to read a guard back from an error.
    pub fn codes(&self) -> Vec<&'static str> {
        self.steps
            .iter()
            .filter_map(|step| match step {
                Step::Write { guard, .. } => guard.map(|guard| guard.code),
                Step::Assert { code, .. } => Some(*code),
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.steps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }
}

/// Most values D1 binds in one statement (docs/write-path.md, "D1's limits: chunking").
pub const MAX_PARAMS: usize = 100;

/// Rows of `E` (every column set) that one multi-row `INSERT` carries within [`MAX_PARAMS`].
pub fn rows_per_insert<E: EntityTrait>() -> usize {
    (MAX_PARAMS / E::Column::iter().count()).max(1)
}

/// One statement of a batch as SQLite and D1 run it, guards written as SQL
/// (docs/write-path.md, "The mechanism per database").
#[derive(Debug)]
pub struct SqlStatement {
    pub statement: Statement,
    /// The batch step this statement is; `None` for a guard's own statement.
    pub step: Option<usize>,
    /// Whether its rows are answered (`RETURNING`).
    pub returns: bool,
}

impl Batch {
    /// The batch's statements with each guard written as SQL: right after a guarded write,
    /// `INSERT INTO write_guard (reason) SELECT ? WHERE changes() <> 1` (the table's trigger
    /// raises the reason, which aborts the whole batch); for an assertion,
    /// `INSERT INTO write_guard (reason) SELECT ? WHERE NOT EXISTS (…)`. The reason is
    /// `write_guard:<step>:<code>`, read back by [`guard_in`].
    pub fn into_sql(self) -> Vec<SqlStatement> {
        let backend = self.backend;
        let mut out = Vec::with_capacity(self.steps.len() * 2);
        for (index, step) in self.steps.into_iter().enumerate() {
            match step {
                Step::Write { statement, returns, guard } => {
                    out.push(SqlStatement { statement, step: Some(index), returns });
                    if let Some(Guard { expect, code }) = guard {
                        let unless = match expect {
                            Expect::One => "changes() <> 1".to_string(),
                            Expect::AtLeastOne => "changes() = 0".to_string(),
                            Expect::Exactly(n) => format!("changes() <> {n}"),
                        };
                        let sql = format!("INSERT INTO write_guard (reason) SELECT ? WHERE {unless}");
                        let reason = format!("{GUARD_PREFIX}{index}:{code}");
                        let guard = Statement::from_sql_and_values(backend, sql, [reason.into()]);
                        out.push(SqlStatement { statement: guard, step: None, returns: false });
                    }
                }
                Step::Assert { condition, code } => {
                    let sql = format!("INSERT INTO write_guard (reason) SELECT ? WHERE NOT EXISTS ({})", condition.sql);
                    let reason = format!("{GUARD_PREFIX}{index}:{code}");
                    let values = std::iter::once(reason.into()).chain(condition.values.into_iter().flat_map(|v| v.0));
                    let statement = Statement::from_sql_and_values(backend, sql, values);
                    out.push(SqlStatement { statement, step: Some(index), returns: false });
                }
            }
        }
        out
    }
}

/// What a guard raises, before `<step>:<code>`.
const GUARD_PREFIX: &str = "write_guard:";

/// The guard whose reason an error's text carries (`write_guard:<step>:<code>`), mapped back to
/// the code the batch gave it, if any.
pub fn guard_in(text: &str, codes: &[&'static str]) -> Option<(usize, &'static str)> {
    let rest = &text[text.find(GUARD_PREFIX)? + GUARD_PREFIX.len()..];
    let (index, rest) = rest.split_once(':')?;
    let code: String = rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '_').collect();
    let code = codes.iter().find(|known| **known == code)?;
    Some((index.parse().ok()?, code))
}

/// What one step of a committed batch did.
#[derive(Debug, Default)]
pub struct StepResult {
    /// Rows the write changed (none for an assertion).
    pub rows_affected: u64,
    /// The `RETURNING` rows of a write added with [`Batch::write_returning`].
    pub rows: Vec<QueryResult>,
}

impl StepResult {
    /// The one row its `RETURNING` answered, as `M`.
    pub fn one<M: FromQueryResult>(&self) -> Result<M, AppError> {
        let row = self.rows.first().ok_or_else(|| AppError::internal("a write answered no row"))?;
        Ok(M::from_query_result(row, "")?)
    }
}

/// Why a batch wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// Step `index` changed a number of rows its guard did not expect, or its assertion found no
    /// row: what the decision was made on has changed.
    #[error("guard `{code}` of step {index} did not hold")]
    Guard { index: usize, code: &'static str },
    /// A unique or foreign key constraint refused a row.
    #[error("a constraint refused step {index}: {source}")]
    Constraint { index: usize, source: DbErr },
    /// The database was busy, a transaction could not be serialised, or the connection failed:
    /// the same batch may succeed if tried again.
    #[error("the database could not take the batch now: {0}")]
    Transient(DbErr),
    #[error(transparent)]
    Other(DbErr),
}

impl BatchError {
    fn from_db(index: Option<usize>, err: DbErr) -> Self {
        if let (Some(index), Some(_)) = (index, err.sql_err()) {
            return Self::Constraint { index, source: err };
        }
        let text = err.to_string();
        let transient = matches!(err, DbErr::ConnectionAcquire(_) | DbErr::Conn(_))
            || ["database is locked", "could not serialize access", "deadlock detected"]
                .iter()
                .any(|sign| text.contains(sign));
        if transient { Self::Transient(err) } else { Self::Other(err) }
    }
}

/// For callers outside a mutation (a lease, start-up work), where any failure is an error.
impl From<BatchError> for DbErr {
    fn from(err: BatchError) -> Self {
        match err {
            BatchError::Transient(err) | BatchError::Other(err) | BatchError::Constraint { source: err, .. } => err,
            guard @ BatchError::Guard { .. } => DbErr::Custom(guard.to_string()),
        }
    }
}

/// Runs batches: one per database kind, so that no service has a copy per database.
#[async_trait]
pub trait BatchWriter: Send + Sync {
    /// The database whose SQL the batches must be built for.
    fn backend(&self) -> DbBackend;

    /// Runs every step of `batch` in one transaction, or none of them; one result per step.
    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError>;

    /// Opens the transaction of a batch not built yet, where that keeps no one else waiting:
    /// the audit chain opens it before its turn, so that opening is not part of the section
    /// mutations pass one at a time (docs/write-path.md, "The audit chain"). `None` where it
    /// cannot be done ahead.
    async fn open(&self) -> Result<Option<Box<dyn OpenBatch>>, BatchError> {
        Ok(None)
    }
}

/// A transaction opened by [`BatchWriter::open`], waiting for its batch.
#[async_trait]
pub trait OpenBatch: Send {
    /// Runs every step of `batch` in the transaction, as [`BatchWriter::run`] does.
    async fn run(self: Box<Self>, batch: Batch) -> Result<Vec<StepResult>, BatchError>;
}

/// SQLite and PostgreSQL through sqlx: the batch runs inside a transaction (`BEGIN IMMEDIATE`
/// on SQLite, so writers queue at the start rather than fail at the commit) and a guard that
/// does not hold rolls it back. On SQLite the guards are SQL, exactly as D1 runs them; on
/// PostgreSQL each is checked against its statement's row count.
///
/// On PostgreSQL a transaction can be opened ahead ([`BatchWriter::open`]): `BEGIN` takes no
/// lock there. At most half the pool's connections wait that way, so that the reads of the
/// mutation whose turn it is always find one. SQLite's `BEGIN IMMEDIATE` is the database's one
/// write lock, so it is not taken ahead.
pub struct SqlxWriter {
    db: DatabaseConnection,
    ahead: Option<Arc<Semaphore>>,
}

impl SqlxWriter {
    pub fn new(db: DatabaseConnection) -> Self {
        let ahead = match db.get_database_backend() {
            DbBackend::Postgres => Some(db.get_postgres_connection_pool().options().get_max_connections() / 2),
            _ => None,
        };
        let ahead = ahead.filter(|permits| *permits > 0).map(|permits| Arc::new(Semaphore::new(permits as usize)));
        Self { db, ahead }
    }
}

#[async_trait]
impl BatchWriter for SqlxWriter {
    fn backend(&self) -> DbBackend {
        self.db.get_database_backend()
    }

    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        let txn = super::begin_write(&self.db).await.map_err(|err| BatchError::from_db(None, err))?;
        run_in(txn, batch).await
    }

    async fn open(&self) -> Result<Option<Box<dyn OpenBatch>>, BatchError> {
        let Some(ahead) = &self.ahead else { return Ok(None) };
        let permit = ahead.clone().acquire_owned().await.expect("the semaphore is never closed");
        let txn = super::begin_write(&self.db).await.map_err(|err| BatchError::from_db(None, err))?;
        Ok(Some(Box::new(Opened { txn, _permit: permit })))
    }
}

/// A PostgreSQL transaction opened ahead, and its place among those.
struct Opened {
    txn: DatabaseTransaction,
    _permit: OwnedSemaphorePermit,
}

#[async_trait]
impl OpenBatch for Opened {
    async fn run(self: Box<Self>, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        run_in(self.txn, batch).await
    }
}

/// Runs `batch` in `txn`, then commits, or rolls back on the first step that failed.
async fn run_in(txn: DatabaseTransaction, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
    let results = match batch.backend {
        DbBackend::Sqlite => run_sql(&txn, batch).await,
        _ => run_checked(&txn, batch).await,
    };
    match results {
        Ok(results) => {
            txn.commit().await.map_err(|err| BatchError::from_db(None, err))?;
            Ok(results)
        }
        Err(err) => {
            txn.rollback().await.map_err(|err| BatchError::from_db(None, err))?;
            Err(err)
        }
    }
}

/// SQLite: the statements D1 runs, guards as SQL ([`Batch::into_sql`]), so that the suite on
/// SQLite runs what D1 runs.
async fn run_sql(txn: &DatabaseTransaction, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
    let codes = batch.codes();
    let mut results = Vec::with_capacity(batch.len());
    for SqlStatement { statement, step, returns } in batch.into_sql() {
        let failed = |err: DbErr| match guard_in(&err.to_string(), &codes) {
            Some((index, code)) => BatchError::Guard { index, code },
            None => BatchError::from_db(step, err),
        };
        let result = if returns {
            let rows = txn.query_all_raw(statement).await.map_err(failed)?;
            StepResult { rows_affected: rows.len() as u64, rows }
        } else {
            let done = txn.execute_raw(statement).await.map_err(failed)?;
            StepResult { rows_affected: done.rows_affected(), rows: Vec::new() }
        };
        if step.is_some() {
            results.push(result);
        }
    }
    Ok(results)
}

/// PostgreSQL (no `changes()`): each guard checked on its statement's row count.
async fn run_checked(txn: &DatabaseTransaction, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
    let mut results = Vec::with_capacity(batch.steps.len());
    for (index, step) in batch.steps.into_iter().enumerate() {
        let failed = |err| BatchError::from_db(Some(index), err);
        let (result, guard) = match step {
            Step::Write { statement, returns: false, guard } => {
                let done = txn.execute_raw(statement).await.map_err(failed)?;
                (StepResult { rows_affected: done.rows_affected(), rows: Vec::new() }, guard)
            }
            Step::Write { statement, returns: true, guard } => {
                let rows = txn.query_all_raw(statement).await.map_err(failed)?;
                (StepResult { rows_affected: rows.len() as u64, rows }, guard)
            }
            Step::Assert { condition, code } => {
                let rows = txn.query_all_raw(condition).await.map_err(failed)?;
                if rows.is_empty() {
                    return Err(BatchError::Guard { index, code });
                }
                (StepResult::default(), None)
            }
        };
        if let Some(guard) = guard.filter(|guard| !guard.expect.holds(result.rows_affected)) {
            return Err(BatchError::Guard { index, code: guard.code });
        }
        results.push(result);
    }
    Ok(results)
}

/// How many times a mutation reads, decides and commits before it answers CONFLICT.
pub const ATTEMPTS: u32 = 3;

/// What a mutation does when one of its guards did not hold.
pub enum OnGuard {
    /// Read and decide again (what it was decided on changed; the next attempt may succeed).
    Retry,
    /// Answer this error now (the guard stands for it: a stale `expectedVersion`, a duplicate).
    Answer(AppError),
}

/// A mutation on the write path: `plan` reads and decides, answering the batch to commit (or
/// the error the decision found); `on_guard` says what a guard that did not hold means, by its
/// step and code. Up to [`ATTEMPTS`] attempts, a short random pause between them; a busy
/// database or a lost connection also tries again. Answers the committed batch's results.
pub async fn write<F, Fut>(
    writer: &dyn BatchWriter,
    mut plan: F,
    on_guard: impl Fn(usize, &'static str) -> OnGuard,
) -> Result<Vec<StepResult>, AppError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Batch, AppError>>,
{
    let mut attempts = Attempts::default();
    loop {
        match writer.run(plan().await?).await {
            Ok(results) => return Ok(results),
            Err(err) => attempts.failed(err, &on_guard).await?,
        }
    }
}

/// Counts a mutation's attempts and decides, after a batch that wrote nothing, whether to try
/// again: the loop of [`write`], for writers that add steps of their own around the plan's
/// (the audit chain).
#[derive(Default)]
pub struct Attempts {
    made: u32,
    /// No pause between attempts: the caller holds a lock that keeps its competitors out.
    no_pauses: bool,
}

impl Attempts {
    /// Attempts with no pause between them, for a writer that decides again under a lock.
    pub fn without_pauses() -> Self {
        Self { made: 0, no_pauses: true }
    }

    /// `Ok` to read, decide and commit again (after a short random pause); otherwise the error
    /// to answer.
    pub async fn failed(
        &mut self,
        err: BatchError,
        on_guard: &impl Fn(usize, &'static str) -> OnGuard,
    ) -> Result<(), AppError> {
        self.made += 1;
        let last = self.made >= ATTEMPTS;
        match err {
            BatchError::Guard { index, code } => match on_guard(index, code) {
                OnGuard::Answer(err) => return Err(err),
                OnGuard::Retry if last => {
                    tracing::info!(code, attempts = ATTEMPTS, "a write guard kept failing");
                    return Err(AppError::Conflict("It changed while you were saving it; try again.".into()));
                }
                OnGuard::Retry => {}
            },
            BatchError::Transient(err) if last => return Err(err.into()),
            BatchError::Transient(err) => tracing::debug!(error = %err, "retrying a write"),
            BatchError::Constraint { .. } => {
                return Err(AppError::Conflict("It conflicts with a record that already exists.".into()));
            }
            BatchError::Other(err) => return Err(err.into()),
        }
        if !self.no_pauses {
            // Full jitter: a random pause up to 20 ms × the attempt, so that writers who met the
            // same change do not meet again.
            let pause = rand::thread_rng().gen_range(0..=20 * u64::from(self.made));
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbErr, RuntimeErr};

    use super::{BatchError, Expect};

    #[test]
    fn a_busy_database_or_a_lost_connection_is_worth_another_attempt() {
        let busy = DbErr::Exec(RuntimeErr::Internal("error returned from database: database is locked".into()));
        assert!(matches!(BatchError::from_db(Some(0), busy), BatchError::Transient(_)));
        let serialisation =
            DbErr::Query(RuntimeErr::Internal("could not serialize access due to concurrent update".into()));
        assert!(matches!(BatchError::from_db(Some(2), serialisation), BatchError::Transient(_)));
        let gone = DbErr::Conn(RuntimeErr::Internal("connection reset".into()));
        assert!(matches!(BatchError::from_db(None, gone), BatchError::Transient(_)));
        let syntax = DbErr::Exec(RuntimeErr::Internal("near \"UPDTE\": syntax error".into()));
        assert!(matches!(BatchError::from_db(Some(1), syntax), BatchError::Other(_)));
    }

    #[test]
    fn chunked_inserts_bind_at_most_a_hundred_parameters_a_statement() {
        use chrono::Utc;
        use entity::{messages, states::MessageRole};
        use sea_orm::{ActiveModelTrait, DbBackend};

        let row = |n: usize| {
            messages::ActiveModel::from(messages::Model {
                id: format!("msg_{n}"),
                conversation_id: "conv_1".into(),
                parent_id: None,
                role: MessageRole::User,
                agent: None,
                content: format!("message {n}"),
                run_id: None,
                tokens_in: 0,
                tokens_out: 0,
                cost_usd: 0.0,
                created_at: Utc::now(),
            })
            .reset_all()
        };
        for backend in [DbBackend::Sqlite, DbBackend::Postgres] {
            let batch = super::Batch::new(backend).insert_chunked((0..25).map(row).collect());
            let bound: Vec<usize> =
                batch.into_sql().iter().map(|s| s.statement.values.as_ref().map_or(0, |v| v.0.len())).collect();
            assert_eq!(bound, [99, 99, 77], "11 columns: 9 rows a statement");
        }
        assert!(super::Batch::new(DbBackend::Sqlite).insert_chunked(Vec::<messages::ActiveModel>::new()).is_empty());
    }

    #[test]
    fn each_expectation_holds_for_its_counts_only() {
        assert!(Expect::One.holds(1) && !Expect::One.holds(0) && !Expect::One.holds(2));
        assert!(Expect::AtLeastOne.holds(1) && Expect::AtLeastOne.holds(5) && !Expect::AtLeastOne.holds(0));
        assert!(Expect::Exactly(3).holds(3) && !Expect::Exactly(3).holds(2));
        assert!(Expect::Exactly(0).holds(0));
    }
}
