//! Share links: an owner makes a link with a role (at most EDITOR) and an optional expiry; the
//! token is shown once and only its hash kept. Accepting makes the caller a member. Unknown,
//! expired and revoked tokens all answer the same NOT_FOUND.

use chrono::{DateTime, SubsecRound, Utc};
use entity::{team_members, team_share_links as links};
use rand::RngCore;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait, Set};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{
    audit::{AuditChain, Audited, Decision, Entry, actions},
    page::{Page, PageRequest},
    teams,
};
use crate::{
    auth::guard::{self, account},
    db::batch::{Batch, Expect, OnGuard},
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
    audit: &AuditChain,
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
    let (made, _) = audit
        .write(
            caller,
            || async {
                guard::team(db, caller, team_id, TeamRole::Owner).await?;
                AppError::refuse(problems.clone())?;
                let mut secret = [0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut secret);
                let token = format!("ens_share_{}", hex::encode(secret));
                // As precise as the databases store it, so the link answered is the link stored.
                let link = links::Model {
                    id: format!("link_{}", uuid::Uuid::now_v7().simple()),
                    team_id: team_id.to_string(),
                    role,
                    token_hash: hash(&token),
                    expires_at: expires_at.map(|at| at.trunc_subsecs(6)),
                    revoked_at: None,
                    created_by: caller.principal.user_id().unwrap_or_default().to_string(),
                    created_at: Utc::now().trunc_subsecs(6),
                };
                let insert = links::Entity::insert(links::ActiveModel::from(link.clone())).into_query();
                let batch = Batch::new(audit.writer().backend())
                    .assert(&teams::exists(team_id), teams::TEAM_GONE)
                    .write(&insert);
                let entry = Entry::new(actions::SHARE_LINK_CREATE, "share_link", link.id.clone())
                    .team(team_id)
                    .changes(json!({"role": link.role.to_string(), "expiresAt": link.expires_at}));
                Ok(Audited { batch, entry, answer: WithToken { link, token } })
            },
            // `team_gone`: deleted since the read, which the next read answers (NOT_FOUND).
            |_, _| OnGuard::Retry,
        )
        .await?;
    Ok(made)
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

/// Revokes a link; one revoked already is answered as it is (no second audit row).
pub async fn revoke(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caller: &Caller,
    id: &str,
) -> Result<links::Model, AppError> {
    let (link, _) = audit
        .decide(
            caller,
            || async {
                let mut link = links::Entity::find_by_id(id)
                    .one(db)
                    .await?
                    .ok_or_else(|| AppError::NotFound("No such share link.".into()))?;
                guard::team(db, caller, &link.team_id, TeamRole::Owner).await?;
                if link.revoked_at.is_some() {
                    return Ok(Decision::Unchanged(link));
                }
                let now = Utc::now().trunc_subsecs(6);
                let revoke = links::Entity::update_many()
                    .set(links::ActiveModel { revoked_at: Set(Some(now)), ..Default::default() })
                    .filter(links::Column::Id.eq(id))
                    .filter(links::Column::RevokedAt.is_null())
                    .into_query();
                link.revoked_at = Some(now);
                let batch = Batch::new(audit.writer().backend()).write(&revoke).guard(Expect::One, "revoked");
                let entry = Entry::new(actions::SHARE_LINK_REVOKE, "share_link", id.to_string()).team(&link.team_id);
                Ok(Decision::Write(Audited { batch, entry, answer: link }))
            },
            // Revoked (or deleted with its team) since the read: the next read answers the link
            // as revoked, or NOT_FOUND.
            |_, _| OnGuard::Retry,
        )
        .await?;
    Ok(link)
}

/// Makes the caller a member with the link's role (keeping a stronger role they hold).
pub async fn accept(
    db: &DatabaseConnection,
    audit: &AuditChain,
    caller: &Caller,
    token: &str,
) -> Result<team_members::Model, AppError> {
    let me = account(caller)?;
    let unusable = || AppError::NotFound("This share link does not exist, has expired or was revoked.".into());
    let token_hash = hash(token.trim());
    let (member, _) = audit
        .write(
            caller,
            || async {
                let link = links::Entity::find()
                    .filter(links::Column::TokenHash.eq(&token_hash))
                    .one(db)
                    .await?
                    .filter(|l| l.revoked_at.is_none() && l.expires_at.is_none_or(|at| at > Utc::now()))
                    .ok_or_else(unusable)?;
                let granted = link.role;
                // Whether the link expired is decided on the read; a revocation since fails the
                // batch, and the next read answers NOT_FOUND.
                let still_usable = links::Entity::find()
                    .select_only()
                    .column(links::Column::Id)
                    .filter(links::Column::Id.eq(&link.id))
                    .filter(links::Column::RevokedAt.is_null())
                    .into_query();
                let mut batch = Batch::new(audit.writer().backend()).assert(&still_usable, "link_unusable");
                let member = match teams::membership(db, &link.team_id, &me.id).await? {
                    Some(member) if member.role >= granted => member,
                    Some(member) => {
                        batch = batch
                            .write(&teams::change_role(&member, granted))
                            .guard(Expect::One, teams::MEMBER_CHANGED);
                        team_members::Model { role: granted, ..member }
                    }
                    None => {
                        let member = team_members::Model {
                            team_id: link.team_id.clone(),
                            user_id: me.id.clone(),
                            role: granted,
                            created_at: Utc::now().trunc_subsecs(6),
                        };
                        batch = batch.write(&teams::join(&member)).guard(Expect::One, teams::MEMBER_CHANGED);
                        member
                    }
                };
                let entry = Entry::new(actions::SHARE_LINK_ACCEPT, "share_link", link.id.clone())
                    .team(&link.team_id)
                    .changes(json!({"userId": me.id, "role": member.role.to_string()}));
                Ok(Audited { batch, entry, answer: member })
            },
            // The link was revoked, or the caller joined or changed role, since the read: read
            // again.
            |_, _| OnGuard::Retry,
        )
        .await?;
    Ok(member)
}
