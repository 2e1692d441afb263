//! `instantiateTemplate`: a team made from a TEAM or DEMO template, its system prompts rendered
//! with the given variables (a DEMO's sample conversation copied into it), and `renderTemplate`
//! for QUERY templates.

use chrono::{Duration, SubsecRound, Utc};
use entity::{conversations, messages};
use sea_orm::{DbBackend, EntityTrait, Iterable, QueryTrait};
use serde_json::{Value, json};

use super::{
    Resolved, Templates,
    body::{self, DemoMessage, Kind},
    refuse,
};
use crate::{
    auth::guard::acting_user,
    db::batch::{Batch, OnGuard},
    domain::{Caller, Scope},
    error::{AppError, Problem},
    service::{
        audit::{Audited, Entry, actions},
        teams::{self, Inserted, NewTeam},
    },
};

/// What to make a team from.
pub struct Instantiate {
    /// The new team's name.
    pub name: String,
    /// A version to use; the current one when absent.
    pub version: Option<i32>,
    pub variables: Value,
}

impl Templates {
    /// A new team, owned by the caller, from a TEAM or DEMO template they may use.
    pub async fn instantiate(
        &self,
        caller: &Caller,
        id: &str,
        input: Instantiate,
    ) -> Result<entity::teams::Model, AppError> {
        let owner = acting_user(caller, Scope::TeamsWrite)?;
        let resolved = self.resolve(caller, id, input.version).await?;
        if !matches!(resolved.kind, Kind::Team | Kind::Demo) {
            return Err(not_kind(&resolved, "id", "only TEAM and DEMO templates make teams"));
        }
        let values = resolved.values(&input.variables)?;
        let spec = body::team_spec(resolved.kind, &resolved.version.body, &values).map_err(refuse)?;
        let new = NewTeam {
            name: input.name,
            description: resolved.template.description.clone(),
            visibility: None,
            spec: Some(spec),
        };
        let spec = teams::check_new(&new, &self.providers).map_err(|error| match error {
            AppError::BadUserInput { message, problems } => AppError::BadUserInput {
                message,
                problems: problems.into_iter().map(|p| Problem { path: format!("input.{}", p.path), ..p }).collect(),
            },
            other => other,
        })?;
        let (db, audit) = (&self.db, self.audit());
        let conversation = (resolved.kind == Kind::Demo).then(|| body::conversation(&resolved.version.body));
        let (team, _) = audit
            .write(
                caller,
                || async {
                    let Inserted { team, mut batch } =
                        teams::plan_insert(db, audit.writer().backend(), owner, &new, &spec).await?;
                    let mut changes = json!({"template": resolved.template.id, "version": resolved.version.version,
                        "name": team.name, "slug": team.slug});
                    if let Some(sample) = &conversation {
                        let (conversation_id, replayed) = replay(&team, &owner.id, &resolved.template.name, sample)?;
                        batch = batch.then(replayed.into_batch(audit.writer().backend()));
                        changes["conversation"] = conversation_id.into();
                    }
                    let entry = Entry::new(actions::TEMPLATE_INSTANTIATE, "team", team.id.clone())
                        .team(&team.id)
                        .changes(changes);
                    Ok(Audited { batch, entry, answer: team })
                },
                // `slug_taken`: a team of that slug came first; the next attempt takes a suffix.
                |_, _| OnGuard::Retry,
            )
            .await?;
        Ok(team)
    }

    /// A QUERY template's prompt rendered with `variables`.
    pub async fn render(
        &self,
        caller: &Caller,
        id: &str,
        version: Option<i32>,
        variables: &Value,
    ) -> Result<String, AppError> {
        let resolved = self.resolve(caller, id, version).await?;
        if resolved.kind != Kind::Query {
            return Err(not_kind(&resolved, "id", "only QUERY templates render"));
        }
        let values = resolved.values(variables)?;
        let prompt = resolved.version.body["prompt"].as_str().unwrap_or_default();
        body::render("template", prompt, &values).map_err(refuse)
    }
}

fn not_kind(resolved: &Resolved, path: &str, rule: &str) -> AppError {
    let message =
        format!("`{}` is a {} template; {rule}.", resolved.template.slug, resolved.kind.to_string().to_uppercase());
    AppError::BadUserInput { problems: vec![Problem::new(path, message.clone())], message }
}

/// A DEMO's sample conversation as rows of `team`: one thread.
struct Replay {
    conversation: conversations::Model,
    messages: Vec<messages::Model>,
}

/// How many messages one `INSERT` carries: D1 binds at most 100 parameters per statement
/// (docs/write-path.md, "D1's limits: chunking").
fn messages_per_insert() -> usize {
    100 / <messages::Entity as EntityTrait>::Column::iter().count()
}

impl Replay {
    /// The conversation's insert, then its messages' in statements of [`messages_per_insert`]
    /// rows.
    fn into_batch(self, backend: DbBackend) -> Batch {
        let conversation = conversations::Entity::insert(conversations::ActiveModel::from(self.conversation));
        let mut batch = Batch::new(backend).write(&conversation.into_query());
        for chunk in self.messages.chunks(messages_per_insert()) {
            let rows = chunk.iter().cloned().map(messages::ActiveModel::from);
            batch = batch.write(&messages::Entity::insert_many(rows).into_query());
        }
        batch
    }
}

/// Copies a DEMO's sample conversation into `team` as one thread; answers its id and rows.
fn replay(
    team: &entity::teams::Model,
    user_id: &str,
    title: &str,
    sample: &[DemoMessage],
) -> Result<(String, Replay), AppError> {
    let now = Utc::now().trunc_subsecs(6);
    let conversation = conversations::Model {
        id: format!("conv_{}", uuid::Uuid::now_v7().simple()),
        team_id: team.id.clone(),
        user_id: user_id.to_string(),
        title: title.chars().take(200).collect(),
        forked_from_message_id: None,
        created_at: now,
        last_active_at: Some(now),
    };
    let conversation_id = conversation.id.clone();
    let mut parent = None;
    let mut rows = Vec::with_capacity(sample.len());
    for (i, message) in sample.iter().enumerate() {
        let row = messages::Model {
            id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
            conversation_id: conversation_id.clone(),
            parent_id: parent.take(),
            role: sea_orm::ActiveEnum::try_from_value(&message.role)?,
            agent: message.agent.clone(),
            content: message.content.clone(),
            run_id: None,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            created_at: now + Duration::microseconds(i as i64),
        };
        parent = Some(row.id.clone());
        rows.push(row);
    }
    Ok((conversation_id.clone(), Replay { conversation, messages: rows }))
}
