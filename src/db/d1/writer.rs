//! The write path on D1 (docs/write-path.md): a [`Batch`] becomes one `POST /batch`, its guards
//! written as SQL ([`Batch::into_sql`]), so D1 runs it as one transaction and a guard that does
//! not hold aborts all of it with `write_guard:<step>:<code>` in the error.
//!
//! A batch is sent with an idempotency key, which the bridge records in the same D1 transaction
//! as the batch's statements. When no answer comes back (the request may have been applied), the
//! Worker's host answers a bare 502–504 in its place, or D1 answers UNAVAILABLE (its connection
//! lost or its object reset), the same request goes again with the same key: the bridge applies
//! it at most once, and answers a key it has seen with the first outcome. A batch D1 refuses as
//! OVERLOADED is not sent again: D1 did not run it and asks for less traffic, so the mutation
//! answers that the database cannot be reached right now, and its caller tries again later.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use async_trait::async_trait;
use sea_orm::{DbBackend, DbErr, QueryResult, RuntimeErr};
use serde_json::Value as Json;

use super::{
    client::{Client, Error, NamedRow},
    values,
};
use crate::db::batch::{Batch, BatchError, BatchWriter, SqlStatement, StepResult, guard_in};

/// How many times a batch without an outcome is sent again with its key.
const RESENDS: u32 = 4;
/// The pause before the first resend, twice as long before each next one (3 s in all): a host
/// that answered 503 may need a moment.
const RESEND_PAUSE: std::time::Duration = std::time::Duration::from_millis(200);

pub struct D1Writer {
    client: Client,
    /// Counts the statements of each batch sent (the server's statement metric).
    counter: Option<Arc<AtomicU64>>,
}

impl D1Writer {
    pub fn new(client: Client, counter: Option<Arc<AtomicU64>>) -> Self {
        Self { client, counter }
    }
}

#[async_trait]
impl BatchWriter for D1Writer {
    fn backend(&self) -> DbBackend {
        DbBackend::Sqlite
    }

    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let codes = batch.codes();
        let statements = batch.into_sql();
        let mut sent = Vec::with_capacity(statements.len());
        for SqlStatement { statement, .. } in &statements {
            let refused = |why: String| BatchError::Other(DbErr::Exec(RuntimeErr::Internal(why)));
            values::check_limits(statement).map_err(refused)?;
            sent.push((statement.sql.as_str(), values::params(statement).map_err(refused)?));
        }
        if let Some(counter) = &self.counter {
            counter.fetch_add(sent.len() as u64, Ordering::Relaxed);
        }
        let key = format!("batch-{}", uuid::Uuid::now_v7().simple());
        let mut resends = 0;
        let answer = loop {
            match self.client.batch(&sent, &key).await {
                Err(err) if resends < RESENDS && worth_sending_again(&err) => {
                    let pause = RESEND_PAUSE * 2_u32.pow(resends);
                    resends += 1;
                    tracing::warn!(error = %err, resends, "no outcome of a D1 batch; sending it again with its key");
                    tokio::time::sleep(pause).await;
                }
                Err(err) => return Err(failed(err, &statements, &codes)),
                Ok(answer) => break answer,
            }
        };
        let Some(steps) = answer.results else {
            // Applied, by an earlier request whose answer was lost, and its outcome was not kept.
            let lost = "D1 applied the batch, but its results were not kept for the resent request";
            return Err(BatchError::Other(DbErr::Exec(RuntimeErr::Internal(lost.into()))));
        };
        let mut results = Vec::new();
        for (SqlStatement { step, returns, .. }, answered) in statements.iter().zip(steps) {
            if step.is_none() {
                continue;
            }
            let rows =
                if *returns { answered.results.into_iter().map(row).collect::<Result<_, _>>()? } else { Vec::new() };
            let rows_affected = if *returns { rows.len() as u64 } else { answered.meta.changes };
            results.push(StepResult { rows_affected, rows });
        }
        Ok(results)
    }
}

/// No answer, a bare 502–504, or D1's UNAVAILABLE: the batch may have been applied, or D1 was
/// away for a moment. Not D1's OVERLOADED (see the module's doc).
fn worth_sending_again(err: &Error) -> bool {
    match err {
        Error::Unreachable { .. } => true,
        Error::Transient { code, .. } => code != "OVERLOADED",
        _ => false,
    }
}

fn row(NamedRow(fields): NamedRow) -> Result<QueryResult, BatchError> {
    let (columns, cells): (Vec<String>, Vec<Json>) = fields.into_iter().unzip();
    let row = values::row(&columns, cells)
        .map_err(|why| BatchError::Other(DbErr::Query(RuntimeErr::Internal(format!("D1 answered {why}")))))?;
    Ok(row.into())
}

/// The bridge's refusal as the write path's: a guard by its reason, a constraint by the statement
/// the bridge found failing, D1 busy or away (after the resends) as the database out of reach,
/// which the mutation answers as such rather than trying its decision again.
fn failed(err: Error, statements: &[SqlStatement], codes: &[&'static str]) -> BatchError {
    if let Error::Bridge { message, .. } = &err
        && let Some((index, code)) = guard_in(message, codes)
    {
        return BatchError::Guard { index, code };
    }
    let db_err = |err: &Error| DbErr::Exec(RuntimeErr::Internal(err.to_string()));
    match &err {
        Error::Bridge { code, index, .. } if code == "CONSTRAINT" => {
            let step = index.and_then(|index| statements.get(index)).and_then(|statement| statement.step);
            BatchError::Constraint { index: step.unwrap_or_default(), source: db_err(&err) }
        }
        // No answer, or D1 busy, after the resends: the database is out of reach for now.
        Error::Unreachable { .. } | Error::Transient { .. } | Error::Unauthorized { .. } => {
            BatchError::Other(DbErr::Conn(RuntimeErr::Internal(err.to_string())))
        }
        _ => BatchError::Other(db_err(&err)),
    }
}
