//! `instantiateTemplate`: a team made from a TEAM or DEMO template, its system prompts rendered
//! with the given variables (a DEMO's sample conversation copied into it), and `renderTemplate`
//! for QUERY templates.

use chrono::{Duration, SubsecRound, Utc};
use entity::{conversations, messages};
use sea_orm::{ActiveModelTrait, ConnectionTrait, EntityTrait};
use serde_json::{Value, json};

use super::{
    Resolved, Templates,
    body::{self, DemoMessage, Kind},
    refuse,
};
use crate::{
    auth::guard::acting_user,
    db,
    domain::{Caller, Scope},
    error::{AppError, Problem},
    service::{
        audit::{self, Entry, actions},
        teams::{self, NewTeam},
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
        let txn = db::begin_write(&self.db).await?;
        let team = teams::insert(&txn, owner, new, spec).await?;
        let mut changes = json!({"template": resolved.template.id, "version": resolved.version.version,
            "name": team.name, "slug": team.slug});
        if resolved.kind == Kind::Demo {
            let conversation =
                replay(&txn, &team, &owner.id, &resolved.template.name, &body::conversation(&resolved.version.body))
                    .await?;
            changes["conversation"] = conversation.into();
        }
        let entry = Entry::new(actions::TEMPLATE_INSTANTIATE, "team", team.id.clone()).team(&team.id).changes(changes);
        audit::allowed(&txn, caller, entry).await?;
        txn.commit().await?;
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

/// Copies a DEMO's sample conversation into `team` as one thread; answers its id.
async fn replay<C: ConnectionTrait>(
    txn: &C,
    team: &entity::teams::Model,
    user_id: &str,
    title: &str,
    sample: &[DemoMessage],
) -> Result<String, AppError> {
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
    conversations::ActiveModel::from(conversation).reset_all().insert(txn).await?;
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
        rows.push(messages::ActiveModel::from(row).reset_all());
    }
    if !rows.is_empty() {
        messages::Entity::insert_many(rows).exec_without_returning(txn).await?;
    }
    Ok(conversation_id)
}
