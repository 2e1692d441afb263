//! A batch on PostgreSQL in two round trips (docs/write-path.md, "The mechanism per database"):
//! `BEGIN` and every statement of the batch go as one simple query, each value written into the
//! SQL as a literal of the type sqlx would have bound it as; then each guard is checked on its
//! statement's row count, and `COMMIT` or `ROLLBACK` ends the transaction. Sent one statement a
//! round trip, as sea-orm's transactions do, `updateTeam`'s batch held the audit chain's lock
//! for five.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use chrono::SecondsFormat;
use futures_util::TryStreamExt;
use sea_orm::{
    ConnAcquireErr, DbErr, QueryResult, RuntimeErr, Statement, Value,
    sea_query::OptionEnum,
    sqlx::{self, Either, PgPool, Postgres, pool::PoolConnection, postgres::PgRow},
};

use super::{Batch, BatchError, Expect, Guard, Step, StepResult};

/// Runs `batch` as one transaction on `pool`; its statements are counted in `counter`.
pub(super) async fn run(
    pool: &PgPool,
    batch: Batch,
    counter: Option<&AtomicU64>,
) -> Result<Vec<StepResult>, BatchError> {
    if batch.is_empty() {
        return Ok(Vec::new());
    }
    let mut script = String::from("BEGIN;\n");
    for step in &batch.steps {
        let statement = match step {
            Step::Write { statement, .. } => statement,
            Step::Assert { condition, .. } => condition,
        };
        script.push_str(&inline(statement).map_err(|why| BatchError::Other(DbErr::Exec(RuntimeErr::Internal(why))))?);
        script.push_str(";\n");
    }
    if let Some(counter) = counter {
        counter.fetch_add(batch.steps.len() as u64, Ordering::Relaxed);
    }
    let mut connection = OpenTransaction(Some(pool.acquire().await.map_err(acquire_failed)?));
    let (answered, failure) = send(connection.get(), script).await;
    // Steps that ran, in order: a guard that did not hold comes before any error after it, as
    // when the statements went one at a time.
    let mut results = Vec::with_capacity(batch.steps.len());
    let mut outcome = Ok(());
    for (index, (step, (rows_affected, rows))) in batch.steps.iter().zip(answered).enumerate() {
        let failed_guard = match step {
            Step::Write { returns: true, guard, .. } => {
                let changed = rows.len() as u64;
                results.push(StepResult {
                    rows_affected: changed,
                    rows: rows.into_iter().map(QueryResult::from).collect(),
                });
                guard.filter(|guard| !guard.expect.holds(changed))
            }
            Step::Write { returns: false, guard, .. } => {
                results.push(StepResult { rows_affected, rows: Vec::new() });
                guard.filter(|guard| !guard.expect.holds(rows_affected))
            }
            Step::Assert { code, .. } => {
                results.push(StepResult::default());
                rows.is_empty().then_some(Guard { expect: Expect::AtLeastOne, code })
            }
        };
        if let Some(Guard { code, .. }) = failed_guard {
            outcome = Err(BatchError::Guard { index, code });
            break;
        }
    }
    if outcome.is_ok()
        && let Some((index, err)) = failure
    {
        outcome = Err(failed(index, err));
    }
    let end = if outcome.is_ok() { "COMMIT" } else { "ROLLBACK" };
    let ended = sqlx::raw_sql(end).execute(&mut **connection.get()).await;
    if ended.is_ok() {
        connection.finished();
    }
    // What went wrong first is what is answered; a connection that could not end its
    // transaction is closed.
    outcome?;
    ended.map_err(|err| failed(None, err))?;
    Ok(results)
}

fn failed(index: Option<usize>, err: sqlx::Error) -> BatchError {
    BatchError::from_db(index, DbErr::Exec(RuntimeErr::SqlxError(Arc::new(err))))
}

/// Each statement's row count and rows, in order (`BEGIN`'s left out), and the error that
/// stopped the script, with the step it stopped at (`None`: `BEGIN` or the connection).
async fn send(
    connection: &mut PoolConnection<Postgres>,
    script: String,
) -> (Vec<(u64, Vec<PgRow>)>, Option<(Option<usize>, sqlx::Error)>) {
    let mut answered = Vec::new();
    let mut rows = Vec::new();
    let mut began = false;
    let mut stream = sqlx::raw_sql(sqlx::AssertSqlSafe(script)).fetch_many(&mut **connection);
    loop {
        match stream.try_next().await {
            Ok(Some(Either::Right(row))) => rows.push(row),
            Ok(Some(Either::Left(done))) if began => answered.push((done.rows_affected(), std::mem::take(&mut rows))),
            Ok(Some(Either::Left(_))) => began = true,
            Ok(None) => return (answered, None),
            Err(err) => {
                let index = began.then_some(answered.len());
                return (answered, Some((index, err)));
            }
        }
    }
}

/// A connection between `BEGIN` and its `COMMIT` or `ROLLBACK`. Dropped before then (the
/// request went away meanwhile), the pool closes the connection instead of handing out one that
/// is inside a transaction.
struct OpenTransaction(Option<PoolConnection<Postgres>>);

impl OpenTransaction {
    fn get(&mut self) -> &mut PoolConnection<Postgres> {
        self.0.as_mut().expect("the connection is held until the transaction ends")
    }

    /// Gives the connection back to the pool.
    fn finished(mut self) {
        drop(self.0.take());
    }
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        if let Some(connection) = self.0.as_mut() {
            connection.close_on_drop();
        }
    }
}

fn acquire_failed(err: sqlx::Error) -> BatchError {
    let err = match err {
        sqlx::Error::PoolTimedOut => DbErr::ConnectionAcquire(ConnAcquireErr::Timeout),
        sqlx::Error::PoolClosed => DbErr::ConnectionAcquire(ConnAcquireErr::ConnectionClosed),
        err => DbErr::Conn(RuntimeErr::SqlxError(Arc::new(err))),
    };
    BatchError::from_db(None, err)
}

/// `statement`'s SQL with each `$n` replaced by its value as a literal ([`literal`]). Quoted
/// identifiers and string literals already in the SQL are copied as they are.
fn inline(statement: &Statement) -> Result<String, String> {
    let values = statement.values.as_ref().map(|values| values.0.as_slice()).unwrap_or_default();
    let sql = &statement.sql;
    let mut out = String::with_capacity(sql.len() + values.len() * 16);
    let mut chars = sql.char_indices().peekable();
    // The quote that opened the literal or identifier being copied, and whether backslashes
    // escape in it (`E'…'`).
    let mut quoted: Option<(char, bool)> = None;
    let mut previous = ' ';
    while let Some((at, c)) = chars.next() {
        match quoted {
            Some((quote, escapes)) => {
                out.push(c);
                if escapes && c == '\\' {
                    if let Some((_, next)) = chars.next() {
                        out.push(next);
                    }
                } else if c == quote {
                    quoted = None;
                }
            }
            None if c == '\'' || c == '"' => {
                out.push(c);
                quoted = Some((c, c == '\'' && matches!(previous, 'E' | 'e')));
            }
            None if c == '$' && chars.peek().is_some_and(|(_, next)| next.is_ascii_digit()) => {
                let digits: String =
                    std::iter::from_fn(|| chars.next_if(|(_, d)| d.is_ascii_digit()).map(|(_, d)| d)).collect();
                let value = digits
                    .parse::<usize>()
                    .ok()
                    .and_then(|n| values.get(n.checked_sub(1)?))
                    .ok_or_else(|| format!("the statement has no value for ${digits} (at byte {at})"))?;
                out.push_str(&literal(value)?);
            }
            None => out.push(c),
        }
        previous = c;
    }
    Ok(out)
}

/// `value` as a PostgreSQL literal of the type sqlx binds it as (`NULL::int8`, `E'it''s'::text`,
/// `'…'::jsonb`), so the statement means what it means with bound parameters.
fn literal(value: &Value) -> Result<String, String> {
    fn typed<T>(
        value: Option<T>,
        pg_type: &str,
        show: impl FnOnce(T) -> Result<String, String>,
    ) -> Result<String, String> {
        Ok(format!("{}::{pg_type}", value.map(show).transpose()?.unwrap_or_else(|| "NULL".into())))
    }
    match value {
        Value::Bool(b) => typed(*b, "boolean", |b| Ok(b.to_string())),
        Value::TinyInt(i) => typed(*i, "int2", |i| Ok(i.to_string())),
        Value::SmallInt(i) => typed(*i, "int2", |i| Ok(i.to_string())),
        Value::Int(i) => typed(*i, "int4", |i| Ok(i.to_string())),
        Value::BigInt(i) => typed(*i, "int8", |i| Ok(i.to_string())),
        Value::TinyUnsigned(i) => typed(*i, "int2", |i| Ok(i.to_string())),
        Value::SmallUnsigned(i) => typed(*i, "int4", |i| Ok(i.to_string())),
        Value::Unsigned(i) => typed(*i, "int8", |i| Ok(i.to_string())),
        Value::BigUnsigned(i) => typed(*i, "int8", |i| {
            i64::try_from(i).map(|i| i.to_string()).map_err(|_| format!("{i} is over PostgreSQL's int8"))
        }),
        // Quoted, so that NaN and the infinities are literals too.
        Value::Float(f) => typed(*f, "float4", |f| Ok(format!("'{f}'"))),
        Value::Double(f) => typed(*f, "float8", |f| Ok(format!("'{f}'"))),
        Value::String(s) => typed(s.as_deref(), "text", string),
        Value::Char(c) => typed(c.map(String::from), "text", |s| string(&s)),
        Value::Enum(OptionEnum::Some(e)) => string(&e.value).map(|s| format!("{s}::text")),
        Value::Enum(OptionEnum::None(_)) => Ok("NULL::text".into()),
        Value::Json(j) => typed(j.as_deref(), "jsonb", |j| string(&j.to_string())),
        Value::Bytes(b) => typed(b.as_deref(), "bytea", |b| Ok(format!("decode('{}', 'hex')", hex::encode(b)))),
        Value::ChronoDateTimeUtc(t) => {
            typed(*t, "timestamptz", |t| string(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true)))
        }
        Value::ChronoDateTimeLocal(t) => typed(*t, "timestamptz", |t| string(&t.to_rfc3339())),
        Value::ChronoDateTimeWithTimeZone(t) => typed(*t, "timestamptz", |t| string(&t.to_rfc3339())),
        Value::ChronoDateTime(t) => typed(*t, "timestamp", |t| string(&t.format("%F %T%.f").to_string())),
        Value::ChronoDate(d) => typed(*d, "date", |d| string(&d.format("%F").to_string())),
        Value::ChronoTime(t) => typed(*t, "time", |t| string(&t.format("%T%.f").to_string())),
        other => Err(format!("a value of a type the write path does not send to PostgreSQL: {other:?}")),
    }
}

/// `text` as an escape string literal (`E'…'`): a backslash and a quote escaped, the rest as it
/// is, whatever `standard_conforming_strings` says. A NUL, which no PostgreSQL text may hold
/// (and which would end the query), is refused.
fn string(text: &str) -> Result<String, String> {
    if text.contains('\0') {
        return Err("a text with a NUL character, which PostgreSQL cannot store".into());
    }
    let mut out = String::with_capacity(text.len() + 4);
    out.push_str("E'");
    for c in text.chars() {
        if c == '\\' || c == '\'' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('\'');
    Ok(out)
}

#[cfg(test)]
mod tests {
    use sea_orm::{DbBackend, Statement, Value};

    use super::{inline, literal};

    fn statement(sql: &str, values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
    }

    #[test]
    fn placeholders_become_typed_literals_and_quoted_text_is_left_alone() {
        let sql = r#"UPDATE "t$1" SET a = $1, b = '$2', c = E'\'$1', d = $2 WHERE e = $10"#;
        let values: Vec<Value> = (1..=10).map(|n| Value::BigInt(Some(n))).collect();
        assert_eq!(
            inline(&statement(sql, values)).unwrap(),
            r#"UPDATE "t$1" SET a = 1::int8, b = '$2', c = E'\'$1', d = 2::int8 WHERE e = 10::int8"#
        );
        let missing = inline(&statement("SELECT $3", vec![Value::Int(Some(1))])).unwrap_err();
        assert!(missing.contains("no value for $3"), "{missing}");
    }

    #[test]
    fn text_is_an_escape_string_and_a_nul_is_refused() {
        let text = |s: &str| literal(&Value::String(Some(s.into())));
        assert_eq!(text(r"it's \x41").unwrap(), r"E'it\'s \\x41'::text");
        assert_eq!(text("line\nnext\u{1a}").unwrap(), "E'line\nnext\u{1a}'::text");
        assert!(text("a\0b").unwrap_err().contains("NUL"));
        assert_eq!(literal(&Value::String(None)).unwrap(), "NULL::text");
        let json = serde_json::json!({"say": "it's"});
        assert_eq!(literal(&Value::Json(Some(Box::new(json)))).unwrap(), r#"E'{"say":"it\'s"}'::jsonb"#);
        assert_eq!(literal(&Value::Double(Some(f64::NAN))).unwrap(), "'NaN'::float8");
        assert_eq!(literal(&Value::Bool(Some(true))).unwrap(), "true::boolean");
        assert_eq!(literal(&Value::Bytes(Some(vec![0, 255]))).unwrap(), "decode('00ff', 'hex')::bytea");
        let at = chrono::DateTime::parse_from_rfc3339("2026-12-07T12:00:00.5Z").unwrap().to_utc();
        assert_eq!(literal(&Value::ChronoDateTimeUtc(Some(at))).unwrap(), "E'2026-12-07T12:00:00.500Z'::timestamptz");
        assert!(literal(&Value::BigUnsigned(Some(u64::MAX))).is_err());
    }
}
