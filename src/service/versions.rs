//! Team versions: every spec change appends an immutable `team_versions` row; history, one
//! version, the diff of two, and rollback (a new version equal to an old one).

use chrono::{SubsecRound, Utc};
use entity::{team_versions, teams};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
    Set,
};
use serde_json::{Value, json};

use super::{
    audit::{AuditChain, Audited, Entry, actions},
    name,
    page::{Page, PageRequest},
    spec_diff,
};
use crate::{
    auth::guard,
    config::ProviderSettings,
    db::batch::{Batch, Expect, OnGuard},
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
    orchestrator::spec,
};

/// The canonical form of a valid spec, or every problem with it. Agent and rule names must also
/// be free of hidden characters (`name::hidden_character`); that is checked here, where specs
/// are written, so that a spec stored before the rule still runs.
pub fn validate_spec(value: &Value, providers: &ProviderSettings) -> Result<Value, Vec<Problem>> {
    let spec = spec::parse(value, &|provider| providers.known(provider))?;
    let agents = spec.agents.iter().enumerate().map(|(i, a)| (format!("spec.agents[{i}].name"), &a.name));
    let rules = spec.routing.rules.iter().enumerate().map(|(i, r)| (format!("spec.routing.rules[{i}].name"), &r.name));
    let problems: Vec<Problem> = agents
        .chain(rules)
        .filter_map(|(path, name)| name::hidden_character(name).map(|why| Problem::new(path, why)))
        .collect();
    if problems.is_empty() { Ok(spec.to_json()) } else { Err(problems) }
}

/// The row of version `version` of a team, to insert in a batch.
pub fn row(
    team_id: &str,
    version: i32,
    spec: Value,
    message: Option<String>,
    author_id: &str,
) -> team_versions::ActiveModel {
    team_versions::ActiveModel {
        team_id: Set(team_id.to_string()),
        version: Set(version),
        spec: Set(spec),
        message: Set(message),
        author_id: Set(author_id.to_string()),
        created_at: Set(Utc::now().trunc_subsecs(6)),
    }
}

/// A team's versions, newest first.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    page: &PageRequest,
) -> Result<Page<team_versions::Model>, AppError> {
    guard::team(db, caller, team_id, TeamRole::Viewer).await?;
    let mut query = team_versions::Entity::find().filter(team_versions::Column::TeamId.eq(team_id));
    if let Some(after) = &page.after {
        let after: i32 = after.parse().map_err(|_| AppError::bad_input("`after` is not a cursor this API returned"))?;
        query = query.filter(team_versions::Column::Version.lt(after));
    }
    let rows = query.order_by_desc(team_versions::Column::Version).limit(page.first + 1).all(db).await?;
    Ok(page.page(rows))
}

/// Version `version` of a team the caller may see, if it exists.
pub async fn at<C: ConnectionTrait>(
    conn: &C,
    team_id: &str,
    version: i32,
) -> Result<Option<team_versions::Model>, AppError> {
    Ok(team_versions::Entity::find_by_id((team_id.to_string(), version)).one(conn).await?)
}

async fn existing<C: ConnectionTrait>(conn: &C, team_id: &str, version: i32) -> Result<team_versions::Model, AppError> {
    at(conn, team_id, version).await?.ok_or_else(|| AppError::NotFound(format!("The team has no version {version}.")))
}

/// What changed from one version to another.
pub struct Diff {
    pub operations: Vec<Value>,
    pub summary: Vec<String>,
}

pub async fn diff(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    from: i32,
    to: i32,
) -> Result<Diff, AppError> {
    guard::team(db, caller, team_id, TeamRole::Viewer).await?;
    let (old, new) = (existing(db, team_id, from).await?, existing(db, team_id, to).await?);
    let (operations, summary) = spec_diff::diff(&old.spec, &new.spec);
    Ok(Diff { operations, summary })
}

/// Makes a new version equal to `version` (history is never rewritten).
pub async fn rollback(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caller: &Caller,
    team_id: &str,
    version: i32,
    message: Option<String>,
) -> Result<teams::Model, AppError> {
    let author = caller.principal.user_id().unwrap_or_default().to_string();
    let message = message.or_else(|| Some(format!("Rollback to version {version}")));
    let (team, _) = audit
        .write(
            caller,
            || async {
                let mut team = guard::team(db, caller, team_id, TeamRole::Editor).await?.team;
                let current = team.version;
                if version == current {
                    return Err(AppError::BadUserInput {
                        message: format!("The team is at version {current} already."),
                        problems: vec![Problem::new("version", "is the current version")],
                    });
                }
                let old = existing(db, team_id, version).await?;
                let next = current + 1;
                (team.spec, team.version, team.updated_at) = (old.spec, next, Utc::now().trunc_subsecs(6));
                let active = teams::ActiveModel {
                    spec: Set(team.spec.clone()),
                    version: Set(next),
                    updated_at: Set(team.updated_at),
                    ..Default::default()
                };
                let update = teams::Entity::update_many()
                    .set(active)
                    .filter(teams::Column::Id.eq(team_id))
                    .filter(teams::Column::Version.eq(current))
                    .into_query();
                let new_version = row(team_id, next, team.spec.clone(), message.clone(), &author);
                let batch = Batch::new(audit.writer().backend())
                    .write(&update)
                    .guard(Expect::One, "team_version")
                    .write(&team_versions::Entity::insert(new_version).into_query());
                let changes = json!({"version": {"from": current, "to": next}, "restored": version});
                let entry =
                    Entry::new(actions::TEAM_ROLLBACK, "team", team_id.to_string()).team(team_id).changes(changes);
                Ok(Audited { batch, entry, answer: team })
            },
            // Another change landed first: read the team again and restore on top of it.
            |_, _| OnGuard::Retry,
        )
        .await?;
    Ok(team)
}
