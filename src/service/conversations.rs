//! Conversations are trees of messages: answering from any earlier message starts a branch,
//! and a run sees the path from the root to the message it answers. Forking copies one path
//! into a new conversation.

use std::collections::{HashMap, HashSet};

use chrono::{SubsecRound, Utc};
use entity::{conversations, messages};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};

use crate::{
    auth::guard,
    db::{
        self,
        batch::{Batch, BatchWriter, OnGuard},
    },
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
    orchestrator::providers::{ChatMessage, Role},
    service::{
        name::Name,
        page::{Page, PageRequest},
    },
};

/// Where a run's message goes in a conversation, and what the model sees before it.
pub struct Thread {
    pub conversation_id: String,
    /// The message the new one answers (none: the conversation's first message).
    pub parent_id: Option<String>,
    /// The path root → parent.
    pub history: Vec<ChatMessage>,
}

fn bad(path: &str, message: &str) -> AppError {
    AppError::invalid(vec![Problem::new(path, message)])
}

fn check_title(title: &str) -> Result<String, AppError> {
    match Name::parse("title", title, 200) {
        Ok(title) => Ok(title.into_string()),
        Err(problem) => Err(bad("title", &problem.message)),
    }
}

/// The thread a run in `team_id` continues: the conversation (given, or the parent message's),
/// and the parent (given, or the conversation's newest message).
pub async fn thread_for_run(
    db: &DatabaseConnection,
    team_id: &str,
    conversation_id: Option<&str>,
    parent_id: Option<&str>,
) -> Result<Option<Thread>, AppError> {
    let conversation_id_given = conversation_id.is_some();
    let conversation_id = match (conversation_id, parent_id) {
        (None, None) => return Ok(None),
        (Some(id), _) => id.to_string(),
        (None, Some(parent)) => {
            messages::Entity::find_by_id(parent)
                .one(db)
                .await?
                .ok_or_else(|| bad("input.parentMessageId", "No such message."))?
                .conversation_id
        }
    };
    // Found through the message alone: one of another team is as unknown as no message at all.
    let missing = if conversation_id_given {
        bad("input.conversationId", "No such conversation in this team.")
    } else {
        bad("input.parentMessageId", "No such message.")
    };
    let conversation = conversations::Entity::find_by_id(&conversation_id)
        .one(db)
        .await?
        .filter(|c| c.team_id == team_id)
        .ok_or(missing)?;
    let all = messages_of(db, &conversation.id).await?;
    let parent = match parent_id {
        Some(id) => Some(
            all.iter()
                .find(|m| m.id == id)
                .ok_or_else(|| bad("input.parentMessageId", "The message is not part of this conversation."))?,
        ),
        None => all.last(),
    };
    let history = match parent {
        Some(parent) => path(&all, &parent.id)
            .into_iter()
            .map(|m| ChatMessage { role: m.role, content: m.content.clone() })
            .collect(),
        None => Vec::new(),
    };
    Ok(Some(Thread { conversation_id: conversation.id, parent_id: parent.map(|p| p.id.clone()), history }))
}

/// A message a run adds to a conversation.
pub struct NewMessage<'a> {
    pub conversation_id: &'a str,
    pub parent_id: Option<String>,
    pub role: Role,
    pub agent: Option<String>,
    pub content: &'a str,
    pub run_id: &'a str,
    /// Tokens in and out and US dollars, for an answer.
    pub usage: (i64, i64, f64),
}

/// The row of a new message (written with its run).
pub fn new_message(new: NewMessage<'_>) -> messages::Model {
    let (tokens_in, tokens_out, cost_usd) = new.usage;
    messages::Model {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        conversation_id: new.conversation_id.to_string(),
        parent_id: new.parent_id,
        role: new.role,
        agent: new.agent,
        content: new.content.to_string(),
        run_id: Some(new.run_id.to_string()),
        tokens_in,
        tokens_out,
        cost_usd,
        created_at: Utc::now().trunc_subsecs(6),
    }
}

/// Starts an empty conversation with a team (operators and up): one insert, the row built here.
pub async fn start(
    db: &DatabaseConnection,
    writer: &dyn BatchWriter,
    caller: &Caller,
    team_id: &str,
    title: &str,
) -> Result<conversations::Model, AppError> {
    let title = check_title(title)?;
    guard::team(db, caller, team_id, TeamRole::Operator).await?;
    let now = Utc::now().trunc_subsecs(6);
    let conversation = conversations::Model {
        id: format!("conv_{}", uuid::Uuid::now_v7().simple()),
        team_id: team_id.to_string(),
        user_id: caller.principal.user_id().unwrap_or_default().to_string(),
        title,
        forked_from_message_id: None,
        created_at: now,
        last_active_at: Some(now),
    };
    let row = conversations::ActiveModel::from(conversation.clone()).reset_all();
    let insert = conversations::Entity::insert(row).into_query();
    let batch = Batch::new(writer.backend()).write(&insert);
    db::batch::write(writer, || async { Ok(batch.clone()) }, |_, _| OnGuard::Retry).await?;
    Ok(conversation)
}

/// A conversation the caller may see (any role on its team), with `need` checked.
pub async fn get(
    db: &DatabaseConnection,
    caller: &Caller,
    id: &str,
    need: TeamRole,
) -> Result<conversations::Model, AppError> {
    let not_found = || AppError::NotFound("No such conversation.".into());
    let conversation = conversations::Entity::find_by_id(id).one(db).await?.ok_or_else(not_found)?;
    guard::team(db, caller, &conversation.team_id, need).await.map_err(|e| match e {
        AppError::NotFound(_) => not_found(),
        other => other,
    })?;
    Ok(conversation)
}

/// A team's conversations (any role on the team), newest first: the order they were started
/// in, which paging cannot skip or repeat, unlike their last activity.
pub async fn list(
    db: &DatabaseConnection,
    caller: &Caller,
    team_id: &str,
    page: &PageRequest,
) -> Result<Page<conversations::Model>, AppError> {
    guard::team(db, caller, team_id, TeamRole::Viewer).await?;
    let mut query = conversations::Entity::find().filter(conversations::Column::TeamId.eq(team_id));
    if let Some(after) = &page.after {
        query = query.filter(conversations::Column::Id.lt(after.as_str()));
    }
    let rows = query.order_by_desc(conversations::Column::Id).limit(page.first + 1).all(db).await?;
    Ok(page.page(rows))
}

/// Every message of a conversation, oldest first.
pub async fn messages_of(db: &DatabaseConnection, conversation_id: &str) -> Result<Vec<messages::Model>, AppError> {
    Ok(messages::Entity::find()
        .filter(messages::Column::ConversationId.eq(conversation_id))
        .order_by_asc(messages::Column::Id)
        .all(db)
        .await?)
}

/// The path root → `leaf_id` (empty when it is not among `all`).
pub fn path<'a>(all: &'a [messages::Model], leaf_id: &str) -> Vec<&'a messages::Model> {
    let by_id: HashMap<&str, &messages::Model> = all.iter().map(|m| (m.id.as_str(), m)).collect();
    let mut path = Vec::new();
    let mut at = by_id.get(leaf_id).copied();
    while let Some(message) = at {
        if path.len() > all.len() {
            break;
        }
        path.push(message);
        at = message.parent_id.as_deref().and_then(|p| by_id.get(p).copied());
    }
    path.reverse();
    path
}

/// The messages nothing answers yet: one per branch, oldest branch first.
pub fn leaves(all: &[messages::Model]) -> Vec<&messages::Model> {
    let parents: HashSet<&str> = all.iter().filter_map(|m| m.parent_id.as_deref()).collect();
    all.iter().filter(|m| !parents.contains(m.id.as_str())).collect()
}

/// Copies the path root → `message_id` into a new conversation of the same team: one batch of
/// inserts (the messages chunked to D1's parameter limit), nothing to guard: every row is new.
pub async fn fork(
    db: &DatabaseConnection,
    writer: &dyn BatchWriter,
    caller: &Caller,
    message_id: &str,
    title: &str,
) -> Result<conversations::Model, AppError> {
    let title = check_title(title)?;
    let not_found = || AppError::NotFound("No such message.".into());
    let message = messages::Entity::find_by_id(message_id).one(db).await?.ok_or_else(not_found)?;
    let source = get(db, caller, &message.conversation_id, TeamRole::Operator).await.map_err(|e| match e {
        AppError::NotFound(_) => not_found(),
        other => other,
    })?;
    let all = messages_of(db, &source.id).await?;
    let now = Utc::now().trunc_subsecs(6);
    let conversation = conversations::Model {
        id: format!("conv_{}", uuid::Uuid::now_v7().simple()),
        team_id: source.team_id.clone(),
        user_id: caller.principal.user_id().unwrap_or_default().to_string(),
        title,
        forked_from_message_id: Some(message_id.to_string()),
        created_at: now,
        last_active_at: Some(now),
    };
    let mut parent: Option<String> = None;
    let copies = path(&all, message_id)
        .into_iter()
        .map(|original| {
            let id = format!("msg_{}", uuid::Uuid::now_v7().simple());
            let copy = messages::Model {
                id: id.clone(),
                conversation_id: conversation.id.clone(),
                parent_id: parent.replace(id),
                ..original.clone()
            };
            messages::ActiveModel::from(copy).reset_all()
        })
        .collect();
    let insert = conversations::Entity::insert(conversations::ActiveModel::from(conversation.clone())).into_query();
    let batch = Batch::new(writer.backend()).write(&insert).insert_chunked(copies);
    db::batch::write(writer, || async { Ok(batch.clone()) }, |_, _| OnGuard::Retry).await?;
    Ok(conversation)
}
