//! DEMO bodies: `{"team": <TeamSpec>, "conversation": [...]}`, a team and a sample conversation
//! with it.

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use super::{DemoMessage, object, string_field, team, text::Scope, unknown_fields};
use crate::{config::ProviderSettings, error::Problem};

const MAX_MESSAGES: usize = 100;
const MAX_CONTENT_CHARS: usize = 20_000;
const MESSAGE_FIELDS: [&str; 3] = ["role", "agent", "content"];

/// The canonical body, checking the team (as a TEAM body, at `body.team`) and the conversation.
pub(super) fn check(body: &Value, scope: &Scope, providers: &ProviderSettings, problems: &mut Vec<Problem>) -> Value {
    let Some(obj) = object(body, "body", "must be an object with a `team` and a `conversation`", problems) else {
        return Value::Null;
    };
    unknown_fields("body", obj, &["team", "conversation"], "demo", problems);
    let spec = obj.get("team").unwrap_or(&Value::Null);
    let team = team("body.team", spec, scope, providers, problems);
    let conversation = messages(obj, &agent_names(spec), problems);
    json!({"team": team, "conversation": conversation})
}

/// The conversation of a checked body.
pub(super) fn conversation(body: &Value) -> Vec<DemoMessage> {
    let (Some(obj), Some(spec)) = (body.as_object(), body.get("team")) else {
        return Vec::new();
    };
    messages(obj, &agent_names(spec), &mut Vec::new())
}

/// The names of the team's agents, as written.
fn agent_names(spec: &Value) -> BTreeSet<&str> {
    let agents = spec.get("agents").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    agents.iter().filter_map(|agent| agent.get("name")?.as_str()).collect()
}

fn messages(obj: &Map<String, Value>, agents: &BTreeSet<&str>, problems: &mut Vec<Problem>) -> Vec<DemoMessage> {
    match obj.get("conversation").and_then(Value::as_array) {
        Some(list) if (1..=MAX_MESSAGES).contains(&list.len()) => list
            .iter()
            .enumerate()
            .filter_map(|(i, item)| message(&format!("body.conversation[{i}]"), item, agents, problems))
            .collect(),
        _ => {
            problems.push(Problem::new("body.conversation", format!("must hold 1 to {MAX_MESSAGES} messages")));
            Vec::new()
        }
    }
}

fn message(path: &str, item: &Value, agents: &BTreeSet<&str>, problems: &mut Vec<Problem>) -> Option<DemoMessage> {
    let obj = object(item, path, "must be an object with a `role` and a `content`", problems)?;
    unknown_fields(path, obj, &MESSAGE_FIELDS, "message", problems);
    let role = match obj.get("role").and_then(Value::as_str) {
        Some(role @ ("user" | "assistant")) => Some(role),
        _ => {
            problems.push(Problem::new(format!("{path}.role"), "must be `user` or `assistant`"));
            None
        }
    };
    let content = string_field(obj, "content", path, MAX_CONTENT_CHARS, true, problems);
    let agent = match (obj.get("agent").filter(|agent| !agent.is_null()), role) {
        (None, _) => None,
        (Some(_), Some("user")) => {
            problems.push(Problem::new(format!("{path}.agent"), "only assistant messages name an agent"));
            None
        }
        (Some(Value::String(agent)), _) if agents.contains(agent.as_str()) => Some(agent.clone()),
        (Some(Value::String(agent)), _) => {
            problems.push(Problem::new(format!("{path}.agent"), format!("`{agent}` is not an agent of the team")));
            None
        }
        (Some(_), _) => {
            problems.push(Problem::new(format!("{path}.agent"), "must be the name of an agent of the team"));
            None
        }
    };
    Some(DemoMessage { role: role?.to_string(), agent, content: content?.to_string() })
}
