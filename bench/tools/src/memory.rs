//! `ensemble-bench memory`: the GraphQL engine's ceiling. An async-graphql 7.2 server with the
//! shape of Ensemble's schema for what the benchmark asks (`team`, `teams` as a connection,
//! `Team.members`, `TeamMember.user`, `updateTeam`) holding the benchmark's data in memory: no
//! database, no sign-in, no limits — only parsing, validation, execution and JSON.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

use async_graphql::{
    Context, EmptySubscription, Enum, ID, InputObject, Object, Schema, SimpleObject,
    connection::{Connection, Edge},
};
use async_graphql_axum::GraphQL;
use axum::{Router, routing::post_service};

use crate::data;

#[derive(Clone, Copy, PartialEq, Eq, Enum)]
enum Visibility {
    Private,
    Public,
}

#[derive(Clone, Copy, PartialEq, Eq, Enum)]
enum TeamRole {
    Owner,
    Editor,
    Operator,
    Viewer,
}

impl TeamRole {
    fn parse(role: &str) -> Self {
        match role {
            "owner" => Self::Owner,
            "editor" => Self::Editor,
            "operator" => Self::Operator,
            _ => Self::Viewer,
        }
    }
}

#[derive(Clone, SimpleObject)]
struct User {
    id: String,
    email: Option<String>,
    display_name: Option<String>,
}

#[derive(Clone)]
struct TeamMember {
    user_id: String,
    role: TeamRole,
}

#[Object]
impl TeamMember {
    async fn user_id(&self) -> ID {
        ID(self.user_id.clone())
    }
    async fn role(&self) -> TeamRole {
        self.role
    }
    async fn user(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        Ok(ctx.data::<Store>()?.users.get(&self.user_id).cloned())
    }
}

struct TeamRow {
    id: String,
    name: String,
    slug: String,
    description: RwLock<String>,
    members: Vec<TeamMember>,
}

#[derive(Clone)]
struct Team(Arc<TeamRow>);

#[Object]
impl Team {
    async fn id(&self) -> ID {
        ID(self.0.id.clone())
    }
    async fn name(&self) -> &str {
        &self.0.name
    }
    async fn slug(&self) -> &str {
        &self.0.slug
    }
    async fn description(&self) -> Option<String> {
        self.0.description.read().ok().map(|d| d.clone())
    }
    async fn visibility(&self) -> Visibility {
        Visibility::Private
    }
    async fn version(&self) -> i32 {
        1
    }
    async fn members(&self) -> Vec<TeamMember> {
        self.0.members.clone()
    }
}

/// The data, teams newest (highest id) first as Ensemble lists them.
struct Store {
    teams: Vec<Team>,
    by_id: HashMap<String, usize>,
    users: HashMap<String, User>,
}

impl Store {
    fn load() -> Self {
        let users = data::users()
            .into_iter()
            .map(|u| (u.id.clone(), User { id: u.id, email: Some(u.email), display_name: Some(u.display_name) }))
            .collect();
        let mut teams: Vec<Team> = data::teams()
            .into_iter()
            .map(|t| {
                Team(Arc::new(TeamRow {
                    id: t.id,
                    name: t.name,
                    slug: t.slug,
                    description: RwLock::new(data::DESCRIPTION.into()),
                    members: t
                        .members
                        .iter()
                        .map(|m| TeamMember { user_id: data::user_id(m.user), role: TeamRole::parse(m.role) })
                        .collect(),
                }))
            })
            .collect();
        teams.sort_by(|a, b| b.0.id.cmp(&a.0.id));
        let by_id = teams.iter().enumerate().map(|(i, t)| (t.0.id.clone(), i)).collect();
        Self { teams, by_id, users }
    }

    fn team(&self, id: &str) -> async_graphql::Result<Team> {
        self.by_id.get(id).map(|&i| self.teams[i].clone()).ok_or_else(|| "Team not found.".into())
    }
}

struct QueryRoot;

#[Object(name = "Query")]
impl QueryRoot {
    async fn team(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Team> {
        ctx.data::<Store>()?.team(&id)
    }

    /// Newest first; `after` is a team id, as in Ensemble.
    async fn teams(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Team>> {
        let store = ctx.data::<Store>()?;
        let first = first.unwrap_or(20).clamp(1, 100) as usize;
        let start = match &after {
            Some(after) => store.teams.partition_point(|t| t.0.id.as_str() >= after.as_str()),
            None => 0,
        };
        let page = &store.teams[start.min(store.teams.len())..];
        let mut connection = Connection::new(after.is_some(), page.len() > first);
        connection.edges.extend(page.iter().take(first).map(|t| Edge::new(t.0.id.clone(), t.clone())));
        Ok(connection)
    }
}

#[derive(InputObject)]
struct UpdateTeamInput {
    description: Option<String>,
}

struct MutationRoot;

#[Object(name = "Mutation")]
impl MutationRoot {
    async fn update_team(&self, ctx: &Context<'_>, id: ID, input: UpdateTeamInput) -> async_graphql::Result<Team> {
        let team = ctx.data::<Store>()?.team(&id)?;
        if let Some(description) = input.description {
            *team.0.description.write().map_err(|_| "the description lock is poisoned")? = description;
        }
        Ok(team)
    }
}

pub async fn serve(listen: SocketAddr) -> Result<(), String> {
    let schema = Schema::build(QueryRoot, MutationRoot, EmptySubscription).data(Store::load()).finish();
    let app = Router::new().route("/graphql", post_service(GraphQL::new(schema)));
    let listener =
        tokio::net::TcpListener::bind(listen).await.map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    axum::serve(listener, app).with_graceful_shutdown(crate::terminated()).await.map_err(|e| e.to_string())
}
