//! Teams and members: `team`, `teams`, `createTeam`, `updateTeam`, `archiveTeam`,
//! `deleteTeam`, `addTeamMember`, `updateTeamMember`, `removeTeamMember`.

use std::collections::BTreeSet;

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, connection::Connection};
use chrono::{DateTime, Utc};
use entity::{team_members, teams as rows};
use serde_json::Value;

use super::{
    answers::warn_missing_keys,
    caller, connection,
    loaders::{Loaders, int_argument, node_fields, nodes_select},
    share_links::ShareLink,
    states,
    users::User,
};
use crate::{
    auth::guard,
    domain::TeamRole,
    error::{AppError, GqlResultExt},
    graphql::scalars::Json,
    service::{
        page::PageRequest,
        teams::{self, NewTeam, TeamChanges},
        versions,
    },
    state::AppState,
};

#[derive(Default)]
pub struct TeamsQuery;

#[Object]
impl TeamsQuery {
    /// A team you may see.
    async fn team(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Team> {
        let state = ctx.data::<AppState>()?;
        teams::get(&state.db, &caller(ctx), &id).await.map(Team).gql()
    }

    /// Your teams, newest first (every team for an admin).
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn teams(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Team>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let rows = teams::list(&state.db, &caller(ctx), &page).await.gql()?;
        prefetch(ctx, &rows.items).await?;
        Ok(connection(&page, rows, |t| t.id.clone(), Team))
    }
}

/// Loads what the selection asks of a page of teams in one query per kind, up front: the
/// loaders then answer every team from their cache, however the list's items are scheduled.
async fn prefetch(ctx: &Context<'_>, page: &[rows::Model]) -> async_graphql::Result<()> {
    let loaders = ctx.data::<Loaders>()?;
    let ids: Vec<String> = page.iter().map(|t| t.id.clone()).collect();
    let mut users: Vec<String> = Vec::new();
    if nodes_select(ctx, &["owner"]) {
        users.extend(page.iter().map(|t| t.owner_id.clone()));
    }
    if nodes_select(ctx, &["members"]) || nodes_select(ctx, &["myRole"]) || nodes_select(ctx, &["shareLinks"]) {
        let members = loaders.members.load_many(ids.clone()).await.gql()?;
        if nodes_select(ctx, &["members", "user"]) {
            users.extend(members.values().flatten().map(|m| m.user_id.clone()));
        }
    }
    if !users.is_empty() {
        loaders.users.load_many(users).await.gql()?;
    }
    if nodes_select(ctx, &["versionCount"]) {
        loaders.version_counts.load_many(ids.clone()).await.gql()?;
    }
    if nodes_select(ctx, &["shareLinks"]) {
        loaders.share_links.load_many(ids.clone()).await.gql()?;
    }
    prefetch_versions(ctx, loaders, &ids).await
}

/// The versions the page's `versions(first:)` and `versionAt(n:)` fields ask for.
async fn prefetch_versions(ctx: &Context<'_>, loaders: &Loaders, ids: &[String]) -> async_graphql::Result<()> {
    let max = ctx.data::<AppState>()?.config.limits.max_page_size;
    let counts: BTreeSet<u64> =
        node_fields(ctx, &["versions"]).iter().filter_map(|f| newest(int_argument(f, "first"), max).ok()).collect();
    for count in counts {
        let keys = ids.iter().map(|id| (id.clone(), count));
        loaders.versions.load_many(keys).await.gql()?;
    }
    let numbers: BTreeSet<i32> = node_fields(ctx, &["versionAt"]).iter().filter_map(|f| int_argument(f, "n")).collect();
    for n in numbers {
        let keys = ids.iter().map(|id| (id.clone(), n));
        loaders.version_at.load_many(keys).await.gql()?;
    }
    Ok(())
}

/// How many versions `Team.versions(first:)` answers: `first` as a page size.
fn newest(first: Option<i32>, max: u64) -> Result<u64, AppError> {
    PageRequest::new(first, None, max).map(|page| page.first)
}

#[derive(Default)]
pub struct VersionsQuery;

#[Object]
impl VersionsQuery {
    /// A team's spec versions, newest first.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn team_versions(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, TeamVersion>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let rows = versions::list(&state.db, &caller(ctx), &team_id, &page).await.gql()?;
        Ok(connection(&page, rows, |v| v.version.to_string(), TeamVersion))
    }

    /// What changed between two versions: RFC 6902 operations and a line per change.
    async fn team_diff(&self, ctx: &Context<'_>, team_id: ID, from: i32, to: i32) -> async_graphql::Result<TeamDiff> {
        let state = ctx.data::<AppState>()?;
        let diff = versions::diff(&state.db, &caller(ctx), &team_id, from, to).await.gql()?;
        Ok(TeamDiff { operations: Json(Value::Array(diff.operations)), summary: diff.summary })
    }
}

/// The difference of two versions.
#[derive(SimpleObject)]
pub struct TeamDiff {
    /// RFC 6902 JSON Patch turning the first spec into the second.
    pub operations: Json<Value>,
    /// One readable line per operation.
    pub summary: Vec<String>,
}

/// One immutable version of a team's spec.
pub struct TeamVersion(pub entity::team_versions::Model);

#[Object]
impl TeamVersion {
    async fn version(&self) -> i32 {
        self.0.version
    }
    async fn spec(&self) -> Json<&Value> {
        Json(&self.0.spec)
    }
    /// Why it was made.
    async fn message(&self) -> Option<&str> {
        self.0.message.as_deref()
    }
    async fn author_id(&self) -> ID {
        ID(self.0.author_id.clone())
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
}

#[derive(Default)]
pub struct TeamsMutation;

#[Object]
impl TeamsMutation {
    /// Creates a team; you become its owner. Without a spec it starts with one `local/echo` agent.
    async fn create_team(&self, ctx: &Context<'_>, input: CreateTeamInput) -> async_graphql::Result<Team> {
        let state = ctx.data::<AppState>()?;
        let new = NewTeam {
            name: input.name,
            description: input.description,
            visibility: input.visibility.map(Into::into),
            spec: input.spec.map(|s| s.0),
        };
        let team =
            teams::create(&state.db, &state.audit, &state.config.runs.providers, &caller(ctx), new).await.gql()?;
        warn_missing_keys(ctx, &team.spec);
        Ok(Team(team))
    }

    /// Renames or redescribes a team (editors and owners). A stale `expectedVersion` is CONFLICT.
    async fn update_team(
        &self,
        ctx: &Context<'_>,
        id: ID,
        input: UpdateTeamInput,
        expected_version: Option<i32>,
    ) -> async_graphql::Result<Team> {
        let state = ctx.data::<AppState>()?;
        let spec_changed = input.spec.is_some();
        let changes = TeamChanges {
            name: input.name,
            description: input.description,
            visibility: input.visibility.map(Into::into),
            spec: input.spec.map(|s| s.0),
            message: input.message,
            expected_version,
        };
        let team = teams::update(
            &state.db,
            &state.audit,
            &state.caches,
            &state.config.runs.providers,
            &caller(ctx),
            &id,
            changes,
        )
        .await
        .gql()?;
        if spec_changed {
            warn_missing_keys(ctx, &team.spec);
        }
        Ok(Team(team))
    }

    /// Makes a new version equal to an old one (editors and owners).
    async fn rollback_team(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        version: i32,
        message: Option<String>,
    ) -> async_graphql::Result<Team> {
        let state = ctx.data::<AppState>()?;
        let team = versions::rollback(&state.db, &state.audit, &caller(ctx), &team_id, version, message).await.gql()?;
        warn_missing_keys(ctx, &team.spec);
        Ok(Team(team))
    }

    /// Archives a team (owners): it stays readable.
    async fn archive_team(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Team> {
        let state = ctx.data::<AppState>()?;
        teams::archive(&state.db, &state.audit, &caller(ctx), &id).await.map(Team).gql()
    }

    /// Deletes a team and its memberships (owners); returns it as it was.
    async fn delete_team(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Team> {
        let state = ctx.data::<AppState>()?;
        teams::delete(&state.db, &state.audit, &state.caches, &caller(ctx), &id).await.map(Team).gql()
    }

    /// Adds a user who has signed in before to a team (owners).
    async fn add_team_member(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        input: TeamMemberInput,
    ) -> async_graphql::Result<TeamMember> {
        let state = ctx.data::<AppState>()?;
        teams::add_member(&state.db, &state.audit, &caller(ctx), &team_id, &input.user_id, input.role.into())
            .await
            .map(TeamMember)
            .gql()
    }

    /// Changes a member's role (owners). The last owner cannot be demoted.
    async fn update_team_member(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        input: TeamMemberInput,
    ) -> async_graphql::Result<TeamMember> {
        let state = ctx.data::<AppState>()?;
        teams::update_member(
            &state.db,
            &state.audit,
            &state.caches,
            &caller(ctx),
            &team_id,
            &input.user_id,
            input.role.into(),
        )
        .await
        .map(TeamMember)
        .gql()
    }

    /// Removes a member (owners), or leaves a team (anyone). The last owner cannot go.
    async fn remove_team_member(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        user_id: ID,
    ) -> async_graphql::Result<TeamMember> {
        let state = ctx.data::<AppState>()?;
        teams::remove_member(&state.db, &state.audit, &state.caches, &caller(ctx), &team_id, &user_id)
            .await
            .map(TeamMember)
            .gql()
    }
}

#[derive(InputObject)]
pub struct CreateTeamInput {
    /// 1 to 100 characters.
    pub name: String,
    /// At most 2000 characters.
    pub description: Option<String>,
    /// PRIVATE (the default) or PUBLIC.
    pub visibility: Option<states::Visibility>,
    /// A TeamSpec document (`"format": "ensemble.team/v1"`).
    pub spec: Option<Json<Value>>,
}

#[derive(InputObject)]
pub struct UpdateTeamInput {
    pub name: Option<String>,
    pub description: Option<String>,
    pub visibility: Option<states::Visibility>,
    /// A new TeamSpec; a new version when it differs from the current one.
    pub spec: Option<Json<Value>>,
    /// Why the spec changed, kept with the version.
    pub message: Option<String>,
}

#[derive(InputObject)]
pub struct TeamMemberInput {
    /// The member's user id.
    pub user_id: ID,
    pub role: states::TeamRole,
}

/// A team of agents.
pub struct Team(pub rows::Model);

#[Object]
impl Team {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    /// Unique, URL-friendly name.
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn description(&self) -> Option<&str> {
        self.0.description.as_deref()
    }
    async fn visibility(&self) -> states::Visibility {
        self.0.visibility.into()
    }
    /// The current spec version.
    async fn version(&self) -> i32 {
        self.0.version
    }
    /// The current TeamSpec document.
    async fn spec(&self) -> Json<&Value> {
        Json(&self.0.spec)
    }
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
    /// When the team was archived, if it was.
    async fn archived_at(&self) -> Option<DateTime<Utc>> {
        self.0.archived_at
    }

    /// How many versions the team has.
    async fn version_count(&self, ctx: &Context<'_>) -> async_graphql::Result<i64> {
        let loaders = ctx.data::<Loaders>()?;
        let count = loaders.version_counts.load_one(self.0.id.clone()).await.gql()?;
        Ok(count.unwrap_or(0))
    }

    /// The team's share links (owners only), newest first.
    async fn share_links(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ShareLink>> {
        let members = self.load_members(ctx).await?;
        let caller = caller(ctx);
        let role = guard::membership(&caller, &self.0.id, &members);
        guard::member_may(&caller, role, TeamRole::Owner, "Only owners see a team's share links.").gql()?;
        let loaders = ctx.data::<Loaders>()?;
        let links = loaders.share_links.load_one(self.0.id.clone()).await.gql()?;
        Ok(links.unwrap_or_default().into_iter().map(ShareLink::from).collect())
    }

    /// Who created the team.
    async fn owner(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let loaders = ctx.data::<Loaders>()?;
        let user = loaders.users.load_one(self.0.owner_id.clone()).await.gql()?;
        Ok(user.map(User::from))
    }

    /// The spec as it was at version `n` (null if there is no such version).
    async fn version_at(&self, ctx: &Context<'_>, n: i32) -> async_graphql::Result<Option<TeamVersion>> {
        let loaders = ctx.data::<Loaders>()?;
        let version = loaders.version_at.load_one((self.0.id.clone(), n)).await.gql()?;
        Ok(version.map(TeamVersion))
    }

    /// The newest `first` versions (20 when absent), newest first; `teamVersions` pages
    /// through them all.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn versions(&self, ctx: &Context<'_>, first: Option<i32>) -> async_graphql::Result<Vec<TeamVersion>> {
        let state = ctx.data::<AppState>()?;
        let count = newest(first, state.config.limits.max_page_size).gql()?;
        let loaders = ctx.data::<Loaders>()?;
        let rows = loaders.versions.load_one((self.0.id.clone(), count)).await.gql()?;
        Ok(rows.unwrap_or_default().into_iter().map(TeamVersion).collect())
    }

    /// Your role on this team (null when you only see it because it is public).
    async fn my_role(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<states::TeamRole>> {
        let members = self.load_members(ctx).await?;
        Ok(guard::membership(&caller(ctx), &self.0.id, &members).map(Into::into))
    }

    /// Who belongs to the team (members and admins only).
    async fn members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<TeamMember>> {
        let members = self.load_members(ctx).await?;
        let caller = caller(ctx);
        let role = guard::membership(&caller, &self.0.id, &members);
        guard::member_may(&caller, role, TeamRole::Viewer, "Only members see who belongs to a team.").gql()?;
        Ok(members.into_iter().map(TeamMember).collect())
    }
}

impl Team {
    async fn load_members(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<team_members::Model>> {
        let loaders = ctx.data::<Loaders>()?;
        let members = loaders.members.load_one(self.0.id.clone()).await.gql()?;
        Ok(members.unwrap_or_default())
    }
}

/// A user's role on a team.
pub struct TeamMember(pub team_members::Model);

#[Object]
impl TeamMember {
    async fn user_id(&self) -> ID {
        ID(self.0.user_id.clone())
    }
    async fn role(&self) -> Option<states::TeamRole> {
        Some(self.0.role.into())
    }
    /// When they joined.
    async fn added_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        let loaders = ctx.data::<Loaders>()?;
        let user = loaders.users.load_one(self.0.user_id.clone()).await.gql()?;
        Ok(user.map(User::from))
    }
}
