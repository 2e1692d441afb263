//! Usage reports: `usage_daily` summed over the UTC days of a range and grouped by any of user,
//! team, API key, model and day, over the rows the caller may see; the same report as CSV.

use std::{borrow::Cow, cmp::Ordering, ops::Add};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use entity::{team_members, usage_daily};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, Query, SelectStatement, SimpleExpr},
};

use super::{audit::Caller, range::TimeRange};
use crate::{
    auth::{GlobalRole, api_key::Scope, guard},
    error::{AppError, Problem},
};

/// Most rows one report holds; past it the caller narrows the range or groups by less.
pub const MAX_ROWS: usize = 10_000;
/// The span of a range given without `from`.
const DEFAULT_DAYS: i64 = 30;

/// A dimension a usage report groups by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
pub enum UsageGroup {
    /// The user who made the request or run (an API key's owner).
    User,
    /// The team a run ran in, or a team-restricted API key's team.
    Team,
    ApiKey,
    /// The model called (`provider/model`).
    Model,
    /// The UTC day.
    Day,
}

impl UsageGroup {
    const ALL: [Self; 5] = [Self::User, Self::Team, Self::ApiKey, Self::Model, Self::Day];

    /// The name clients use, as in the GraphQL enum.
    pub fn name(self) -> &'static str {
        match self {
            Self::User => "USER",
            Self::Team => "TEAM",
            Self::ApiKey => "API_KEY",
            Self::Model => "MODEL",
            Self::Day => "DAY",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|g| g.name().eq_ignore_ascii_case(name.trim()))
    }

    /// The CSV column, named as the GraphQL field of a row.
    fn csv_column(self) -> &'static str {
        match self {
            Self::User => "userId",
            Self::Team => "teamId",
            Self::ApiKey => "apiKeyId",
            Self::Model => "model",
            Self::Day => "day",
        }
    }

    fn column(self) -> usage_daily::Column {
        match self {
            Self::User => usage_daily::Column::UserId,
            Self::Team => usage_daily::Column::TeamId,
            Self::ApiKey => usage_daily::Column::ApiKeyId,
            Self::Model => usage_daily::Column::Model,
            Self::Day => usage_daily::Column::Day,
        }
    }

    fn alias(self) -> &'static str {
        match self {
            Self::User => "user_id",
            Self::Team => "team_id",
            Self::ApiKey => "api_key_id",
            Self::Model => "model",
            Self::Day => "day",
        }
    }

    fn value(self, row: &UsageRow) -> Option<&str> {
        match self {
            Self::User => row.user_id.as_deref(),
            Self::Team => row.team_id.as_deref(),
            Self::ApiKey => row.api_key_id.as_deref(),
            Self::Model => row.model.as_deref(),
            Self::Day => row.day.as_deref(),
        }
    }
}

/// Requests, runs, tokens and cost, summed.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Figures {
    pub requests: i64,
    pub runs: i64,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
}

impl Add for Figures {
    type Output = Self;

    fn add(self, other: Self) -> Self {
        Self {
            requests: self.requests + other.requests,
            runs: self.runs + other.runs,
            tokens_in: self.tokens_in + other.tokens_in,
            tokens_out: self.tokens_out + other.tokens_out,
            cost_usd: self.cost_usd + other.cost_usd,
        }
    }
}

/// One group of a report: its key (`None` for a dimension not grouped by, or absent from the
/// usage, such as the model of a plain request) and its figures.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    pub user_id: Option<String>,
    pub team_id: Option<String>,
    pub api_key_id: Option<String>,
    pub model: Option<String>,
    pub day: Option<String>,
    pub figures: Figures,
}

impl From<usage_daily::Model> for UsageRow {
    fn from(sum: usage_daily::Model) -> Self {
        let key = |value: String| (!value.is_empty()).then_some(value);
        Self {
            user_id: key(sum.user_id),
            team_id: key(sum.team_id),
            api_key_id: key(sum.api_key_id),
            model: key(sum.model),
            day: key(sum.day),
            figures: Figures {
                requests: sum.requests,
                runs: sum.runs,
                tokens_in: sum.tokens_in,
                tokens_out: sum.tokens_out,
                cost_usd: sum.cost_usd,
            },
        }
    }
}

pub struct Report {
    pub range: TimeRange,
    /// The UTC days counted, both inclusive.
    pub first_day: NaiveDate,
    pub last_day: NaiveDate,
    pub group_by: Vec<UsageGroup>,
    /// Sorted by the group keys in `group_by` order; empty when `group_by` is.
    pub rows: Vec<UsageRow>,
    pub totals: Figures,
}

/// Which rows of `usage_daily` a caller may see.
pub struct Visibility {
    /// Rows of this user and of teams they own; every row when `None` (an admin).
    user: Option<String>,
    /// Only rows of this team: an API key restricted to it.
    team: Option<String>,
}

/// What the caller may see: a signed-in user, or an API key with `teams:read` acting as its
/// owner (and, when restricted to a team, within it).
pub fn visibility(caller: &Caller) -> Result<Visibility, AppError> {
    let (user, team) = guard::acting_user_within(caller, Scope::TeamsRead)?;
    Ok(Visibility { user: (user.role != GlobalRole::Admin).then(|| user.id.clone()), team: team.map(str::to_string) })
}

impl Visibility {
    fn condition(&self) -> Condition {
        let mut visible = Condition::all();
        if let Some(user) = &self.user {
            visible = visible.add(
                Condition::any()
                    .add(usage_daily::Column::UserId.eq(user))
                    .add(usage_daily::Column::TeamId.in_subquery(owned_teams(user))),
            );
        }
        if let Some(team) = &self.team {
            visible = visible.add(usage_daily::Column::TeamId.eq(team));
        }
        visible
    }
}

/// The ids of the teams `user_id` owns.
pub fn owned_teams(user_id: &str) -> SelectStatement {
    Query::select()
        .column(team_members::Column::TeamId)
        .from(team_members::Entity)
        .and_where(team_members::Column::UserId.eq(user_id))
        .and_where(team_members::Column::Role.eq("owner"))
        .to_owned()
}

/// `SUM(expr)` as a BIGINT on every backend (PostgreSQL sums BIGINT to NUMERIC), 0 over no rows.
pub fn sum(expr: &str) -> SimpleExpr {
    Expr::cust(format!("CAST(COALESCE(SUM({expr}), 0) AS BIGINT)"))
}

/// The usage the caller may see in the range (default: the last 30 days), grouped by
/// `group_by` in that order.
#[tracing::instrument(skip_all)]
pub async fn report(
    db: &DatabaseConnection,
    visibility: &Visibility,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    group_by: Vec<UsageGroup>,
) -> Result<Report, AppError> {
    let range = TimeRange::resolve(from, to, Duration::days(DEFAULT_DAYS))?;
    check_groups(&group_by)?;
    let (first_day, last_day) = days(&range);
    let mut select = usage_daily::Entity::find().select_only();
    for group in UsageGroup::ALL {
        select = if group_by.contains(&group) {
            select.column(group.column()).group_by(group.column())
        } else {
            select.column_as(Expr::cust("''"), group.alias())
        };
    }
    let sums = select
        .column_as(sum("requests"), "requests")
        .column_as(sum("runs"), "runs")
        .column_as(sum("tokens_in"), "tokens_in")
        .column_as(sum("tokens_out"), "tokens_out")
        .column_as(Expr::cust("COALESCE(SUM(cost_usd), 0.0)"), "cost_usd")
        .filter(usage_daily::Column::Day.between(day(first_day), day(last_day)))
        .filter(visibility.condition())
        .limit(MAX_ROWS as u64 + 1)
        .into_model::<usage_daily::Model>()
        .all(db)
        .await?;
    if sums.len() > MAX_ROWS {
        return Err(AppError::bad_input(format!(
            "The report would have more than {MAX_ROWS} rows: narrow the range or group by fewer dimensions."
        )));
    }
    let mut rows: Vec<UsageRow> = sums.into_iter().map(UsageRow::from).collect();
    let totals = rows.iter().fold(Figures::default(), |total, row| total + row.figures);
    if group_by.is_empty() {
        rows.clear();
    }
    rows.sort_by(|a, b| compare(&group_by, a, b));
    Ok(Report { range, first_day, last_day, group_by, rows, totals })
}

fn check_groups(group_by: &[UsageGroup]) -> Result<(), AppError> {
    let repeated = group_by.iter().enumerate().find(|(i, g)| group_by[..*i].contains(g));
    match repeated {
        Some((_, group)) => {
            let problem = format!("names {} more than once", group.name());
            let message = format!("groupBy {problem}.");
            Err(AppError::BadUserInput { message, problems: vec![Problem::new("groupBy", problem)] })
        }
        None => Ok(()),
    }
}

/// The UTC days the range touches: usage is kept per day, so a day counts whole when any of it
/// is in the range (an empty range counts the day of `from`).
fn days(range: &TimeRange) -> (NaiveDate, NaiveDate) {
    let first = range.from.date_naive();
    (first, (range.to - Duration::nanoseconds(1)).date_naive().max(first))
}

/// A day as `usage_daily` keys it.
pub fn day(date: NaiveDate) -> String {
    date.format("%Y-%m-%d").to_string()
}

fn compare(group_by: &[UsageGroup], a: &UsageRow, b: &UsageRow) -> Ordering {
    group_by.iter().map(|g| g.value(a).cmp(&g.value(b))).find(|o| o.is_ne()).unwrap_or(Ordering::Equal)
}

/// The report as CSV (RFC 4180, CRLF line ends): a header line, then one line per row; a report
/// with no groups has one line, its totals.
pub fn to_csv(report: &Report) -> String {
    let groups = &report.group_by;
    let mut header: Vec<&str> = groups.iter().map(|g| g.csv_column()).collect();
    header.extend(["requests", "runs", "tokensIn", "tokensOut", "costUsd"]);
    let mut out = header.join(",") + "\r\n";
    if groups.is_empty() {
        out.push_str(&csv_line(&[], report.totals));
    }
    for row in &report.rows {
        let keys: Vec<&str> = groups.iter().map(|g| g.value(row).unwrap_or_default()).collect();
        out.push_str(&csv_line(&keys, row.figures));
    }
    out
}

/// One CSV line: the group keys, then the figures.
fn csv_line(keys: &[&str], f: Figures) -> String {
    let mut fields: Vec<Cow<str>> = keys.iter().map(|key| csv_field(key)).collect();
    fields.extend([f.requests, f.runs, f.tokens_in, f.tokens_out].map(|n| Cow::Owned(n.to_string())));
    fields.push(Cow::Owned(f.cost_usd.to_string()));
    fields.join(",") + "\r\n"
}

/// A field quoted when it holds a comma, quote or line break, its quotes doubled.
fn csv_field(value: &str) -> Cow<'_, str> {
    if value.contains([',', '"', '\r', '\n']) {
        Cow::Owned(format!("\"{}\"", value.replace('"', "\"\"")))
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(from: &str, to: &str) -> TimeRange {
        TimeRange { from: from.parse().unwrap(), to: to.parse().unwrap() }
    }

    #[test]
    fn a_day_counts_when_any_of_it_is_in_the_range() {
        let (first, last) = days(&range("2025-03-01T10:00:00Z", "2025-03-03T00:00:00Z"));
        assert_eq!((day(first), day(last)), ("2025-03-01".into(), "2025-03-02".into()));
        let (first, last) = days(&range("2025-03-01T00:00:00Z", "2025-03-01T00:00:00Z"));
        assert_eq!((day(first), day(last)), ("2025-03-01".into(), "2025-03-01".into()));
    }

    #[test]
    fn csv_fields_with_commas_quotes_or_line_breaks_are_quoted() {
        assert_eq!(csv_field("local/echo"), "local/echo");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }

    #[test]
    fn a_report_without_groups_is_one_csv_line_of_totals() {
        let totals = Figures { requests: 3, runs: 2, tokens_in: 10, tokens_out: 20, cost_usd: 0.5 };
        let report = Report {
            range: range("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z"),
            first_day: "2025-03-01".parse().unwrap(),
            last_day: "2025-03-01".parse().unwrap(),
            group_by: Vec::new(),
            rows: Vec::new(),
            totals,
        };
        assert_eq!(to_csv(&report), "requests,runs,tokensIn,tokensOut,costUsd\r\n3,2,10,20,0.5\r\n");
    }

    #[test]
    fn group_names_are_read_as_the_graphql_enum_spells_them() {
        assert_eq!(UsageGroup::parse("API_KEY"), Some(UsageGroup::ApiKey));
        assert_eq!(UsageGroup::parse("model"), Some(UsageGroup::Model));
        assert_eq!(UsageGroup::parse("apikey"), None);
        assert!(check_groups(&[UsageGroup::Team, UsageGroup::Day, UsageGroup::Team]).is_err());
    }
}
