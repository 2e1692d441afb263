//! Usage reports: `usage_daily` summed over the UTC days of a range and grouped by any of user,
//! team, API key, model and day, over the rows the caller may see; the same report as CSV.

use std::{borrow::Cow, cmp::Ordering, collections::HashMap, ops::Add};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use entity::{api_keys, team_members, teams, usage_daily};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QuerySelect,
    sea_query::{Expr, Query, SelectStatement, SimpleExpr},
};

use super::range::TimeRange;
use crate::{
    auth::guard,
    domain::{Caller, Scope, TeamRole},
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

    /// The CSV columns: the key, named as the GraphQL field of a row, and for a team or an API
    /// key its name next to it.
    fn csv_columns(self) -> &'static [&'static str] {
        match self {
            Self::User => &["userId"],
            Self::Team => &["teamId", "teamName"],
            Self::ApiKey => &["apiKeyId", "apiKeyName"],
            Self::Model => &["model"],
            Self::Day => &["day"],
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
    Ok(Visibility { user: (!guard::sees_all(caller)).then(|| user.id.clone()), team: team.map(str::to_string) })
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
        .and_where(team_members::Column::Role.eq(TeamRole::Owner))
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

/// The names of the teams and API keys a report's rows name, by id (a deleted team has none).
#[derive(Debug, Default)]
pub struct Names {
    pub teams: HashMap<String, String>,
    pub api_keys: HashMap<String, String>,
}

/// Most ids one `IN (…)` list holds: Cloudflare D1 binds at most 100 values per statement.
const IDS_PER_QUERY: usize = 100;

/// The names of the teams and API keys in the report's rows.
pub async fn names(db: &DatabaseConnection, report: &Report) -> Result<Names, AppError> {
    let ids = |group: UsageGroup| -> Vec<String> {
        let mut ids: Vec<String> = report.rows.iter().filter_map(|r| group.value(r)).map(str::to_string).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    };
    let mut names = Names::default();
    for chunk in ids(UsageGroup::Team).chunks(IDS_PER_QUERY) {
        let rows = teams::Entity::find()
            .select_only()
            .columns([teams::Column::Id, teams::Column::Name])
            .filter(teams::Column::Id.is_in(chunk.iter().cloned()))
            .into_tuple::<(String, String)>()
            .all(db)
            .await?;
        names.teams.extend(rows);
    }
    for chunk in ids(UsageGroup::ApiKey).chunks(IDS_PER_QUERY) {
        let rows = api_keys::Entity::find()
            .select_only()
            .columns([api_keys::Column::Id, api_keys::Column::Name])
            .filter(api_keys::Column::Id.is_in(chunk.iter().cloned()))
            .into_tuple::<(String, String)>()
            .all(db)
            .await?;
        names.api_keys.extend(rows);
    }
    Ok(names)
}

/// The report as CSV (RFC 4180, CRLF line ends): a header line, then one line per row; a report
/// with no groups has one line, its totals. Grouping by team or API key adds the name beside
/// the id. A text cell a spreadsheet would read as a formula is neutralised (`spreadsheet_safe`).
pub fn to_csv(report: &Report, names: &Names) -> Result<String, AppError> {
    let mut out = csv::WriterBuilder::new().terminator(csv::Terminator::CRLF).from_writer(Vec::new());
    let mut header: Vec<&str> = Vec::new();
    for group in &report.group_by {
        header.extend(group.csv_columns());
    }
    header.extend(["requests", "runs", "tokensIn", "tokensOut", "costUsd"]);
    out.write_record(&header).map_err(AppError::internal)?;
    if report.group_by.is_empty() {
        out.write_record(figures(report.totals)).map_err(AppError::internal)?;
    }
    for row in &report.rows {
        let mut record: Vec<Cow<str>> = Vec::new();
        for group in &report.group_by {
            let key = group.value(row).unwrap_or_default();
            record.push(spreadsheet_safe(key));
            let name = match group {
                UsageGroup::Team => Some(names.teams.get(key)),
                UsageGroup::ApiKey => Some(names.api_keys.get(key)),
                _ => None,
            };
            if let Some(name) = name {
                record.push(spreadsheet_safe(name.map_or("", String::as_str)));
            }
        }
        record.extend(figures(row.figures).map(Cow::Owned));
        out.write_record(record.iter().map(|c| c.as_bytes())).map_err(AppError::internal)?;
    }
    let bytes = out.into_inner().map_err(AppError::internal)?;
    String::from_utf8(bytes).map_err(AppError::internal)
}

/// Requests, runs, tokens in and out, and cost, as CSV cells.
fn figures(f: Figures) -> [String; 5] {
    [
        f.requests.to_string(),
        f.runs.to_string(),
        f.tokens_in.to_string(),
        f.tokens_out.to_string(),
        f.cost_usd.to_string(),
    ]
}

/// A text cell that a spreadsheet would run as a formula (it starts with `=`, `+`, `-`, `@`, a
/// tab or a carriage return) gets a `'` in front, as OWASP's CSV injection guidance says.
fn spreadsheet_safe(value: &str) -> Cow<'_, str> {
    if value.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        Cow::Owned(format!("'{value}"))
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
    fn cells_a_spreadsheet_would_run_as_formulas_start_with_a_quote() {
        for formula in ["=1+1", "+1", "-1", "@SUM(A1)", "\tx", "\rx"] {
            assert_eq!(spreadsheet_safe(formula), format!("'{formula}"));
        }
        assert_eq!(spreadsheet_safe("local/echo"), "local/echo");
        assert_eq!(spreadsheet_safe("a=b"), "a=b");
        assert_eq!(spreadsheet_safe(""), "");
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
        assert_eq!(
            to_csv(&report, &Names::default()).unwrap(),
            "requests,runs,tokensIn,tokensOut,costUsd\r\n3,2,10,20,0.5\r\n"
        );
    }

    #[test]
    fn team_and_key_names_stand_beside_their_ids_and_formulas_are_neutralised() {
        let row = UsageRow {
            user_id: None,
            team_id: Some("team_1".into()),
            api_key_id: Some("key_1".into()),
            model: None,
            day: None,
            figures: Figures { requests: 1, runs: 0, tokens_in: 0, tokens_out: 0, cost_usd: 0.0 },
        };
        let report = Report {
            range: range("2025-03-01T00:00:00Z", "2025-03-02T00:00:00Z"),
            first_day: "2025-03-01".parse().unwrap(),
            last_day: "2025-03-01".parse().unwrap(),
            group_by: vec![UsageGroup::Team, UsageGroup::ApiKey],
            rows: vec![row],
            totals: Figures::default(),
        };
        let mut names = Names::default();
        names.teams.insert("team_1".into(), "Support, \"EU\"".into());
        names.api_keys.insert("key_1".into(), "=HYPERLINK(\"http://x\")".into());
        assert_eq!(
            to_csv(&report, &names).unwrap(),
            "teamId,teamName,apiKeyId,apiKeyName,requests,runs,tokensIn,tokensOut,costUsd\r\n\
             team_1,\"Support, \"\"EU\"\"\",key_1,\"'=HYPERLINK(\"\"http://x\"\")\",1,0,0,0,0\r\n"
        );
    }

    #[test]
    fn group_names_are_read_as_the_graphql_enum_spells_them() {
        assert_eq!(UsageGroup::parse("API_KEY"), Some(UsageGroup::ApiKey));
        assert_eq!(UsageGroup::parse("model"), Some(UsageGroup::Model));
        assert_eq!(UsageGroup::parse("apikey"), None);
        assert!(check_groups(&[UsageGroup::Team, UsageGroup::Day, UsageGroup::Team]).is_err());
    }
}
