//! WORKFLOW bodies: `{"steps": [...]}`, each step a prompt or a QUERY template run in order,
//! reading earlier steps' outputs as `{{ steps.<id>.output }}`.

use std::collections::{BTreeSet, HashSet};

use serde_json::{Map, Value, json};

use super::{
    MAX_PROMPT_CHARS, Step, StepSource, WorkflowLimits, object, string_field,
    text::{self, Scope},
    unknown_fields,
};
use crate::{
    error::Problem,
    orchestrator::spec::{self, MAX_TIMEOUT_MS},
};

const MAX_STEPS: usize = 20;
const MAX_ID_CHARS: usize = 40;
const MAX_NAME_CHARS: usize = 200;
const FIELDS: [&str; 8] = ["id", "agent", "prompt", "template", "version", "variables", "timeoutMs", "retry"];
/// Most step executions a workflow's `limits.maxSteps` may allow.
pub const MAX_STEP_EXECUTIONS: u32 = 1000;

/// A step as written: the parts that are valid.
#[derive(Default)]
struct Draft {
    id: Option<String>,
    agent: Option<String>,
    source: Option<StepSource>,
    timeout_ms: Option<u64>,
    retry: Option<Value>,
}

/// The canonical body, checking structure, step ids, and every text's syntax and references.
pub(super) fn check(body: &Value, variables: &BTreeSet<&str>, problems: &mut Vec<Problem>) -> Value {
    let drafts = drafts(body, problems);
    let ids: Vec<Option<&str>> = drafts.iter().map(|draft| draft.id.as_deref()).collect();
    for (i, draft) in drafts.iter().enumerate() {
        let scope = Scope { variables, steps: Some((&ids, i)) };
        match &draft.source {
            Some(StepSource::Prompt(prompt)) => {
                text::check(&format!("body.steps[{i}].prompt"), prompt, &scope, problems)
            }
            Some(StepSource::Template { variables, .. }) => {
                for (name, value) in variables {
                    if let Some(value) = value.as_str() {
                        text::check(&format!("body.steps[{i}].variables.{name}"), value, &scope, problems);
                    }
                }
            }
            None => {}
        }
    }
    let steps: Vec<Value> = drafts.into_iter().filter_map(Draft::step).map(|step| to_json(&step)).collect();
    let limits = limits(body, problems);
    let mut canonical = json!({ "steps": steps });
    if limits != WorkflowLimits::default() {
        let mut out = Map::new();
        if let Some(n) = limits.max_steps {
            out.insert("maxSteps".into(), json!(n));
        }
        if let Some(usd) = limits.max_cost_usd {
            out.insert("maxCostUsd".into(), json!(usd));
        }
        if let Some(ms) = limits.timeout_ms {
            out.insert("timeoutMs".into(), json!(ms));
        }
        canonical["limits"] = Value::Object(out);
    }
    canonical
}

/// The body's `limits`, each checked: `maxSteps` (1 to 1,000), `maxCostUsd` (not negative) and
/// `timeoutMs` (1 ms to an hour).
pub(super) fn limits(body: &Value, problems: &mut Vec<Problem>) -> WorkflowLimits {
    let Some(value) = body.get("limits").filter(|v| !v.is_null()) else { return WorkflowLimits::default() };
    let Some(obj) = object(value, "body.limits", "must be an object", problems) else {
        return WorkflowLimits::default();
    };
    unknown_fields("body.limits", obj, &["maxSteps", "maxCostUsd", "timeoutMs"], "workflow limit", problems);
    let max_steps = whole(obj.get("maxSteps"), "body.limits.maxSteps", u64::from(MAX_STEP_EXECUTIONS), problems);
    let max_cost_usd = match obj.get("maxCostUsd") {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_f64().filter(|usd| *usd >= 0.0) {
            Some(usd) => Some(usd),
            None => {
                problems.push(Problem::new("body.limits.maxCostUsd", "must be a number of US dollars, 0 or more"));
                None
            }
        },
    };
    WorkflowLimits {
        max_steps: max_steps.map(|n| n as u32),
        max_cost_usd,
        timeout_ms: whole(obj.get("timeoutMs"), "body.limits.timeoutMs", MAX_TIMEOUT_MS, problems),
    }
}

/// A whole number from 1 to `most`, when given.
fn whole(value: Option<&Value>, path: &str, most: u64, problems: &mut Vec<Problem>) -> Option<u64> {
    match value {
        None | Some(Value::Null) => None,
        Some(value) => match value.as_u64().filter(|n| (1..=most).contains(n)) {
            Some(n) => Some(n),
            None => {
                problems.push(Problem::new(path, format!("must be a whole number from 1 to {most}")));
                None
            }
        },
    }
}

/// The steps of a checked body.
pub(super) fn parse(body: &Value) -> Vec<Step> {
    drafts(body, &mut Vec::new()).into_iter().filter_map(Draft::step).collect()
}

fn drafts(body: &Value, problems: &mut Vec<Problem>) -> Vec<Draft> {
    let Some(obj) = object(body, "body", "must be an object with `steps`", problems) else {
        return Vec::new();
    };
    unknown_fields("body", obj, &["steps", "limits"], "workflow", problems);
    let list = match obj.get("steps").and_then(Value::as_array) {
        Some(list) if (1..=MAX_STEPS).contains(&list.len()) => list.as_slice(),
        _ => {
            problems.push(Problem::new("body.steps", format!("must list 1 to {MAX_STEPS} steps")));
            return Vec::new();
        }
    };
    let mut seen = HashSet::new();
    list.iter().enumerate().map(|(i, step)| draft(&format!("body.steps[{i}]"), step, &mut seen, problems)).collect()
}

fn draft(path: &str, step: &Value, seen: &mut HashSet<String>, problems: &mut Vec<Problem>) -> Draft {
    let Some(obj) = object(step, path, "must be an object with an `id`", problems) else {
        return Draft::default();
    };
    unknown_fields(path, obj, &FIELDS, "step", problems);
    let id = id(path, obj.get("id"), seen, problems);
    let agent = string_field(obj, "agent", path, MAX_NAME_CHARS, false, problems).map(str::to_string);
    let source = match (obj.contains_key("prompt"), obj.contains_key("template")) {
        (true, true) => {
            problems.push(Problem::new(path, "has both `prompt` and `template`; keep one"));
            None
        }
        (false, false) => {
            problems.push(Problem::new(path, "needs a `prompt` or a `template`"));
            None
        }
        (true, false) => prompt(path, obj, problems),
        (false, true) => template(path, obj, problems),
    };
    let timeout_ms = whole(obj.get("timeoutMs"), &format!("{path}.timeoutMs"), MAX_TIMEOUT_MS, problems);
    let retry = obj.get("retry").filter(|v| !v.is_null()).and_then(|value| {
        match spec::retry_policy(value, &format!("{path}.retry")) {
            Ok(_) => Some(value.clone()),
            Err(found) => {
                problems.extend(found);
                None
            }
        }
    });
    Draft { id, agent, source, timeout_ms, retry }
}

fn id(path: &str, value: Option<&Value>, seen: &mut HashSet<String>, problems: &mut Vec<Problem>) -> Option<String> {
    let message = match value {
        None | Some(Value::Null) => "is required".to_string(),
        Some(Value::String(id)) if !is_step_id(id) => format!(
            "`{id}` is not a valid step id: use lowercase letters, digits, `-` and `_`, starting with a letter or \
             digit, at most {MAX_ID_CHARS} characters"
        ),
        Some(Value::String(id)) if !seen.insert(id.clone()) => format!("`{id}` is the id of an earlier step too"),
        Some(Value::String(id)) => return Some(id.clone()),
        Some(_) => "must be a string".to_string(),
    };
    problems.push(Problem::new(format!("{path}.id"), message));
    None
}

fn is_step_id(id: &str) -> bool {
    let mut chars = id.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
        && id.len() <= MAX_ID_CHARS
}

fn prompt(path: &str, obj: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<StepSource> {
    for key in ["version", "variables"].into_iter().filter(|key| obj.contains_key(*key)) {
        problems.push(Problem::new(format!("{path}.{key}"), "goes with `template`, not with `prompt`"));
    }
    let prompt = string_field(obj, "prompt", path, MAX_PROMPT_CHARS, true, problems)?;
    Some(StepSource::Prompt(prompt.to_string()))
}

fn template(path: &str, obj: &Map<String, Value>, problems: &mut Vec<Problem>) -> Option<StepSource> {
    let template = string_field(obj, "template", path, MAX_NAME_CHARS, true, problems);
    let version = match obj.get("version") {
        None | Some(Value::Null) => Some(None),
        Some(value) => match value.as_i64().and_then(|n| i32::try_from(n).ok()).filter(|n| *n > 0) {
            Some(version) => Some(Some(version)),
            None => {
                problems.push(Problem::new(format!("{path}.version"), "must be a positive whole number"));
                None
            }
        },
    };
    let variables = match obj.get("variables") {
        None | Some(Value::Null) => Some(Map::new()),
        Some(Value::Object(variables)) => Some(variables.clone()),
        Some(_) => {
            problems.push(Problem::new(format!("{path}.variables"), "must be an object of variable values"));
            None
        }
    };
    Some(StepSource::Template { template: template?.to_string(), version: version?, variables: variables? })
}

impl Draft {
    fn step(self) -> Option<Step> {
        Some(Step {
            id: self.id?,
            agent: self.agent,
            source: self.source?,
            timeout_ms: self.timeout_ms,
            retry: self.retry,
        })
    }
}

/// The canonical form of a step: absent optionals and empty `variables` omitted.
fn to_json(step: &Step) -> Value {
    let mut out = Map::new();
    out.insert("id".into(), json!(step.id));
    if let Some(agent) = &step.agent {
        out.insert("agent".into(), json!(agent));
    }
    match &step.source {
        StepSource::Prompt(prompt) => {
            out.insert("prompt".into(), json!(prompt));
        }
        StepSource::Template { template, version, variables } => {
            out.insert("template".into(), json!(template));
            if let Some(version) = version {
                out.insert("version".into(), json!(version));
            }
            if !variables.is_empty() {
                out.insert("variables".into(), Value::Object(variables.clone()));
            }
        }
    }
    if let Some(ms) = step.timeout_ms {
        out.insert("timeoutMs".into(), json!(ms));
    }
    if let Some(retry) = &step.retry {
        out.insert("retry".into(), retry.clone());
    }
    Value::Object(out)
}
