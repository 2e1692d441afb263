//! Values between sea-orm and the D1 bridge's JSON: bound parameters written the way sqlx-sqlite
//! binds them on SQLite (so comparisons with the TEXT a SQLite file holds give the same answer),
//! and D1's cells read back as the `Value`s a `ProxyRow` holds (the patched sea-orm converts
//! them to each field's type, vendor/sea-orm/PATCHES.md).

use chrono::SecondsFormat;
use sea_orm::{ProxyRow, Statement, Value, sea_query::OptionEnum};
use serde_json::Value as Json;

/// Bound parameters D1 accepts in one statement.
pub const MAX_PARAMS: usize = 100;
/// Bytes of SQL D1 accepts in one statement.
pub const MAX_SQL_BYTES: usize = 100_000;
/// The largest integer a JSON number (a double) holds exactly: 2^53 - 1.
const MAX_SAFE_INTEGER: i64 = (1 << 53) - 1;

/// Refuses, before anything is sent, a statement over one of D1's limits: the message names the
/// limit and the statement's start.
pub fn check_limits(statement: &Statement) -> Result<(), String> {
    let params = statement.values.as_ref().map_or(0, |v| v.0.len());
    let bytes = statement.sql.len();
    let problem = if params > MAX_PARAMS {
        format!("{params} bound parameters; D1 accepts at most {MAX_PARAMS} per statement")
    } else if bytes > MAX_SQL_BYTES {
        format!("{bytes} bytes of SQL; D1 accepts at most {MAX_SQL_BYTES} per statement")
    } else {
        return Ok(());
    };
    let start: String = statement.sql.chars().take(60).collect();
    Err(format!("not sent to D1: the statement `{start}…` has {problem}"))
}

/// The statement's parameters as the bridge's JSON `params`.
pub fn params(statement: &Statement) -> Result<Vec<Json>, String> {
    let values = statement.values.as_ref().map_or(&[][..], |v| &v.0[..]);
    values.iter().enumerate().map(|(i, v)| param(v).map_err(|why| format!("parameter {}: {why}", i + 1))).collect()
}

/// One parameter, as sqlx-sqlite would bind it on SQLite: booleans as 1/0, timestamps as the
/// text sqlx writes, JSON as its text. Integers beyond ±(2^53 - 1) travel as strings (the
/// bridge refuses them as numbers; SQLite compares a TEXT parameter with an INTEGER column
/// after converting it, so `id = '9007199254740993'` still matches).
fn param(value: &Value) -> Result<Json, String> {
    fn integer(i: i64) -> Json {
        if (-MAX_SAFE_INTEGER..=MAX_SAFE_INTEGER).contains(&i) { Json::from(i) } else { Json::from(i.to_string()) }
    }
    fn number(f: f64) -> Result<Json, String> {
        serde_json::Number::from_f64(f).map(Json::Number).ok_or_else(|| format!("{f} has no JSON number"))
    }
    let json = match value {
        Value::Bool(b) => b.map(|b| Json::from(i64::from(b))),
        Value::TinyInt(i) => i.map(|i| integer(i.into())),
        Value::SmallInt(i) => i.map(|i| integer(i.into())),
        Value::Int(i) => i.map(|i| integer(i.into())),
        Value::BigInt(i) => i.map(integer),
        Value::TinyUnsigned(i) => i.map(|i| integer(i.into())),
        Value::SmallUnsigned(i) => i.map(|i| integer(i.into())),
        Value::Unsigned(i) => i.map(|i| integer(i.into())),
        // sqlx-sqlite binds a u64 as an i64 too (and fails beyond it).
        Value::BigUnsigned(i) => match i.map(i64::try_from).transpose() {
            Ok(i) => i.map(integer),
            Err(_) => return Err("an unsigned integer beyond 2^63 - 1, which SQLite cannot hold".into()),
        },
        Value::Float(f) => f.map(|f| number(f.into())).transpose()?,
        Value::Double(f) => f.map(number).transpose()?,
        Value::String(s) => s.clone().map(Json::from),
        Value::Char(c) => c.map(|c| Json::from(c.to_string())),
        Value::Enum(OptionEnum::Some(e)) => Some(Json::from(e.value.to_string())),
        Value::Enum(OptionEnum::None(_)) => None,
        Value::Json(j) => j.as_ref().map(|j| Json::from(j.to_string())),
        // sqlx-sqlite's Encode for chrono (sqlx-sqlite/src/types/chrono.rs).
        Value::ChronoDateTimeUtc(t) => t.map(|t| Json::from(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))),
        Value::ChronoDateTimeLocal(t) => t.map(|t| Json::from(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))),
        Value::ChronoDateTimeWithTimeZone(t) => t.map(|t| Json::from(t.to_rfc3339_opts(SecondsFormat::AutoSi, false))),
        Value::ChronoDateTime(t) => t.map(|t| Json::from(t.format("%F %T%.f").to_string())),
        Value::ChronoDate(d) => d.map(|d| Json::from(d.format("%F").to_string())),
        Value::ChronoTime(t) => t.map(|t| Json::from(t.format("%T%.f").to_string())),
        Value::Bytes(None) => None,
        Value::Bytes(Some(_)) => return Err("a BLOB, which the D1 bridge cannot bind (it takes JSON scalars)".into()),
        other => return Err(format!("{other:?} has no D1 form")),
    };
    Ok(json.unwrap_or(Json::Null))
}

/// One row of the bridge's answer (`columns` and a row of `rows`), in order, as a `ProxyRow`:
/// a string is `Value::String`, a whole number `Value::BigInt`, another number `Value::Double`,
/// an array of bytes (a BLOB) `Value::Bytes`, null a NULL. The field's type decides the rest.
pub fn row(columns: &[String], cells: Vec<Json>) -> Result<ProxyRow, String> {
    if cells.len() != columns.len() {
        return Err(format!("a row of {} values for {} columns", cells.len(), columns.len()));
    }
    let values = columns.iter().zip(cells).map(|(name, cell)| Ok((name.clone(), cell_value(cell)?)));
    Ok(ProxyRow::from_columns(values.collect::<Result<_, String>>()?))
}

fn cell_value(cell: Json) -> Result<Value, String> {
    Ok(match cell {
        Json::Null => Value::String(None),
        Json::String(s) => Value::String(Some(s)),
        Json::Bool(b) => Value::Bool(Some(b)),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Value::BigInt(Some(i)),
            None => Value::Double(n.as_f64()),
        },
        Json::Array(bytes) => {
            let bytes = bytes.iter().map(|b| b.as_u64().and_then(|b| u8::try_from(b).ok()));
            Value::Bytes(Some(bytes.collect::<Option<Vec<u8>>>().ok_or("an array that is not a BLOB's bytes")?))
        }
        Json::Object(_) => return Err("an object where D1 answers scalars".into()),
    })
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, TimeZone, Utc};
    use sea_orm::{DbBackend, QueryResult};
    use serde_json::json;

    use super::*;

    fn statement(values: Vec<Value>) -> Statement {
        Statement::from_sql_and_values(DbBackend::Sqlite, "SELECT ?", values)
    }

    #[test]
    fn parameters_are_bound_as_sqlx_sqlite_binds_them() {
        let at = Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0).unwrap() + chrono::Duration::microseconds(123_456);
        let bound = params(&statement(vec![
            true.into(),
            at.into(),
            Utc.with_ymd_and_hms(2026, 5, 1, 10, 0, 0).unwrap().into(),
            json!({"a": [1, "x"]}).into(),
            (1_i64 << 53).into(),
            (-(1_i64 << 53) + 1).into(),
            Value::String(None),
            2.5_f64.into(),
        ]))
        .unwrap();
        assert_eq!(
            bound,
            vec![
                json!(1),
                json!("2026-05-01T10:00:00.123456+00:00"),
                json!("2026-05-01T10:00:00+00:00"),
                json!(r#"{"a":[1,"x"]}"#),
                json!("9007199254740992"),
                json!(-9_007_199_254_740_991_i64),
                Json::Null,
                json!(2.5),
            ]
        );
    }

    #[test]
    fn a_statement_over_d1_limits_is_refused_naming_the_limit() {
        let many = statement((0..101).map(|i: i64| i.into()).collect());
        let refusal = check_limits(&many).unwrap_err();
        assert!(refusal.contains("101 bound parameters; D1 accepts at most 100"), "{refusal}");
        let long = Statement::from_string(DbBackend::Sqlite, format!("SELECT '{}'", "x".repeat(MAX_SQL_BYTES)));
        let refusal = check_limits(&long).unwrap_err();
        assert!(refusal.contains("bytes of SQL; D1 accepts at most 100000"), "{refusal}");
        assert!(check_limits(&statement((0..100).map(|i: i64| i.into()).collect())).is_ok());
    }

    #[test]
    fn cells_read_back_as_the_fields_types_in_column_order() {
        let columns = ["z", "a", "z", "note"].map(String::from);
        let cells = vec![json!("2026-05-01T10:00:00.123456+00:00"), json!(1), json!(null), json!("tomorrow")];
        let row = row(&columns, cells).unwrap();
        let result = QueryResult::from(row);
        let at: DateTime<Utc> = result.try_get_by_index(0).unwrap();
        assert_eq!(at.to_rfc3339(), "2026-05-01T10:00:00.123456+00:00");
        assert!(result.try_get_by_index::<bool>(1).unwrap());
        assert_eq!(result.try_get_by_index::<Option<String>>(2).unwrap(), None, "the second `z`, not the first");
        assert_eq!(result.column_names(), ["z", "a", "z", "note"]);
        // A value that cannot be read as the type asked for is an error, not a NULL.
        let err = result.try_get::<Option<DateTime<Utc>>>("", "note").unwrap_err();
        assert!(err.to_string().contains("cannot read text as"), "{err}");
        assert!(!err.to_string().contains("tomorrow"), "no value in the message: {err}");
    }

    #[test]
    fn json_text_and_numbers_read_as_their_fields_types() {
        let columns = ["spec", "price", "count", "small"].map(String::from);
        let row = row(&columns, vec![json!(r#"{"agents":[]}"#), json!(3), json!(4.0), json!(300)]).unwrap();
        let result = QueryResult::from(row);
        assert_eq!(result.try_get::<serde_json::Value>("", "spec").unwrap(), json!({"agents": []}));
        assert_eq!(result.try_get::<f64>("", "price").unwrap(), 3.0);
        assert_eq!(result.try_get::<i64>("", "count").unwrap(), 4);
        assert!(result.try_get::<i8>("", "small").is_err(), "300 does not fit in an i8");
        assert_eq!(result.try_get::<Option<i32>>("", "missing").unwrap(), None);
    }
}
