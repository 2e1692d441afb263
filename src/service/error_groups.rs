//! Error tracking: failures grouped by fingerprint (team, agent, code and the message with its
//! digits blanked), listed by when they were last seen, and resolved by hand. A resolved group
//! reopens when it fails again (the run writer clears `resolved_at`).

use chrono::{DateTime, SubsecRound, Utc};
use entity::error_groups;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    sea_query::Expr,
};
use serde_json::json;

use super::{
    analytics::{self, Teams},
    audit::{AuditChain, Audited, Decision, Entry, actions},
    page::{Page, PageRequest},
    range::TimeRange,
};
use crate::{
    auth::guard,
    db::batch::{Batch, Expect, OnGuard},
    domain::{Caller, Scope, TeamRole},
    error::AppError,
};

/// Error groups of one team, or (none) of every team the caller is a member of (admins: all),
/// last seen within `range` when one is given; most recently seen first.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: Option<&str>,
    range: Option<TimeRange>,
    page: &PageRequest,
) -> Result<Page<error_groups::Model>, AppError> {
    let teams = match team_id {
        Some(team_id) => Teams::These(vec![guard::team(db, caller, team_id, TeamRole::Viewer).await?.team.id]),
        None => analytics::visible_teams(caller, Scope::TeamsRead)?,
    };
    let mut query = error_groups::Entity::find();
    if let Some(teams) = teams.condition(error_groups::Column::TeamId) {
        query = query.filter(teams);
    }
    if let Some(range) = range {
        query = query
            .filter(error_groups::Column::LastSeen.gte(range.from))
            .filter(error_groups::Column::LastSeen.lt(range.to));
    }
    if let Some(after) = &page.after {
        let (seen, fingerprint) = after.split_once('|').unwrap_or_default();
        let seen = DateTime::parse_from_rfc3339(seen).map(|t| t.with_timezone(&Utc)).unwrap_or_default();
        query = query.filter(
            Condition::any().add(error_groups::Column::LastSeen.lt(seen)).add(
                Condition::all()
                    .add(error_groups::Column::LastSeen.eq(seen))
                    .add(error_groups::Column::Fingerprint.lt(fingerprint)),
            ),
        );
    }
    let rows = query
        .order_by_desc(error_groups::Column::LastSeen)
        .order_by_desc(error_groups::Column::Fingerprint)
        .limit(page.first + 1)
        .all(db)
        .await?;
    Ok(page.page(rows))
}

/// The keyset cursor of an error group: when it was last seen, then its fingerprint.
pub fn cursor(group: &error_groups::Model) -> String {
    format!("{}|{}", group.last_seen.to_rfc3339(), group.fingerprint)
}

/// The guard of resolving a group: it was resolved meanwhile (the next read answers it).
const RESOLVED: &str = "resolved";

/// Marks a group resolved (operators and up on its team); resolving it again changes nothing.
pub async fn resolve(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caller: &Caller,
    fingerprint: &str,
) -> Result<error_groups::Model, AppError> {
    let not_found = || AppError::NotFound("No such error group.".into());
    let (group, _) = audit
        .decide(
            caller,
            || async {
                let mut group = error_groups::Entity::find_by_id(fingerprint).one(db).await?.ok_or_else(not_found)?;
                guard::team(db, caller, &group.team_id, TeamRole::Operator).await.map_err(|e| match e {
                    AppError::NotFound(_) => not_found(),
                    other => other,
                })?;
                if group.resolved_at.is_some() {
                    return Ok(Decision::Unchanged(group));
                }
                let now = Utc::now().trunc_subsecs(6);
                let resolve = error_groups::Entity::update_many()
                    .col_expr(error_groups::Column::ResolvedAt, Expr::value(now))
                    .filter(error_groups::Column::Fingerprint.eq(fingerprint))
                    .filter(error_groups::Column::ResolvedAt.is_null())
                    .into_query();
                let batch = Batch::new(audit.writer().backend()).write(&resolve).guard(Expect::One, RESOLVED);
                group.resolved_at = Some(now);
                let entry = Entry::new(actions::ERROR_GROUP_RESOLVE, "error_group", group.fingerprint.clone())
                    .team(group.team_id.clone())
                    .changes(json!({"resolvedAt": now, "count": group.count}));
                Ok(Decision::Write(Audited { batch, entry, answer: group }))
            },
            |_, _| OnGuard::Retry,
        )
        .await?;
    Ok(group)
}
