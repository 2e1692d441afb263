//! Users: `me`, `user`, `users`, `updateProfile`, `setUserRole`.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, connection::Connection};
use chrono::{DateTime, Utc};

use super::{caller, connection, principal, states::GlobalRole};
use crate::{
    domain::Principal,
    error::GqlResultExt,
    service::{page::PageRequest, users},
    state::AppState,
};

#[derive(Default)]
pub struct UsersQuery;

#[Object]
impl UsersQuery {
    /// The signed-in user (an API key's owner); null for an anonymous caller.
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let me = match principal(ctx) {
            Principal::User(me) => me,
            Principal::ApiKey(key) => &key.owner,
            Principal::Anonymous | Principal::System(_) => return Ok(None),
        };
        let state = ctx.data::<AppState>()?;
        let row = users::find(&state.db, &me.id).await.gql()?;
        Ok(row.map(|row| User { role: me.role.into(), ..User::from(row) }))
    }

    /// A user by id: yourself, or anyone for an admin.
    async fn user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<User> {
        let state = ctx.data::<AppState>()?;
        users::get(&state.db, &caller(ctx), &id).await.map(User::from).gql()
    }

    /// Every user, by id (admins only); `search` matches id, email or name.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn users(
        &self,
        ctx: &Context<'_>,
        search: Option<String>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, User>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let rows = users::list(&state.db, &caller(ctx), search.as_deref(), &page).await.gql()?;
        Ok(connection(&page, rows, |u| u.id.clone(), User::from))
    }
}

#[derive(Default)]
pub struct UsersMutation;

#[Object]
impl UsersMutation {
    /// Changes the caller's own display name or picture.
    async fn update_profile(&self, ctx: &Context<'_>, input: UpdateProfileInput) -> async_graphql::Result<User> {
        let state = ctx.data::<AppState>()?;
        let changes = users::ProfileChanges { display_name: input.display_name, avatar_url: input.avatar_url };
        users::update_profile(&state.db, &state.audit, &state.caches, &caller(ctx), changes).await.map(User::from).gql()
    }

    /// Sets a user's global role (admins only).
    async fn set_user_role(&self, ctx: &Context<'_>, user_id: ID, role: GlobalRole) -> async_graphql::Result<User> {
        let state = ctx.data::<AppState>()?;
        users::set_role(&state.db, &state.audit, &state.caches, &caller(ctx), &user_id, role.into())
            .await
            .map(User::from)
            .gql()
    }
}

/// Profile fields to change; omitted ones stay.
#[derive(InputObject)]
pub struct UpdateProfileInput {
    /// 1 to 100 characters.
    pub display_name: Option<String>,
    /// An http(s) URL.
    pub avatar_url: Option<String>,
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
            role: row.role.into(),
            id: row.id,
            email: row.email,
            display_name: row.display_name,
            avatar_url: row.avatar_url,
            created_at: row.created_at,
        }
    }
}
