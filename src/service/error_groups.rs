//! Error tracking: failures grouped by fingerprint (team, agent, code and the message with its
//! digits blanked), listed by when they were last seen, and resolved by hand. A resolved group
//! reopens when it fails again (the run writer clears `resolved_at`).

use chrono::{DateTime, SubsecRound, Utc};
use entity::error_groups;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect,
    Set,
};
use serde_json::json;

use super::{
    analytics,
    audit::{self, Entry, actions},
    page::{Page, PageRequest},
    range::TimeRange,
};
use crate::{
    auth::guard,
    db,
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
        Some(team_id) => Some(vec![guard::team(db, caller, team_id, TeamRole::Viewer).await?.team.id]),
        None => analytics::visible_teams(db, caller, Scope::TeamsRead).await?,
    };
    let mut query = error_groups::Entity::find();
    if let Some(teams) = teams {
        query = query.filter(error_groups::Column::TeamId.is_in(teams));
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

/// Marks a group resolved (operators and up on its team); resolving it again changes nothing.
pub async fn resolve(
    db: &DatabaseConnection,
    caller: &Caller,
    fingerprint: &str,
) -> Result<error_groups::Model, AppError> {
    let not_found = || AppError::NotFound("No such error group.".into());
    let txn = db::begin_write(db).await?;
    let group =
        error_groups::Entity::find_by_id(fingerprint).lock_exclusive().one(&txn).await?.ok_or_else(not_found)?;
    guard::team(&txn, caller, &group.team_id, TeamRole::Operator).await.map_err(|e| match e {
        AppError::NotFound(_) => not_found(),
        other => other,
    })?;
    if group.resolved_at.is_some() {
        return Ok(group);
    }
    let now = Utc::now().trunc_subsecs(6);
    let mut row: error_groups::ActiveModel = group.into();
    row.resolved_at = Set(Some(now));
    let group = row.update(&txn).await?;
    let entry = Entry::new(actions::ERROR_GROUP_RESOLVE, "error_group", group.fingerprint.clone())
        .team(group.team_id.clone())
        .changes(json!({"resolvedAt": now, "count": group.count}));
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    Ok(group)
}
