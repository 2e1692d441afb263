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
        let spec = teams::check_new(&new, &self.allowed.providers).map_err(|error| match error {
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

/// How many messages one `INSERT` carries at most: D1 binds at most 100 parameters per
/// statement (docs/write-path.md, "D1's limits: chunking").
fn messages_per_insert() -> usize {
    100 / <messages::Entity as EntityTrait>::Column::iter().count()
}

/// How many bytes of content one `INSERT` carries at most, under D1's 100 KB per statement (a
/// longer message, up to the 20,000 characters a DEMO allows, goes alone).
const CONTENT_PER_INSERT: usize = 60_000;

impl Replay {
    /// The conversation's insert, then its messages' in statements of at most
    /// [`messages_per_insert`] rows and [`CONTENT_PER_INSERT`] bytes of content.
    fn into_batch(self, backend: DbBackend) -> Batch {
        let conversation = conversations::Entity::insert(conversations::ActiveModel::from(self.conversation));
        let mut batch = Batch::new(backend).write(&conversation.into_query());
        let mut chunks: Vec<Vec<messages::ActiveModel>> = Vec::new();
        let mut content = 0;
        for message in self.messages {
            let fits = chunks.last().is_some_and(|chunk| {
                chunk.len() < messages_per_insert() && content + message.content.len() <= CONTENT_PER_INSERT
            });
            if !fits {
                chunks.push(Vec::new());
                content = 0;
            }
            content += message.content.len();
            chunks.last_mut().into_iter().for_each(|chunk| chunk.push(message.clone().into()));
        }
        for rows in chunks {
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

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use entity::{conversations, messages, states::MessageRole};
    use sea_orm::DbBackend;

    use super::{Replay, messages_per_insert};

    fn replay(contents: &[usize]) -> Replay {
        let conversation = conversations::Model {
            id: "conv_1".into(),
            team_id: "team_1".into(),
            user_id: "user_1".into(),
            title: "Demo".into(),
            forked_from_message_id: None,
            created_at: Utc::now(),
            last_active_at: None,
        };
        let messages = contents
            .iter()
            .enumerate()
            .map(|(i, len)| messages::Model {
                id: format!("msg_{i}"),
                conversation_id: "conv_1".into(),
                parent_id: None,
                role: MessageRole::User,
                agent: None,
                content: "x".repeat(*len),
                run_id: None,
                tokens_in: 0,
                tokens_out: 0,
                cost_usd: 0.0,
                created_at: Utc::now(),
            })
            .collect();
        Replay { conversation, messages }
    }

    #[test]
    fn messages_go_in_inserts_that_d1_takes() {
        assert_eq!(messages_per_insert(), 9, "11 columns, 100 parameters");
        // The conversation, then 40 short messages in statements of 9.
        assert_eq!(replay(&[10; 40]).into_batch(DbBackend::Sqlite).len(), 1 + 5);
        // Three long messages of 25,000 bytes: two fit one statement, the third takes another.
        assert_eq!(replay(&[25_000; 3]).into_batch(DbBackend::Sqlite).len(), 1 + 2);
        assert_eq!(replay(&[]).into_batch(DbBackend::Sqlite).len(), 1);
    }
}
