//! Teams and their members. Access is decided by `auth::guard`; every change reads, decides and
//! commits one batch with its audit row (docs/write-path.md).

use chrono::{SubsecRound, Utc};
use entity::{states::Visibility, team_members, team_versions, teams, users};
use sea_orm::{
    ColumnTrait, DatabaseConnection, DbBackend, EntityTrait, JoinType, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, RelationTrait, Set,
    sea_query::{InsertStatement, OnConflict, SelectStatement, UpdateStatement},
};
use serde_json::{Value, json};

use super::{
    audit::{AuditChain, Audited, Entry, actions},
    page::{Page, PageRequest},
    versions,
};
use crate::{
    auth::guard::{self, acting_user},
    cache::Caches,
    config::ProviderSettings,
    db::batch::{Batch, Expect, OnGuard},
    domain::{Caller, Invalidation, Principal, Scope, TeamRole, UserPrincipal},
    error::{AppError, Problem},
    service::name::Name,
};

/// The spec a team starts with when none is given: one agent answering with the offline model.
pub fn default_spec() -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "assistant", "model": "local/echo", "systemPrompt": "You are a helpful assistant."}],
        "routing": {"rules": [], "default": "assistant"}
    })
}

pub struct NewTeam {
    pub name: String,
    pub description: Option<String>,
    pub visibility: Option<Visibility>,
    pub spec: Option<Value>,
}

pub struct TeamChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<Visibility>,
    /// A new TeamSpec: a new version when it differs from the current one.
    pub spec: Option<Value>,
    /// Why, kept with the version.
    pub message: Option<String>,
    /// The version the caller last saw; another one means someone changed the team since.
    pub expected_version: Option<i32>,
}

fn check_name(name: &str, problems: &mut Vec<Problem>) {
    Name::check("name", name, 100, problems);
}

fn check_description(description: Option<&str>, problems: &mut Vec<Problem>) {
    if description.is_some_and(|d| d.chars().count() > 2000) {
        problems.push(Problem::new("description", "must be at most 2000 characters"));
    }
}

fn refuse(problems: Vec<Problem>) -> Result<(), AppError> {
    AppError::refuse(problems)
}

/// `Support Triage!` → `support-triage`.
pub fn slugify(name: &str) -> String {
    let mut slug = String::new();
    for c in name.trim().to_lowercase().chars() {
        if c.is_ascii_alphanumeric() {
            slug.push(c);
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-').chars().take(60).collect::<String>();
    if slug.is_empty() { "team".into() } else { slug }
}

pub async fn create(
    db: &DatabaseConnection,
    audit: &AuditChain,
    providers: &ProviderSettings,
    caller: &Caller,
    new: NewTeam,
) -> Result<teams::Model, AppError> {
    create_as(db, audit, providers, caller, new, actions::TEAM_CREATE).await
}

/// Creates a team, audited as `action` (`team.create`, `team.import`).
#[tracing::instrument(skip_all)]
pub async fn create_as(
    db: &DatabaseConnection,
    audit: &AuditChain,
    providers: &ProviderSettings,
    caller: &Caller,
    new: NewTeam,
    action: &'static str,
) -> Result<teams::Model, AppError> {
    let me = acting_user(caller, Scope::TeamsWrite)?;
    let spec = check_new(&new, providers)?;
    let (team, _) = audit
        .write(
            caller,
            || async {
                let Inserted { team, batch } = plan_insert(db, audit.writer().backend(), me, &new, &spec).await?;
                let changes = json!({"name": team.name, "slug": team.slug,
                    "visibility": team.visibility.to_string(), "version": 1});
                let entry = Entry::new(action, "team", team.id.clone()).team(&team.id).changes(changes);
                Ok(Audited { batch, entry, answer: team })
            },
            // `slug_taken`: a team of that slug came first; the next attempt reads it and takes
            // the slug with a suffix.
            |_, _| OnGuard::Retry,
        )
        .await?;
    Ok(team)
}

/// Every problem with a new team, or its spec in canonical form (the default spec when none is
/// given).
pub fn check_new(new: &NewTeam, providers: &ProviderSettings) -> Result<Value, AppError> {
    let mut problems = Vec::new();
    check_name(&new.name, &mut problems);
    check_description(new.description.as_deref(), &mut problems);
    let spec = match versions::validate_spec(&new.spec.clone().unwrap_or_else(default_spec), providers) {
        Ok(spec) => Some(spec),
        Err(spec_problems) => {
            problems.extend(spec_problems);
            None
        }
    };
    refuse(problems)?;
    Ok(spec.unwrap_or_default())
}

/// A new team as it will be stored, and the batch that inserts it.
pub struct Inserted {
    pub team: teams::Model,
    pub batch: Batch,
}

/// The guard of a new team's slug: another team holds it.
pub const SLUG_TAKEN: &str = "slug_taken";

/// Plans a checked team owned by `owner`, with its owner membership and first version (the
/// audit row is the caller's: it says why the team was made). The team takes its name's slug
/// when no team holds it (read now), else that slug followed by the end of its id. The insert
/// does nothing on a taken slug and is guarded [`SLUG_TAKEN`], so a team of the same slug
/// committed after the read (which no read can foresee) fails the batch: decide again.
pub async fn plan_insert(
    db: &DatabaseConnection,
    backend: DbBackend,
    owner: &UserPrincipal,
    new: &NewTeam,
    spec: &Value,
) -> Result<Inserted, AppError> {
    let id = format!("team_{}", uuid::Uuid::now_v7().simple());
    // As precise as the databases store it, so the team answered is the team stored.
    let now = Utc::now().trunc_subsecs(6);
    let mut slug = slugify(&new.name);
    if teams::Entity::find().filter(teams::Column::Slug.eq(&slug)).count(db).await? > 0 {
        slug = format!("{slug}-{}", &id[id.len() - 6..]);
    }
    let team = teams::Model {
        id: id.clone(),
        owner_id: owner.id.clone(),
        name: new.name.trim().to_string(),
        slug,
        description: new.description.clone(),
        visibility: new.visibility.unwrap_or(Visibility::Private),
        spec: spec.clone(),
        version: 1,
        created_at: now,
        updated_at: now,
        archived_at: None,
    };
    let free_slug = OnConflict::column(teams::Column::Slug).do_nothing().to_owned();
    let insert_team = teams::Entity::insert(teams::ActiveModel::from(team.clone())).on_conflict(free_slug).into_query();
    let owner_row = team_members::ActiveModel {
        team_id: Set(id.clone()),
        user_id: Set(owner.id.clone()),
        role: Set(TeamRole::Owner),
        created_at: Set(now),
    };
    let first = versions::row(&id, 1, spec.clone(), Some("Created".into()), &owner.id);
    let batch = Batch::new(backend)
        .write(&insert_team)
        .guard(Expect::One, SLUG_TAKEN)
        .write(&team_members::Entity::insert(owner_row).into_query())
        .write(&team_versions::Entity::insert(first).into_query());
    Ok(Inserted { team, batch })
}

pub async fn get(db: &DatabaseConnection, caller: &Caller, id: &str) -> Result<teams::Model, AppError> {
    Ok(guard::team(db, caller, id, TeamRole::Viewer).await?.team)
}

/// The caller's teams (every team for an admin), newest first by id.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    page: &PageRequest,
) -> Result<Page<teams::Model>, AppError> {
    let mut query = teams::Entity::find();
    // A key restricted to one team lists that team only.
    let me = match &caller.principal {
        Principal::ApiKey(key) if key.team_id.is_some() => {
            guard::team(db, caller, key.team_id.as_deref().unwrap_or_default(), TeamRole::Viewer).await?;
            query = query.filter(teams::Column::Id.eq(key.team_id.clone()));
            &key.owner
        }
        _ => acting_user(caller, Scope::TeamsRead)?,
    };
    if !guard::sees_all(caller) {
        query = query
            .join(JoinType::InnerJoin, teams::Relation::Members.def())
            .filter(team_members::Column::UserId.eq(&me.id));
    }
    if let Some(after) = &page.after {
        query = query.filter(teams::Column::Id.lt(after.as_str()));
    }
    let rows = query.order_by_desc(teams::Column::Id).limit(page.first + 1).all(db).await?;
    Ok(page.page(rows))
}

/// Changes a team; making it private has the open subscriptions on it checked again.
pub async fn update(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    providers: &ProviderSettings,
    caller: &Caller,
    id: &str,
    changes: TeamChanges,
) -> Result<teams::Model, AppError> {
    let mut problems = Vec::new();
    if let Some(name) = &changes.name {
        check_name(name, &mut problems);
    }
    check_description(changes.description.as_deref(), &mut problems);
    if changes.message.as_ref().is_some_and(|m| m.chars().count() > 500) {
        problems.push(Problem::new("message", "must be at most 500 characters"));
    }
    let spec = match changes.spec.as_ref().map(|spec| versions::validate_spec(spec, providers)) {
        Some(Ok(spec)) => Some(spec),
        Some(Err(spec_problems)) => {
            problems.extend(spec_problems);
            None
        }
        None => None,
    };
    let ((team, made_private), _) = audit
        .write(
            caller,
            || async {
                let access = guard::team(db, caller, id, TeamRole::Editor).await?;
                refuse(problems.clone())?;
                let team = access.team;
                if let Some(expected) = changes.expected_version
                    && expected != team.version
                {
                    return Err(AppError::Conflict(format!(
                        "The team is at version {}, not {expected}: reload it and apply your change again.",
                        team.version
                    )));
                }
                plan_update(caller, team, spec.as_ref(), &changes, audit.writer().backend())
            },
            // Another change landed first: read the team again (an `expectedVersion` that no
            // longer matches is then answered with the version the team is at).
            |_, _| OnGuard::Retry,
        )
        .await?;
    if made_private {
        caches.invalidate(Invalidation::TeamAccessChanged(id.to_string())).await;
    }
    Ok(team)
}

/// The batch that applies `changes` to `team` as read: only the fields changed, guarded on the
/// version read, and the new version's row when the spec changed. Answers the team as it will
/// be, and whether it became private.
fn plan_update(
    caller: &Caller,
    team: teams::Model,
    spec: Option<&Value>,
    changes: &TeamChanges,
    backend: DbBackend,
) -> Result<Audited<(teams::Model, bool)>, AppError> {
    let id = team.id.clone();
    let current = team.version;
    let mut changed = serde_json::Map::new();
    let made_private = changes.visibility == Some(Visibility::Private) && team.visibility != Visibility::Private;
    let mut after = team;
    let mut active = teams::ActiveModel { id: Set(id.clone()), ..Default::default() };
    let mut batch = Batch::new(backend);
    let mut version_row = None;
    if let Some(spec) = spec.filter(|spec| **spec != after.spec) {
        let author = caller.principal.user_id().unwrap_or_default().to_string();
        version_row = Some(versions::row(&id, current + 1, spec.clone(), changes.message.clone(), &author));
        changed.insert("version".into(), json!({"from": current, "to": current + 1}));
        after.spec = spec.clone();
        after.version = current + 1;
        active.spec = Set(after.spec.clone());
        active.version = Set(after.version);
    }
    if let Some(name) = &changes.name {
        changed.insert("name".into(), name.trim().into());
        after.name = name.trim().to_string();
        active.name = Set(after.name.clone());
    }
    if let Some(description) = &changes.description {
        changed.insert("description".into(), description.clone().into());
        after.description = Some(description.clone());
        active.description = Set(after.description.clone());
    }
    if let Some(visibility) = changes.visibility {
        changed.insert("visibility".into(), visibility.to_string().into());
        after.visibility = visibility;
        active.visibility = Set(visibility);
    }
    after.updated_at = Utc::now().trunc_subsecs(6);
    active.updated_at = Set(after.updated_at);
    let update = teams::Entity::update_many()
        .set(active)
        .filter(teams::Column::Id.eq(&id))
        .filter(teams::Column::Version.eq(current))
        .into_query();
    batch = batch.write(&update).guard(Expect::One, "team_version");
    if let Some(row) = version_row {
        batch = batch.write(&team_versions::Entity::insert(row).into_query());
    }
    let entry = Entry::new(actions::TEAM_UPDATE, "team", id.clone()).team(&id).changes(changed.into());
    Ok(Audited { batch, entry, answer: (after, made_private) })
}

/// The guard of a change to a team that must still be there (gone: the next read answers
/// NOT_FOUND).
pub const TEAM_GONE: &str = "team_gone";

pub async fn archive(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caller: &Caller,
    id: &str,
) -> Result<teams::Model, AppError> {
    let (team, _) = audit
        .write(
            caller,
            || async {
                let mut team = guard::team(db, caller, id, TeamRole::Owner).await?.team;
                let now = Utc::now().trunc_subsecs(6);
                let active =
                    teams::ActiveModel { archived_at: Set(Some(now)), updated_at: Set(now), ..Default::default() };
                let archive = teams::Entity::update_many().set(active).filter(teams::Column::Id.eq(id)).into_query();
                (team.archived_at, team.updated_at) = (Some(now), now);
                let batch = Batch::new(audit.writer().backend()).write(&archive).guard(Expect::One, TEAM_GONE);
                let entry = Entry::new(actions::TEAM_ARCHIVE, "team", id.to_string()).team(id);
                Ok(Audited { batch, entry, answer: team })
            },
            |_, _| OnGuard::Retry,
        )
        .await?;
    Ok(team)
}

/// Deletes the team and its memberships, ending every open subscription on it; returns what it
/// was.
pub async fn delete(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    caller: &Caller,
    id: &str,
) -> Result<teams::Model, AppError> {
    let (team, _) = audit
        .write(
            caller,
            || async {
                let team = guard::team(db, caller, id, TeamRole::Owner).await?.team;
                let members = team_members::Entity::delete_many().filter(team_members::Column::TeamId.eq(id));
                let batch = Batch::new(audit.writer().backend())
                    .write(&members.into_query())
                    .write(&teams::Entity::delete_by_id(id).into_query())
                    .guard(Expect::One, TEAM_GONE);
                let changes = json!({"name": team.name, "slug": team.slug});
                let entry = Entry::new(actions::TEAM_DELETE, "team", id.to_string()).team(id).changes(changes);
                Ok(Audited { batch, entry, answer: team })
            },
            |_, _| OnGuard::Retry,
        )
        .await?;
    caches.invalidate(Invalidation::TeamAccessChanged(id.to_string())).await;
    Ok(team)
}

/// Members of the given teams, for the batched loader.
pub async fn members_of(db: &DatabaseConnection, team_ids: &[String]) -> Result<Vec<team_members::Model>, AppError> {
    Ok(team_members::Entity::find()
        .filter(team_members::Column::TeamId.is_in(team_ids.iter().cloned()))
        .order_by_asc(team_members::Column::CreatedAt)
        .all(db)
        .await?)
}

pub async fn add_member(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caller: &Caller,
    team_id: &str,
    user_id: &str,
    role: TeamRole,
) -> Result<team_members::Model, AppError> {
    let already = || AppError::Conflict(format!("{user_id} is already a member; change their role instead."));
    let (member, _) = audit
        .write(
            caller,
            || async {
                guard::team(db, caller, team_id, TeamRole::Owner).await?;
                let user = users::Entity::find_by_id(user_id).one(db).await?.filter(|u| u.deleted_at.is_none());
                if user.is_none() {
                    return Err(AppError::BadUserInput {
                        message: format!("No user {user_id} has signed in yet."),
                        problems: vec![Problem::new("userId", "unknown user")],
                    });
                }
                if membership(db, team_id, user_id).await?.is_some() {
                    return Err(already());
                }
                let member = team_members::Model {
                    team_id: team_id.to_string(),
                    user_id: user_id.to_string(),
                    role,
                    created_at: Utc::now().trunc_subsecs(6),
                };
                let batch = Batch::new(audit.writer().backend())
                    .assert(&exists(team_id), TEAM_GONE)
                    .write(&join(&member))
                    .guard(Expect::One, ALREADY_MEMBER);
                let entry = Entry::new(actions::TEAM_MEMBER_ADD, "team_member", user_id.to_string())
                    .team(team_id)
                    .changes(json!({"userId": user_id, "role": role.to_string()}));
                Ok(Audited { batch, entry, answer: member })
            },
            |_, code| match code {
                // Invited by someone else a moment earlier.
                ALREADY_MEMBER => OnGuard::Answer(already()),
                _ => OnGuard::Retry,
            },
        )
        .await?;
    Ok(member)
}

/// The guard of a new membership: the user is a member already.
const ALREADY_MEMBER: &str = "already_member";

/// The guard of a change to a member as read: their role changed, or they left, since.
pub const MEMBER_CHANGED: &str = "member_changed";

/// The assertion that a team keeps an owner.
const LAST_OWNER: &str = "last_owner";

/// `INSERT` of a membership that does nothing when the user is a member already (guard it
/// `Expect::One`).
pub fn join(member: &team_members::Model) -> InsertStatement {
    let taken =
        OnConflict::columns([team_members::Column::TeamId, team_members::Column::UserId]).do_nothing().to_owned();
    team_members::Entity::insert(team_members::ActiveModel::from(member.clone())).on_conflict(taken).into_query()
}

/// `UPDATE` of a member's role from the role read to `role` (guard it `Expect::One`
/// [`MEMBER_CHANGED`]).
pub fn change_role(member: &team_members::Model, role: TeamRole) -> UpdateStatement {
    team_members::Entity::update_many()
        .set(team_members::ActiveModel { role: Set(role), ..Default::default() })
        .filter(team_members::Column::TeamId.eq(&member.team_id))
        .filter(team_members::Column::UserId.eq(&member.user_id))
        .filter(team_members::Column::Role.eq(member.role))
        .into_query()
}

/// A query answering a row while team `id` exists: asserted before adding to it.
pub fn exists(id: &str) -> SelectStatement {
    teams::Entity::find().select_only().column(teams::Column::Id).filter(teams::Column::Id.eq(id)).into_query()
}

/// A query answering a row while team `id` has an owner: asserted after demoting or removing
/// one.
fn an_owner_remains(team_id: &str) -> SelectStatement {
    team_members::Entity::find()
        .select_only()
        .column(team_members::Column::UserId)
        .filter(team_members::Column::TeamId.eq(team_id))
        .filter(team_members::Column::Role.eq(TeamRole::Owner))
        .limit(1)
        .into_query()
}

/// Gives a member another role; their open subscriptions on the team are checked again.
pub async fn update_member(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    caller: &Caller,
    team_id: &str,
    user_id: &str,
    role: TeamRole,
) -> Result<team_members::Model, AppError> {
    let (member, _) = audit
        .write(
            caller,
            || async {
                guard::team(db, caller, team_id, TeamRole::Owner).await?;
                let member = membership(db, team_id, user_id).await?.ok_or_else(no_member)?;
                let before = member.role;
                let mut batch = Batch::new(audit.writer().backend())
                    .write(&change_role(&member, role))
                    .guard(Expect::One, MEMBER_CHANGED);
                if before == TeamRole::Owner && role != TeamRole::Owner {
                    keep_an_owner(db, team_id).await?;
                    batch = batch.assert(&an_owner_remains(team_id), LAST_OWNER);
                }
                let entry = Entry::new(actions::TEAM_MEMBER_UPDATE, "team_member", user_id.to_string())
                    .team(team_id)
                    .changes(json!({"role": {"from": before.to_string(), "to": role.to_string()}}));
                Ok(Audited { batch, entry, answer: team_members::Model { role, ..member } })
            },
            // The member, or the other owners, changed since the read: read again, which answers
            // NOT_FOUND or CONFLICT when that is what changed.
            |_, _| OnGuard::Retry,
        )
        .await?;
    member_changed(caches, team_id, user_id).await;
    Ok(member)
}

/// Owners remove anyone; any member may leave. The last owner may do neither. The member's open
/// subscriptions on the team end.
pub async fn remove_member(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caches: &Caches,
    caller: &Caller,
    team_id: &str,
    user_id: &str,
) -> Result<team_members::Model, AppError> {
    let leaving = matches!(&caller.principal, Principal::User(me) if me.id == user_id);
    let need = if leaving { TeamRole::Viewer } else { TeamRole::Owner };
    let (member, _) = audit
        .write(
            caller,
            || async {
                guard::team(db, caller, team_id, need).await?;
                let member = membership(db, team_id, user_id).await?.ok_or_else(no_member)?;
                let remove = team_members::Entity::delete_many()
                    .filter(team_members::Column::TeamId.eq(team_id))
                    .filter(team_members::Column::UserId.eq(user_id))
                    .filter(team_members::Column::Role.eq(member.role));
                let mut batch =
                    Batch::new(audit.writer().backend()).write(&remove.into_query()).guard(Expect::One, MEMBER_CHANGED);
                if member.role == TeamRole::Owner {
                    keep_an_owner(db, team_id).await?;
                    batch = batch.assert(&an_owner_remains(team_id), LAST_OWNER);
                }
                let entry = Entry::new(actions::TEAM_MEMBER_REMOVE, "team_member", user_id.to_string())
                    .team(team_id)
                    .changes(json!({"userId": user_id, "role": member.role.to_string()}));
                Ok(Audited { batch, entry, answer: member })
            },
            |_, _| OnGuard::Retry,
        )
        .await?;
    member_changed(caches, team_id, user_id).await;
    Ok(member)
}

/// Has the member's open subscriptions on the team checked again, on every instance.
async fn member_changed(caches: &Caches, team_id: &str, user_id: &str) {
    let change = Invalidation::TeamMemberChanged { team_id: team_id.to_string(), user_id: user_id.to_string() };
    caches.invalidate(change).await;
}

/// The user's membership of the team, if any.
pub async fn membership(
    db: &DatabaseConnection,
    team_id: &str,
    user_id: &str,
) -> Result<Option<team_members::Model>, AppError> {
    Ok(team_members::Entity::find()
        .filter(team_members::Column::TeamId.eq(team_id))
        .filter(team_members::Column::UserId.eq(user_id))
        .one(db)
        .await?)
}

fn no_member() -> AppError {
    AppError::NotFound("That user is not a member of this team.".into())
}

/// Refuses to leave the team without an owner (the caller is about to demote or remove one).
async fn keep_an_owner(db: &DatabaseConnection, team_id: &str) -> Result<(), AppError> {
    let owners = team_members::Entity::find()
        .filter(team_members::Column::TeamId.eq(team_id))
        .filter(team_members::Column::Role.eq(TeamRole::Owner))
        .count(db)
        .await?;
    if owners <= 1 {
        return Err(AppError::Conflict("The team would have no owner: make someone else owner first.".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::slugify;

    #[test]
    fn slugs_are_lowercase_words_joined_by_dashes() {
        assert_eq!(slugify("  Support Triage! "), "support-triage");
        assert_eq!(slugify("Ünïcode ☃ team"), "n-code-team");
        assert_eq!(slugify("!!!"), "team");
    }
}
