//! Share links: `shareLinks`, `createShareLink`, `revokeShareLink`, `acceptShareLink`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, connection::Connection};
use chrono::{DateTime, Utc};
use entity::team_share_links as rows;

use super::{caller, connection, states::TeamRole, teams::TeamMember};
use crate::{
    error::GqlResultExt,
    service::{
        page::PageRequest,
        share_links::{self, WithToken},
    },
    state::AppState,
};

#[derive(Default)]
pub struct ShareLinksQuery;

#[Object]
impl ShareLinksQuery {
    /// A team's share links, newest first (owners). Tokens are never shown again.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn share_links(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, ShareLink>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let rows = share_links::list(&state.db, &caller(ctx), &team_id, &page).await.gql()?;
        Ok(connection(&page, rows, |l| l.id.clone(), ShareLink::from))
    }
}

#[derive(Default)]
pub struct ShareLinksMutation;

#[Object]
impl ShareLinksMutation {
    /// Makes a link granting `role` (at most EDITOR) to whoever accepts it (owners). The token is
    /// in the answer this once.
    async fn create_share_link(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        input: CreateShareLinkInput,
    ) -> async_graphql::Result<CreatedShareLink> {
        let state = ctx.data::<AppState>()?;
        share_links::create(&state.db, &state.audit, &caller(ctx), &team_id, input.role.into(), input.expires_at)
            .await
            .map(CreatedShareLink::from)
            .gql()
    }

    /// Revokes a link; it stops working at once (owners).
    async fn revoke_share_link(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<ShareLink> {
        let state = ctx.data::<AppState>()?;
        share_links::revoke(&state.db, &state.audit, &caller(ctx), &id).await.map(ShareLink::from).gql()
    }

    /// Joins the link's team with its role.
    async fn accept_share_link(&self, ctx: &Context<'_>, token: String) -> async_graphql::Result<TeamMember> {
        let state = ctx.data::<AppState>()?;
        share_links::accept(&state.db, &state.audit, &caller(ctx), &token).await.map(TeamMember).gql()
    }
}

#[derive(InputObject)]
pub struct CreateShareLinkInput {
    /// VIEWER, OPERATOR or EDITOR.
    pub role: TeamRole,
    /// When the link stops working.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A link with its token, answered once.
#[derive(SimpleObject)]
pub struct CreatedShareLink {
    /// Give this to the people who should join; `acceptShareLink(token:)` uses it.
    pub token: String,
    pub share_link: ShareLink,
}

impl From<WithToken> for CreatedShareLink {
    fn from(made: WithToken) -> Self {
        Self { token: made.token, share_link: made.link.into() }
    }
}

/// A share link (never its token).
#[derive(SimpleObject)]
pub struct ShareLink {
    pub id: ID,
    pub team_id: ID,
    pub role: Option<TeamRole>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub created_by: ID,
    pub created_at: DateTime<Utc>,
}

impl From<rows::Model> for ShareLink {
    fn from(link: rows::Model) -> Self {
        Self {
            role: Some(link.role.into()),
            id: ID(link.id),
            team_id: ID(link.team_id),
            expires_at: link.expires_at,
            revoked_at: link.revoked_at,
            created_by: ID(link.created_by),
            created_at: link.created_at,
        }
    }
}
