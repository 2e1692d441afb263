//! The one place access to a team is decided. Every service that touches a team asks here:
//! a team the caller may not see is NOT_FOUND (never a hint that it exists); a visible team
//! without the needed role is FORBIDDEN. Global ADMINs act as owners everywhere.

use entity::{team_members, teams};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};

use super::{GlobalRole, Principal, UserPrincipal};
use crate::{error::AppError, service::audit::Caller};

/// Per-team roles, weakest first: a stronger role may do all a weaker one may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, async_graphql::Enum)]
pub enum TeamRole {
    /// Reads the team.
    Viewer,
    /// Runs the team, cannot change it.
    Operator,
    /// Changes the team.
    Editor,
    /// Manages members, archives and deletes.
    Owner,
}

impl TeamRole {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Editor => "editor",
            Self::Owner => "owner",
        }
    }

    pub fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "viewer" => Self::Viewer,
            "operator" => Self::Operator,
            "editor" => Self::Editor,
            "owner" => Self::Owner,
            _ => return None,
        })
    }
}

/// A team the caller may act on, and the role they act with.
pub struct TeamAccess {
    pub team: teams::Model,
    pub role: TeamRole,
}

/// The signed-in user, or UNAUTHENTICATED.
pub fn signed_in(caller: &Caller) -> Result<&UserPrincipal, AppError> {
    match &caller.principal {
        Principal::User(user) => Ok(user),
        Principal::Anonymous | Principal::System(_) => {
            Err(AppError::Unauthenticated("Sign in to do this.".into()))
        }
    }
}

/// The signed-in admin, or FORBIDDEN.
pub fn admin(caller: &Caller) -> Result<&UserPrincipal, AppError> {
    let user = signed_in(caller)?;
    match user.role {
        GlobalRole::Admin => Ok(user),
        GlobalRole::Member => Err(AppError::Forbidden("Only an admin may do this.".into())),
    }
}

/// The caller's role on a team, if any: members by their row, admins as owners, anyone as a
/// viewer of a public team.
pub async fn role_on<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    team: &teams::Model,
) -> Result<Option<TeamRole>, AppError> {
    let member = match &caller.principal {
        Principal::User(user) if user.role == GlobalRole::Admin => {
            return Ok(Some(TeamRole::Owner));
        }
        Principal::User(user) => team_members::Entity::find()
            .filter(team_members::Column::TeamId.eq(&team.id))
            .filter(team_members::Column::UserId.eq(&user.id))
            .one(conn)
            .await?
            .and_then(|m| TeamRole::parse(&m.role)),
        Principal::Anonymous | Principal::System(_) => None,
    };
    Ok(member.or((team.visibility == "public").then_some(TeamRole::Viewer)))
}

/// The team `team_id` if the caller holds at least `need` on it.
pub async fn team<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    team_id: &str,
    need: TeamRole,
) -> Result<TeamAccess, AppError> {
    let not_found = || AppError::NotFound("No such team.".into());
    let team = teams::Entity::find_by_id(team_id)
        .one(conn)
        .await?
        .ok_or_else(not_found)?;
    let role = role_on(conn, caller, &team).await?.ok_or_else(not_found)?;
    if role < need {
        if matches!(caller.principal, Principal::Anonymous) {
            return Err(AppError::Unauthenticated("Sign in to do this.".into()));
        }
        return Err(AppError::Forbidden(format!(
            "This needs the {} role on the team; you have {}.",
            need.as_str(),
            role.as_str()
        )));
    }
    Ok(TeamAccess { team, role })
}
