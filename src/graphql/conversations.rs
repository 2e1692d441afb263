//! Conversations: `conversation`, `conversations`, `startConversation`, `sendMessage`,
//! `forkConversation`.

use async_graphql::{ComplexObject, Context, ID, Object, SimpleObject, connection::Connection};
use chrono::{DateTime, Utc};
use entity::{conversations as rows, messages};

use super::{caller, connection, loaders::Loaders, runs::Run};
use crate::{
    domain::TeamRole,
    error::GqlResultExt,
    service::{conversations, page::PageRequest, runs::RunInput},
    state::AppState,
};

#[derive(Default)]
pub struct ConversationsQuery;

#[Object]
impl ConversationsQuery {
    /// A conversation of a team you may see.
    async fn conversation(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Conversation> {
        let state = ctx.data::<AppState>()?;
        conversations::get(&state.db, &caller(ctx), &id, TeamRole::Viewer).await.map(Conversation::from).gql()
    }

    /// A team's conversations, newest first (by when they were started).
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn conversations(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, Conversation>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let rows = conversations::list(&state.db, &caller(ctx), &team_id, &page).await.gql()?;
        Ok(connection(&page, rows, |c| c.id.clone(), Conversation::from))
    }
}

#[derive(Default)]
pub struct ConversationsMutation;

#[Object]
impl ConversationsMutation {
    /// Starts an empty conversation with a team (operators and up).
    async fn start_conversation(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
        title: String,
    ) -> async_graphql::Result<Conversation> {
        let state = ctx.data::<AppState>()?;
        conversations::start(&state.db, state.writer.as_ref(), &caller(ctx), &team_id, &title)
            .await
            .map(Conversation::from)
            .gql()
    }

    /// Sends a message and runs the team on it, waiting for the answer. It answers
    /// `parentMessageId` (a new branch when that message already has an answer), or else the
    /// conversation's newest message.
    async fn send_message(
        &self,
        ctx: &Context<'_>,
        conversation_id: ID,
        content: String,
        parent_message_id: Option<ID>,
    ) -> async_graphql::Result<Run> {
        let state = ctx.data::<AppState>()?;
        let caller = caller(ctx);
        let conversation = conversations::get(&state.db, &caller, &conversation_id, TeamRole::Operator).await.gql()?;
        let input = RunInput {
            content,
            conversation_id: Some(conversation.id),
            parent_message_id: parent_message_id.map(|id| id.0),
            ..Default::default()
        };
        state.runner.start(&caller, &conversation.team_id, input, true).await.map(Run).gql()
    }

    /// Copies the path from the root to `messageId` into a new conversation.
    async fn fork_conversation(
        &self,
        ctx: &Context<'_>,
        message_id: ID,
        title: String,
    ) -> async_graphql::Result<Conversation> {
        let state = ctx.data::<AppState>()?;
        conversations::fork(&state.db, state.writer.as_ref(), &caller(ctx), &message_id, &title)
            .await
            .map(Conversation::from)
            .gql()
    }
}

/// A conversation with a team: a tree of messages.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct Conversation {
    pub id: ID,
    pub team_id: ID,
    pub title: String,
    /// Who started it.
    pub user_id: ID,
    /// The message this conversation was forked from.
    pub forked_from_message_id: Option<ID>,
    pub created_at: DateTime<Utc>,
}

impl From<rows::Model> for Conversation {
    fn from(c: rows::Model) -> Self {
        Self {
            id: ID(c.id),
            team_id: ID(c.team_id),
            title: c.title,
            user_id: ID(c.user_id),
            forked_from_message_id: c.forked_from_message_id.map(ID),
            created_at: c.created_at,
        }
    }
}

impl Conversation {
    /// Every message, oldest first, loaded once per request with the other conversations'.
    async fn all(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<messages::Model>> {
        let loaders = ctx.data::<Loaders>()?;
        let all = loaders.messages.load_one(self.id.to_string()).await.gql()?;
        Ok(all.unwrap_or_default())
    }
}

#[ComplexObject]
impl Conversation {
    /// The last message of every branch, oldest branch first.
    async fn branches(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Message>> {
        Ok(conversations::leaves(&self.all(ctx).await?).into_iter().map(Message::from).collect())
    }

    /// The path from the root to `leafId` (default: the newest message).
    async fn messages(&self, ctx: &Context<'_>, leaf_id: Option<ID>) -> async_graphql::Result<Vec<Message>> {
        let all = self.all(ctx).await?;
        let Some(leaf) = leaf_id.map(|id| id.0).or_else(|| all.last().map(|m| m.id.clone())) else {
            return Ok(Vec::new());
        };
        Ok(conversations::path(&all, &leaf).into_iter().map(Message::from).collect())
    }

    /// Every message with its parent, oldest first: enough to draw the whole tree.
    async fn tree(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Message>> {
        Ok(self.all(ctx).await?.iter().map(Message::from).collect())
    }
}

/// One message of a conversation.
#[derive(SimpleObject)]
pub struct Message {
    pub id: ID,
    /// The message this one answers; null for a root.
    pub parent_id: Option<ID>,
    /// `user`, `assistant` or `system`.
    pub role: String,
    /// The agent that wrote an answer.
    pub agent: Option<String>,
    pub content: String,
    pub run_id: Option<ID>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub created_at: DateTime<Utc>,
}

impl From<&messages::Model> for Message {
    fn from(m: &messages::Model) -> Self {
        Self {
            id: ID(m.id.clone()),
            parent_id: m.parent_id.clone().map(ID),
            role: m.role.to_string(),
            agent: m.agent.clone(),
            content: m.content.clone(),
            run_id: m.run_id.clone().map(ID),
            tokens_in: m.tokens_in,
            tokens_out: m.tokens_out,
            cost_usd: m.cost_usd,
            created_at: m.created_at,
        }
    }
}
