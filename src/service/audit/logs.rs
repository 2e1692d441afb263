//! Reading the audit log: `list` pages it newest first within what the caller may read, and
//! `follow` streams a team's new rows once their transactions have committed.

use std::time::Duration;

use entity::{audit_head, audit_logs, team_members};
use futures_util::{Stream, StreamExt, stream};
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, sea_query::Query,
};
use tokio::sync::watch;
use tokio_stream::wrappers::{IntervalStream, WatchStream};

use crate::{
    auth::guard,
    domain::{Caller, Principal, TeamRole},
    error::{AppError, Problem},
    service::{
        page::{Page, PageRequest},
        range::TimeRange,
    },
};

/// How often a follower looks for new rows when nothing woke it.
const POLL: Duration = Duration::from_secs(1);
/// Rows a follower reads at a time.
const BATCH: u64 = 100;

/// Whether the audited action went through.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
pub enum AuditResult {
    /// The change was made.
    Allowed,
    /// The change was refused (`reason` says why); nothing changed.
    Denied,
}

impl AuditResult {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Denied => "denied",
        }
    }

    pub fn parse(value: &str) -> Self {
        if value == "denied" { Self::Denied } else { Self::Allowed }
    }
}

/// Which rows to list: each field given narrows the list.
pub struct LogFilter {
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub team_id: Option<String>,
    pub result: Option<AuditResult>,
    pub range: TimeRange,
}

/// The rows a caller may read.
enum Visible {
    All,
    Team(String),
    /// The rows of every team this user owns.
    OwnedBy(String),
}

impl Visible {
    fn condition(self) -> Condition {
        let team = audit_logs::Column::TeamId;
        match self {
            Self::All => Condition::all(),
            Self::Team(id) => Condition::all().add(team.eq(id)),
            Self::OwnedBy(user) => {
                let owned = Query::select()
                    .column(team_members::Column::TeamId)
                    .from(team_members::Entity)
                    .and_where(team_members::Column::UserId.eq(user))
                    .and_where(team_members::Column::Role.eq(TeamRole::Owner))
                    .to_owned();
                Condition::all().add(team.in_subquery(owned))
            }
        }
    }
}

/// Admins read every row (of any team id, even a deleted team's); a user reads the rows of the
/// teams they own; an API key reads one team's rows, as the guard allows its owner.
async fn visible(db: &DatabaseConnection, caller: &Caller, team_id: Option<&str>) -> Result<Visible, AppError> {
    if matches!(caller.principal, Principal::Anonymous) {
        return Err(AppError::Unauthenticated("Sign in to read the audit log.".into()));
    }
    let admin = matches!(caller.principal, Principal::User(_)) && guard::sees_all(caller);
    match (team_id, admin) {
        (Some(id), true) => Ok(Visible::Team(id.to_string())),
        (Some(id), false) => guard::team(db, caller, id, TeamRole::Owner).await.map(|_| Visible::Team(id.to_string())),
        (None, true) => Ok(Visible::All),
        (None, false) => guard::account(caller).map(|user| Visible::OwnedBy(user.id.clone())),
    }
}

/// One page of the rows `filter` selects among those the caller may read, newest first.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    filter: LogFilter,
    page: &PageRequest,
) -> Result<Page<audit_logs::Model>, AppError> {
    let visible = visible(db, caller, filter.team_id.as_deref()).await?;
    let after = page.after.as_deref().map(seq_cursor).transpose()?;
    let narrow = Condition::all()
        .add_option(filter.actor.map(|id| audit_logs::Column::ActorId.eq(id)))
        .add_option(filter.action.map(|action| audit_logs::Column::Action.eq(action)))
        .add_option(filter.resource_type.map(|kind| audit_logs::Column::ResourceType.eq(kind)))
        .add_option(filter.resource_id.map(|id| audit_logs::Column::ResourceId.eq(id)))
        .add_option(filter.result.map(|result| audit_logs::Column::Result.eq(result.as_str())))
        .add_option(after.map(|seq| audit_logs::Column::Seq.lt(seq)))
        .add(audit_logs::Column::Ts.gte(filter.range.from))
        .add(audit_logs::Column::Ts.lt(filter.range.to));
    let rows = audit_logs::Entity::find()
        .filter(visible.condition())
        .filter(narrow)
        .order_by_desc(audit_logs::Column::Seq)
        .limit(page.first + 1)
        .all(db)
        .await?;
    Ok(page.page(rows))
}

/// A row's cursor key.
pub fn cursor(row: &audit_logs::Model) -> String {
    row.seq.to_string()
}

fn seq_cursor(key: &str) -> Result<i64, AppError> {
    key.parse().map_err(|_| AppError::BadUserInput {
        message: "`after` is not a cursor of the audit log".into(),
        problems: vec![Problem::new("after", "unknown cursor")],
    })
}

/// Whether the caller may follow a team's log: its owners and admins.
pub async fn may_follow(db: &DatabaseConnection, caller: &Caller, team_id: &str) -> Result<(), AppError> {
    guard::team(db, caller, team_id, TeamRole::Owner).await.map(drop)
}

/// A team's rows appended from now on, each once its transaction has committed, in `seq` order;
/// for the team's owners (and admins), checked once here. `wake` hints that a transaction that
/// may have appended has ended; without it the log is read every `POLL`.
pub async fn follow(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    wake: watch::Receiver<()>,
) -> Result<impl Stream<Item = audit_logs::Model> + use<>, AppError> {
    may_follow(db, caller, team_id).await?;
    let head = audit_head::Entity::find_by_id(1).one(db).await?.ok_or_else(|| AppError::internal("no audit_head"))?;
    let mut ticks = tokio::time::interval(POLL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let wakes = stream::select(WatchStream::from_changes(wake), IntervalStream::new(ticks).map(|_| ()));
    let follower =
        Follower { db: db.clone(), team_id: team_id.to_string(), after: head.seq, more: false, wakes: wakes.boxed() };
    Ok(stream::unfold(follower, |mut follower| async move {
        let rows = follower.next_rows().await?;
        Some((stream::iter(rows), follower))
    })
    .flatten())
}

/// Where a follower is: the last row it delivered. Appends hold `audit_head` until they commit,
/// so rows commit in `seq` order and reading "after the last delivered" never skips one.
struct Follower {
    db: DatabaseConnection,
    team_id: String,
    after: i64,
    /// The last read was a full batch: read again without waiting.
    more: bool,
    wakes: stream::BoxStream<'static, ()>,
}

impl Follower {
    async fn next_rows(&mut self) -> Option<Vec<audit_logs::Model>> {
        if !self.more {
            self.wakes.next().await?;
        }
        let rows = audit_logs::Entity::find()
            .filter(audit_logs::Column::TeamId.eq(&self.team_id))
            .filter(audit_logs::Column::Seq.gt(self.after))
            .order_by_asc(audit_logs::Column::Seq)
            .limit(BATCH)
            .all(&self.db)
            .await
            .unwrap_or_else(|err| {
                tracing::warn!(error = %err, "cannot read the audit log for a follower; trying again");
                Vec::new()
            });
        self.more = rows.len() as u64 == BATCH;
        if let Some(last) = rows.last() {
            self.after = last.seq;
        }
        Some(rows)
    }
}
