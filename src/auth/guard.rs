//! The one place access to a team is decided. Every service that touches a team asks here:
//! a team the caller may not see is NOT_FOUND (never a hint that it exists); a visible team
//! without the needed role is FORBIDDEN. Global ADMINs act as owners everywhere.

use entity::{states::Visibility, team_members, teams};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use crate::{
    domain::{Caller, GlobalRole, KeyPrincipal, Principal, Scope, TeamRole, UserPrincipal},
    error::AppError,
};

/// A team the caller may act on, and the role they act with.
pub struct TeamAccess {
    pub team: teams::Model,
    pub role: TeamRole,
}

/// The scope an API key needs to act with `role` on a team.
fn scope_for(role: TeamRole) -> Scope {
    match role {
        TeamRole::Viewer => Scope::TeamsRead,
        TeamRole::Operator => Scope::RunsExecute,
        TeamRole::Editor | TeamRole::Owner => Scope::TeamsWrite,
    }
}

fn unauthenticated() -> AppError {
    AppError::Unauthenticated("Sign in to do this.".into())
}

/// A person signed in with a session token (API keys may not manage accounts or keys).
pub fn account(caller: &Caller) -> Result<&UserPrincipal, AppError> {
    match &caller.principal {
        Principal::User(user) => Ok(user),
        Principal::ApiKey(_) => Err(AppError::Forbidden("API keys cannot do this; sign in instead.".into())),
        Principal::Anonymous | Principal::System(_) => Err(unauthenticated()),
    }
}

/// Anyone signed in, by session or by API key; anonymous callers are UNAUTHENTICATED.
pub fn signed_in(caller: &Caller) -> Result<(), AppError> {
    match caller.principal {
        Principal::Anonymous => Err(unauthenticated()),
        Principal::User(_) | Principal::ApiKey(_) | Principal::System(_) => Ok(()),
    }
}

/// The signed-in admin (never an API key).
pub fn admin(caller: &Caller) -> Result<&UserPrincipal, AppError> {
    let user = account(caller)?;
    match user.role {
        GlobalRole::Admin => Ok(user),
        GlobalRole::Member => Err(AppError::Forbidden("Only an admin may do this.".into())),
    }
}

/// The acting user for an operation outside any one team: a signed-in user, or the owner of an
/// API key that has `scope` and is not restricted to a team.
pub fn acting_user(caller: &Caller, scope: Scope) -> Result<&UserPrincipal, AppError> {
    match acting_user_within(caller, scope)? {
        (user, None) => Ok(user),
        (_, Some(_)) => Err(AppError::Forbidden("This API key is restricted to one team.".into())),
    }
}

/// The acting user and, for an API key restricted to a team, that team: a signed-in user, or
/// the owner of an API key that has `scope`.
pub fn acting_user_within(caller: &Caller, scope: Scope) -> Result<(&UserPrincipal, Option<&str>), AppError> {
    match &caller.principal {
        Principal::User(user) => Ok((user, None)),
        Principal::ApiKey(key) => {
            require_scope(key, scope)?;
            Ok((&key.owner, key.team_id.as_deref()))
        }
        Principal::Anonymous | Principal::System(_) => Err(unauthenticated()),
    }
}

/// Refuses an API key without `scope`; other callers pass.
pub fn key_scope(caller: &Caller, scope: Scope) -> Result<(), AppError> {
    match &caller.principal {
        Principal::ApiKey(key) => require_scope(key, scope),
        _ => Ok(()),
    }
}

fn require_scope(key: &KeyPrincipal, scope: Scope) -> Result<(), AppError> {
    if key.scopes.contains(&scope) {
        Ok(())
    } else {
        Err(AppError::Forbidden(format!("This API key lacks the {} scope.", scope.as_str())))
    }
}

/// Whether the caller is a global admin, who sees every team's rows, by session or by an
/// admin's API key. A key restricted to one team still sees that team only: whoever lists rows
/// applies the restriction first.
pub fn sees_all(caller: &Caller) -> bool {
    match &caller.principal {
        Principal::User(user) => user.role == GlobalRole::Admin,
        Principal::ApiKey(key) => key.owner.role == GlobalRole::Admin,
        Principal::Anonymous | Principal::System(_) => false,
    }
}

/// The user the caller acts as on team `team_id`: a signed-in user, or an API key's owner when
/// the key is not restricted to another team.
fn member_on<'c>(caller: &'c Caller, team_id: &str) -> Option<&'c UserPrincipal> {
    match &caller.principal {
        Principal::User(user) => Some(user),
        Principal::ApiKey(key) if key.team_id.as_deref().is_none_or(|t| t == team_id) => Some(&key.owner),
        Principal::ApiKey(_) | Principal::Anonymous | Principal::System(_) => None,
    }
}

/// The caller's role on team `team_id` as a member, given the team's member rows (`members`
/// holds at least the acting user's row, if any): admins as owners, an API key as its owner and
/// only on its team. None for anyone else, even on a public team.
pub fn membership(caller: &Caller, team_id: &str, members: &[team_members::Model]) -> Option<TeamRole> {
    let user = member_on(caller, team_id)?;
    if user.role == GlobalRole::Admin {
        return Some(TeamRole::Owner);
    }
    members.iter().find(|m| m.team_id == team_id && m.user_id == user.id).map(|m| m.role)
}

/// [`membership`], reading the acting user's row.
pub async fn member_role<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    team_id: &str,
) -> Result<Option<TeamRole>, AppError> {
    let row = match member_on(caller, team_id) {
        Some(user) if user.role != GlobalRole::Admin => {
            team_members::Entity::find()
                .filter(team_members::Column::TeamId.eq(team_id))
                .filter(team_members::Column::UserId.eq(&user.id))
                .one(conn)
                .await?
        }
        _ => None,
    };
    Ok(membership(caller, team_id, row.as_slice()))
}

/// The caller's role on a team, if any: members by their row (an API key by its owner's, and
/// only on its team), admins as owners, anyone as a viewer of a public team.
pub async fn role_on<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    team: &teams::Model,
) -> Result<Option<TeamRole>, AppError> {
    if let Principal::ApiKey(key) = &caller.principal
        && key.team_id.as_ref().is_some_and(|t| *t != team.id)
    {
        return Ok(None);
    }
    let member = member_role(conn, caller, &team.id).await?;
    Ok(member.or((team.visibility == Visibility::Public).then_some(TeamRole::Viewer)))
}

/// Whether the caller, holding `role` as a member of a team it already sees (see
/// [`membership`]), may read or do what takes `need` there: the role must reach `need` and an
/// API key must hold the scope `need` takes. Refusals are FORBIDDEN, worded by `refusal`
/// unless the key lacks the scope.
pub fn member_may(caller: &Caller, role: Option<TeamRole>, need: TeamRole, refusal: &str) -> Result<(), AppError> {
    if let Principal::ApiKey(key) = &caller.principal {
        require_scope(key, scope_for(need))?;
    }
    match role {
        Some(role) if role >= need => Ok(()),
        _ => Err(AppError::Forbidden(refusal.into())),
    }
}

/// The team `team_id` if the caller holds at least `need` on it (and, for an API key, the
/// matching scope).
pub async fn team<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    team_id: &str,
    need: TeamRole,
) -> Result<TeamAccess, AppError> {
    let not_found = || AppError::NotFound("No such team.".into());
    let team = teams::Entity::find_by_id(team_id).one(conn).await?.ok_or_else(not_found)?;
    let role = role_on(conn, caller, &team).await?.ok_or_else(not_found)?;
    if let Principal::ApiKey(key) = &caller.principal {
        require_scope(key, scope_for(need))?;
    }
    if role < need {
        if matches!(caller.principal, Principal::Anonymous) {
            return Err(unauthenticated());
        }
        return Err(AppError::Forbidden(format!("This needs the {need} role on the team; you have {role}.")));
    }
    Ok(TeamAccess { team, role })
}
