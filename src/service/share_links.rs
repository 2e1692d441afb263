//! Share links: an owner makes a link with a role (at most EDITOR) and an optional expiry; the
//! token is shown once and only its hash kept. Accepting makes the caller a member. Unknown,
//! expired and revoked tokens all answer the same NOT_FOUND.

use chrono::{DateTime, Utc};
use entity::{team_members, team_share_links as links};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Set,
};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    audit::{self, Entry, actions},
    page::{Page, PageRequest},
    teams,
};
use crate::{
    auth::guard::{self, account},
    db,
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
};

/// A link just made, with its token (shown this once).
pub struct WithToken {
    pub link: links::Model,
    pub token: String,
}

fn hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

pub async fn create(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    role: TeamRole,
    expires_at: Option<DateTime<Utc>>,
) -> Result<WithToken, AppError> {
    let mut problems = Vec::new();
    if role > TeamRole::Editor {
        problems.push(Problem::new("role", "a link grants at most EDITOR"));
    }
    if expires_at.is_some_and(|at| at <= Utc::now()) {
        problems.push(Problem::new("expiresAt", "must be in the future"));
    }
    let txn = db::begin_write(db).await?;
    guard::team(&txn, caller, team_id, TeamRole::Owner).await?;
    AppError::refuse(problems)?;
    let mut secret = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("ens_share_{}", hex::encode(secret));
    let link = links::ActiveModel {
        id: Set(format!("link_{}", uuid::Uuid::now_v7().simple())),
        team_id: Set(team_id.to_string()),
        role: Set(role),
        token_hash: Set(hash(&token)),
        expires_at: Set(expires_at),
        revoked_at: Set(None),
        created_by: Set(caller.principal.user_id().unwrap_or_default().to_string()),
        created_at: Set(Utc::now()),
    }
    .insert(&txn)
    .await?;
    let entry = Entry::new(actions::SHARE_LINK_CREATE, "share_link", link.id.clone())
        .team(team_id)
        .changes(json!({"role": link.role.to_string(), "expiresAt": link.expires_at}));
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    Ok(WithToken { link, token })
}

/// A team's links, newest first (owners).
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    page: &PageRequest,
) -> Result<Page<links::Model>, AppError> {
    guard::team(db, caller, team_id, TeamRole::Owner).await?;
    let mut query = links::Entity::find().filter(links::Column::TeamId.eq(team_id));
    if let Some(after) = &page.after {
        query = query.filter(links::Column::Id.lt(after.as_str()));
    }
    let rows = query.order_by_desc(links::Column::Id).limit(page.first + 1).all(db).await?;
    Ok(page.page(rows))
}

pub async fn revoke(db: &DatabaseConnection, caller: &Caller, id: &str) -> Result<links::Model, AppError> {
    let txn = db::begin_write(db).await?;
    let link = links::Entity::find_by_id(id)
        .lock_exclusive()
        .one(&txn)
        .await?
        .ok_or_else(|| AppError::NotFound("No such share link.".into()))?;
    guard::team(&txn, caller, &link.team_id, TeamRole::Owner).await?;
    if link.revoked_at.is_some() {
        return Ok(link);
    }
    let team_id = link.team_id.clone();
    let mut active: links::ActiveModel = link.into();
    active.revoked_at = Set(Some(Utc::now()));
    let link = active.update(&txn).await?;
    audit::allowed(&txn, caller, Entry::new(actions::SHARE_LINK_REVOKE, "share_link", id.to_string()).team(&team_id))
        .await?;
    txn.commit().await?;
    Ok(link)
}

/// Makes the caller a member with the link's role (keeping a stronger role they hold).
pub async fn accept(db: &DatabaseConnection, caller: &Caller, token: &str) -> Result<team_members::Model, AppError> {
    let me = account(caller)?;
    let unusable = || AppError::NotFound("This share link does not exist, has expired or was revoked.".into());
    let txn = db::begin_write(db).await?;
    // Locked, so a revocation either lands first or waits; then the team, so two acceptances
    // (or an acceptance and an invitation) of one user take turns.
    let link = links::Entity::find()
        .filter(links::Column::TokenHash.eq(hash(token.trim())))
        .lock_exclusive()
        .one(&txn)
        .await?
        .filter(|l| l.revoked_at.is_none() && l.expires_at.is_none_or(|at| at > Utc::now()))
        .ok_or_else(unusable)?;
    teams::lock(&txn, &link.team_id).await?;
    let granted = link.role;
    let existing = team_members::Entity::find()
        .filter(team_members::Column::TeamId.eq(&link.team_id))
        .filter(team_members::Column::UserId.eq(&me.id))
        .lock_exclusive()
        .one(&txn)
        .await?;
    let member = match existing {
        Some(member) if member.role >= granted => member,
        Some(member) => {
            let mut active: team_members::ActiveModel = member.into();
            active.role = Set(granted);
            active.update(&txn).await?
        }
        None => {
            team_members::ActiveModel {
                team_id: Set(link.team_id.clone()),
                user_id: Set(me.id.clone()),
                role: Set(granted),
                created_at: Set(Utc::now()),
            }
            .insert(&txn)
            .await?
        }
    };
    let entry = Entry::new(actions::SHARE_LINK_ACCEPT, "share_link", link.id.clone())
        .team(&link.team_id)
        .changes(json!({"userId": me.id, "role": member.role.to_string()}));
    audit::allowed(&txn, caller, entry).await?;
    txn.commit().await?;
    Ok(member)
}
