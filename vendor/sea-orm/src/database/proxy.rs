use crate::{ExecResult, ExecResultHolder, QueryResult, QueryResultRow, Statement, error::*};

use sea_query::{ArrayType, Value, ValueType};
use std::{collections::BTreeMap, fmt::Debug};

/// Defines the [ProxyDatabaseTrait] to save the functions
#[async_trait::async_trait]
pub trait ProxyDatabaseTrait: Send + Sync + Debug {
    /// Execute a query in the [ProxyDatabase], and return the query results
    async fn query(&self, statement: Statement) -> Result<Vec<ProxyRow>, DbErr>;

    /// Execute a command in the [ProxyDatabase], and report the number of rows affected
    async fn execute(&self, statement: Statement) -> Result<ProxyExecResult, DbErr>;

    /// Begin a transaction in the [ProxyDatabase]
    async fn begin(&self) {}

    /// PATCH (PATCHES.md, 4): begin a transaction, or refuse to. `DatabaseConnection::begin`
    /// calls this one; the default calls [`Self::begin`] and accepts, as before the patch.
    async fn try_begin(&self) -> Result<(), DbErr> {
        self.begin().await;
        Ok(())
    }

    /// Commit a transaction in the [ProxyDatabase]
    async fn commit(&self) {}

    /// Rollback a transaction in the [ProxyDatabase]
    async fn rollback(&self) {}

    /// Start rollback a transaction in the [ProxyDatabase]
    fn start_rollback(&self) {}

    /// Ping the [ProxyDatabase], it should return an error if the database is not available
    async fn ping(&self) -> Result<(), DbErr> {
        Ok(())
    }
}

/// Defines the results obtained from a [ProxyDatabase]
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct ProxyExecResult {
    /// The last inserted id on auto-increment
    pub last_insert_id: u64,
    /// The number of rows affected by the database operation
    pub rows_affected: u64,
}

impl ProxyExecResult {
    /// Create a new [ProxyExecResult] from the last inserted id and the number of rows affected
    pub fn new(last_insert_id: u64, rows_affected: u64) -> Self {
        Self {
            last_insert_id,
            rows_affected,
        }
    }
}

impl Default for ExecResultHolder {
    fn default() -> Self {
        Self::Proxy(ProxyExecResult::default())
    }
}

impl From<ProxyExecResult> for ExecResult {
    fn from(result: ProxyExecResult) -> Self {
        Self {
            result: ExecResultHolder::Proxy(result),
        }
    }
}

impl From<ExecResult> for ProxyExecResult {
    fn from(result: ExecResult) -> Self {
        match result.result {
            #[cfg(feature = "sqlx-mysql")]
            ExecResultHolder::SqlxMySql(result) => Self {
                last_insert_id: result.last_insert_id(),
                rows_affected: result.rows_affected(),
            },
            #[cfg(feature = "sqlx-postgres")]
            ExecResultHolder::SqlxPostgres(result) => Self {
                last_insert_id: 0,
                rows_affected: result.rows_affected(),
            },
            #[cfg(feature = "sqlx-sqlite")]
            ExecResultHolder::SqlxSqlite(result) => Self {
                last_insert_id: result.last_insert_rowid() as u64,
                rows_affected: result.rows_affected(),
            },
            #[cfg(feature = "mock")]
            ExecResultHolder::Mock(result) => Self {
                last_insert_id: result.last_insert_id,
                rows_affected: result.rows_affected,
            },
            ExecResultHolder::Proxy(result) => result,
        }
    }
}

/// Defines the structure of a Row for the [ProxyDatabase]
/// which is just a [BTreeMap]<[String], [Value]>
#[derive(Clone, Debug, Default)]
pub struct ProxyRow {
    /// The values of the single row
    pub values: BTreeMap<String, Value>,
    /// PATCH (PATCHES.md, 2): the columns in the order the database answered them, duplicate
    /// names included, for positional reads and column names. Empty for a row made from a map
    /// alone, whose positional reads follow the map's (alphabetical) order as before the patch.
    pub columns: Vec<(String, Value)>,
}

impl ProxyRow {
    /// Create a new [ProxyRow] from a [BTreeMap]<[String], [Value]>
    pub fn new(values: BTreeMap<String, Value>) -> Self {
        Self {
            values,
            columns: Vec::new(),
        }
    }

    /// PATCH (PATCHES.md, 2): a row that keeps its columns' order. Read by name, a name that
    /// occurs twice answers its first column.
    pub fn from_columns(columns: Vec<(String, Value)>) -> Self {
        let mut values = BTreeMap::new();
        for (name, value) in &columns {
            values.entry(name.clone()).or_insert_with(|| value.clone());
        }
        Self { values, columns }
    }
}

impl From<BTreeMap<String, Value>> for ProxyRow {
    fn from(values: BTreeMap<String, Value>) -> Self {
        Self::new(values)
    }
}

impl From<ProxyRow> for BTreeMap<String, Value> {
    fn from(row: ProxyRow) -> Self {
        row.values
    }
}

impl From<ProxyRow> for Vec<(String, Value)> {
    fn from(row: ProxyRow) -> Self {
        row.into_column_value_tuples().collect()
    }
}

impl From<ProxyRow> for QueryResult {
    fn from(row: ProxyRow) -> Self {
        QueryResult {
            row: QueryResultRow::Proxy(row),
        }
    }
}

#[cfg(feature = "with-json")]
impl From<ProxyRow> for serde_json::Value {
    fn from(val: ProxyRow) -> serde_json::Value {
        val.values
            .into_iter()
            .map(|(k, v)| (k, sea_query::sea_value_to_json_value(&v)))
            .collect()
    }
}

/// Convert [QueryResult] to [ProxyRow]
pub fn from_query_result_to_proxy_row(result: &QueryResult) -> ProxyRow {
    match &result.row {
        #[cfg(feature = "sqlx-mysql")]
        QueryResultRow::SqlxMySql(row) => crate::from_sqlx_mysql_row_to_proxy_row(row),
        #[cfg(feature = "sqlx-postgres")]
        QueryResultRow::SqlxPostgres(row) => crate::from_sqlx_postgres_row_to_proxy_row(row),
        #[cfg(feature = "sqlx-sqlite")]
        QueryResultRow::SqlxSqlite(row) => crate::from_sqlx_sqlite_row_to_proxy_row(row),
        #[cfg(feature = "mock")]
        QueryResultRow::Mock(row) => ProxyRow::new(row.values.clone()),
        QueryResultRow::Proxy(row) => row.to_owned(),
    }
}

impl ProxyRow {
    /// Get a value from the [ProxyRow]
    ///
    /// PATCH (PATCHES.md, 3): a value stored as another variant than `T`'s is converted the
    /// way sqlx-sqlite decodes SQLite's storage classes (see [`coerce`]).
    pub fn try_get<T, I: crate::ColIdx>(&self, index: I) -> Result<T, DbErr>
    where
        T: ValueType,
    {
        self.try_get_by(index).map_err(|e| match e {
            crate::TryGetError::DbErr(e) => e,
            crate::TryGetError::Null(_) => type_err(format!("{index:?} is null")),
        })
    }

    /// PATCH (PATCHES.md, 3): [`Self::try_get`] telling a missing column or a NULL
    /// (`TryGetError::Null`, which an `Option<T>` reads as `None`, as sqlx's rows do) from a
    /// value that cannot become a `T` (`TryGetError::DbErr`, an error for `Option<T>` too).
    pub fn try_get_by<T, I: crate::ColIdx>(&self, index: I) -> Result<T, crate::TryGetError>
    where
        T: ValueType,
    {
        let null = || crate::TryGetError::Null(format!("{index:?}"));
        let value = if let Some(name) = index.as_str() {
            self.values.get(name)
        } else if let Some(&i) = index.as_usize() {
            if self.columns.is_empty() {
                self.values.values().nth(i)
            } else {
                self.columns.get(i).map(|(_, value)| value)
            }
        } else {
            unreachable!("Missing ColIdx implementation for ProxyRow");
        };
        let value = value.ok_or_else(null)?;
        if *value == value.as_null() {
            return Err(null());
        }
        if let Ok(v) = T::try_from(value.clone()) {
            return Ok(v);
        }
        let coerced = coerce(value, T::array_type()).map_err(|why| {
            type_err(format!(
                "column {index:?}: cannot read {} as {}: {why}",
                kind(value),
                T::type_name()
            ))
        })?;
        T::try_from(coerced).map_err(|e| type_err(format!("column {index:?}: {e}")).into())
    }

    /// An iterator over the keys and values of a proxy row
    pub fn into_column_value_tuples(self) -> impl Iterator<Item = (String, Value)> {
        // PATCH (PATCHES.md, 2): in the database's order when it is known.
        if self.columns.is_empty() {
            self.values.into_iter().collect::<Vec<_>>().into_iter()
        } else {
            self.columns.into_iter()
        }
    }
}

/// PATCH (PATCHES.md, 3): `value` as the variant `target` names, converted as sqlx-sqlite decodes
/// SQLite's storage classes (INTEGER, REAL, TEXT, BLOB) into Rust types: integers into `bool`
/// (non-zero is true) and into narrower integers (refusing what does not fit), integers into
/// floats and whole floats into integers, text into JSON, dates and times (RFC 3339 and the
/// formats sqlx-sqlite writes and reads) and UUIDs, and text into bytes. A proxy that knows only
/// JSON-like scalars (a string, a number) can then answer any column.
fn coerce(value: &Value, target: ArrayType) -> Result<Value, String> {
    use Value as V;
    let stored = match value {
        V::Bool(Some(b)) => Stored::Integer(i64::from(*b)),
        V::TinyInt(Some(i)) => Stored::Integer(i64::from(*i)),
        V::SmallInt(Some(i)) => Stored::Integer(i64::from(*i)),
        V::Int(Some(i)) => Stored::Integer(i64::from(*i)),
        V::BigInt(Some(i)) => Stored::Integer(*i),
        V::TinyUnsigned(Some(i)) => Stored::Integer(i64::from(*i)),
        V::SmallUnsigned(Some(i)) => Stored::Integer(i64::from(*i)),
        V::Unsigned(Some(i)) => Stored::Integer(i64::from(*i)),
        V::BigUnsigned(Some(i)) => Stored::Integer(
            <i64 as TryFrom<u64>>::try_from(*i)
                .map_err(|_| "beyond a 64-bit integer".to_string())?,
        ),
        V::Float(Some(f)) => Stored::Real(f64::from(*f)),
        V::Double(Some(f)) => Stored::Real(*f),
        V::String(Some(s)) => Stored::Text(s),
        V::Bytes(Some(b)) => Stored::Blob(b),
        _ => return Err("no conversion from this variant".into()),
    };
    let integer = || match stored {
        Stored::Integer(i) => Ok(i),
        Stored::Real(f) if f.fract() == 0.0 && f.abs() < 9_007_199_254_740_992.0 => Ok(f as i64),
        _ => Err("not an integer".to_string()),
    };
    let fits = |what: &str| format!("{} does not fit in {what}", integer().unwrap_or_default());
    let text = || match stored {
        Stored::Text(s) => Ok(s),
        _ => Err("not text".to_string()),
    };
    Ok(match target {
        ArrayType::Bool => V::Bool(Some(integer()? != 0)),
        ArrayType::TinyInt => V::TinyInt(Some(integer()?.try_into().map_err(|_| fits("i8"))?)),
        ArrayType::SmallInt => V::SmallInt(Some(integer()?.try_into().map_err(|_| fits("i16"))?)),
        ArrayType::Int => V::Int(Some(integer()?.try_into().map_err(|_| fits("i32"))?)),
        ArrayType::BigInt => V::BigInt(Some(integer()?)),
        ArrayType::TinyUnsigned => {
            V::TinyUnsigned(Some(integer()?.try_into().map_err(|_| fits("u8"))?))
        }
        ArrayType::SmallUnsigned => {
            V::SmallUnsigned(Some(integer()?.try_into().map_err(|_| fits("u16"))?))
        }
        ArrayType::Unsigned => V::Unsigned(Some(integer()?.try_into().map_err(|_| fits("u32"))?)),
        ArrayType::BigUnsigned => {
            V::BigUnsigned(Some(integer()?.try_into().map_err(|_| fits("u64"))?))
        }
        ArrayType::Float | ArrayType::Double => {
            let f = match stored {
                Stored::Integer(i) => i as f64,
                Stored::Real(f) => f,
                _ => return Err("not a number".into()),
            };
            if target == ArrayType::Float {
                V::Float(Some(f as f32))
            } else {
                V::Double(Some(f))
            }
        }
        ArrayType::String => V::String(Some(text()?.to_owned())),
        ArrayType::Char => {
            let mut chars = text()?.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) => V::Char(Some(c)),
                _ => return Err("not one character".into()),
            }
        }
        ArrayType::Bytes => match stored {
            Stored::Blob(b) => V::Bytes(Some(b.to_vec())),
            Stored::Text(s) => V::Bytes(Some(s.as_bytes().to_vec())),
            _ => return Err("neither a blob nor text".into()),
        },
        #[cfg(feature = "with-json")]
        ArrayType::Json => {
            let parsed = match stored {
                Stored::Text(s) => serde_json::from_str(s),
                Stored::Blob(b) => serde_json::from_slice(b),
                _ => return Err("JSON is stored as text".into()),
            };
            V::Json(Some(Box::new(parsed.map_err(|e| e.to_string())?)))
        }
        #[cfg(feature = "with-chrono")]
        ArrayType::ChronoDateTimeUtc => V::ChronoDateTimeUtc(Some(date_time(&stored)?.to_utc())),
        #[cfg(feature = "with-chrono")]
        ArrayType::ChronoDateTimeLocal => {
            V::ChronoDateTimeLocal(Some(date_time(&stored)?.with_timezone(&chrono::Local)))
        }
        #[cfg(feature = "with-chrono")]
        ArrayType::ChronoDateTimeWithTimeZone => {
            V::ChronoDateTimeWithTimeZone(Some(date_time(&stored)?))
        }
        #[cfg(feature = "with-chrono")]
        ArrayType::ChronoDateTime => V::ChronoDateTime(Some(date_time(&stored)?.naive_local())),
        #[cfg(feature = "with-chrono")]
        ArrayType::ChronoDate => V::ChronoDate(Some(
            chrono::NaiveDate::parse_from_str(text()?, "%F").map_err(|e| e.to_string())?,
        )),
        #[cfg(feature = "with-chrono")]
        ArrayType::ChronoTime => V::ChronoTime(Some(time(text()?)?)),
        #[cfg(feature = "with-uuid")]
        ArrayType::Uuid => V::Uuid(Some(match stored {
            Stored::Text(s) => uuid::Uuid::parse_str(s).map_err(|e| e.to_string())?,
            Stored::Blob(b) => uuid::Uuid::from_slice(b).map_err(|e| e.to_string())?,
            _ => return Err("neither text nor 16 bytes".into()),
        })),
        _ => return Err("no conversion to this type".into()),
    })
}

/// PATCH (PATCHES.md, 3): what kind of value `value` is, for an error message (which should not
/// carry the value itself: it may be a secret's hash or a person's data).
fn kind(value: &Value) -> &'static str {
    match value {
        Value::String(_) => "text",
        Value::Bytes(_) => "a blob",
        Value::Float(_) | Value::Double(_) => "a real number",
        Value::Bool(_)
        | Value::TinyInt(_)
        | Value::SmallInt(_)
        | Value::Int(_)
        | Value::BigInt(_)
        | Value::TinyUnsigned(_)
        | Value::SmallUnsigned(_)
        | Value::Unsigned(_)
        | Value::BigUnsigned(_) => "an integer",
        _ => "a value of another type",
    }
}

/// PATCH (PATCHES.md, 3): a value as SQLite's storage class holds it.
enum Stored<'a> {
    Integer(i64),
    Real(f64),
    Text(&'a str),
    Blob(&'a [u8]),
}

/// PATCH (PATCHES.md, 3): a date and time from text, unix seconds or a Julian day number,
/// as sqlx-sqlite 0.9 decodes them (`sqlx-sqlite/src/types/chrono.rs`, `decode_datetime`).
#[cfg(feature = "with-chrono")]
fn date_time(stored: &Stored<'_>) -> Result<chrono::DateTime<chrono::FixedOffset>, String> {
    use chrono::{DateTime, NaiveDateTime, Offset, TimeZone, Utc};
    let utc = Utc.fix();
    let found = match *stored {
        Stored::Text(s) => DateTime::parse_from_rfc3339(s).ok().or_else(|| {
            const FORMATS: [&str; 12] = [
                "%F %T%.f",
                "%F %R",
                "%F %RZ",
                "%F %R%:z",
                "%F %T%.fZ",
                "%F %T%.f%:z",
                "%FT%R",
                "%FT%RZ",
                "%FT%R%:z",
                "%FT%T%.f",
                "%FT%T%.fZ",
                "%FT%T%.f%:z",
            ];
            FORMATS.iter().find_map(|format| {
                DateTime::parse_from_str(s, format).ok().or_else(|| {
                    let naive = NaiveDateTime::parse_from_str(s, format).ok()?;
                    Some(utc.from_utc_datetime(&naive))
                })
            })
        }),
        Stored::Integer(seconds) => utc.timestamp_opt(seconds, 0).single(),
        Stored::Real(julian_day) => {
            let timestamp = (julian_day - 2_440_587.5) * 86_400.0;
            timestamp
                .is_finite()
                .then(|| {
                    let nanos = (timestamp.fract() * 1e9).abs() as u32;
                    utc.timestamp_opt(timestamp.trunc() as i64, nanos).single()
                })
                .flatten()
        }
        Stored::Blob(_) => None,
    };
    found.ok_or_else(|| "not a date and time sqlx-sqlite reads".to_string())
}

/// PATCH (PATCHES.md, 3): a time of day from text, as sqlx-sqlite 0.9 decodes it.
#[cfg(feature = "with-chrono")]
fn time(s: &str) -> Result<chrono::NaiveTime, String> {
    const FORMATS: [&str; 7] = ["%T.f", "%T%.f", "%R", "%RZ", "%T%.fZ", "%R%:z", "%T%.f%:z"];
    FORMATS
        .iter()
        .find_map(|format| chrono::NaiveTime::parse_from_str(s, format).ok())
        .ok_or_else(|| "not a time sqlx-sqlite reads".to_string())
}

#[cfg(test)]
mod tests {
    use crate::{
        Database, DbBackend, DbErr, ProxyDatabaseTrait, ProxyExecResult, ProxyRow, Statement,
        entity::*, tests_cfg::*,
    };
    use std::sync::Arc;

    #[derive(Debug)]
    struct ProxyDb {}

    #[async_trait::async_trait]
    impl ProxyDatabaseTrait for ProxyDb {
        async fn query(&self, statement: Statement) -> Result<Vec<ProxyRow>, DbErr> {
            println!("SQL query: {}", statement.sql);
            Ok(vec![].into())
        }

        async fn execute(&self, statement: Statement) -> Result<ProxyExecResult, DbErr> {
            println!("SQL execute: {}", statement.sql);
            Ok(ProxyExecResult {
                last_insert_id: 1,
                rows_affected: 1,
            })
        }
    }

    #[smol_potat::test]
    async fn create_proxy_conn() {
        let _db = Database::connect_proxy(DbBackend::MySql, Arc::new(Box::new(ProxyDb {})))
            .await
            .unwrap();
    }

    #[smol_potat::test]
    async fn select_rows() {
        let db = Database::connect_proxy(DbBackend::MySql, Arc::new(Box::new(ProxyDb {})))
            .await
            .unwrap();

        let _ = cake::Entity::find().all(&db).await;
    }

    #[smol_potat::test]
    async fn insert_one_row() {
        let db = Database::connect_proxy(DbBackend::MySql, Arc::new(Box::new(ProxyDb {})))
            .await
            .unwrap();

        let item = cake::ActiveModel {
            id: NotSet,
            name: Set("Alice".to_string()),
        };

        cake::Entity::insert(item).exec(&db).await.unwrap();
    }
}
