//! Users: `me`.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};

use super::principal;
use crate::{
    auth::{GlobalRole, Principal},
    error::GqlResultExt,
    service::users,
    state::AppState,
};

#[derive(Default)]
pub struct UsersQuery;

#[Object]
impl UsersQuery {
    /// The signed-in user; null for an anonymous caller.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let Principal::User(me) = principal(ctx) else {
            return Ok(None);
        };
        let state = ctx.data::<AppState>()?;
        let row = users::find(&state.db, &me.id).await.gql()?;
        Ok(row.map(|row| User {
            role: me.role,
            ..User::from(row)
        }))
    }
}

/// A person who signs in with Clerk.
#[derive(SimpleObject)]
pub struct User {
    /// Clerk's user id (`user_…`).
    pub id: String,
    /// Primary email, as Clerk has it.
    pub email: Option<String>,
    /// The name shown to others.
    pub display_name: Option<String>,
    /// Picture URL.
    pub avatar_url: Option<String>,
    /// ADMIN manages the whole server; MEMBER what they own or share.
    pub role: GlobalRole,
    /// When the user first signed in.
    pub created_at: DateTime<Utc>,
}

impl From<entity::users::Model> for User {
    fn from(row: entity::users::Model) -> Self {
        Self {
            role: GlobalRole::parse(&row.role).unwrap_or(GlobalRole::Member),
            id: row.id,
            email: row.email,
            display_name: row.display_name,
            avatar_url: row.avatar_url,
            created_at: row.created_at,
        }
    }
}
