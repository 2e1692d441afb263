//! WORKFLOW bodies: `{"steps": [...], "limits": {...}}`. A step runs a prompt or a QUERY
//! template; a loop repeats its own steps until its `until` condition holds, at most
//! `maxIterations` times; a step or a loop with a `when` condition runs only when it holds.
//! Texts and conditions read earlier outputs as `steps.<id>.output` (a looped step's latest),
//! a looped step's every iteration as `steps.<id>.iterations` and, inside a loop, the round as
//! `loop.index` (from 1).

use std::{
    collections::{BTreeSet, HashSet},
    ops::Range,
};

use serde_json::{Map, Value, json};

use super::{
    Approval, Loop, MAX_PROMPT_CHARS, Node, OnTimeout, Step, StepSource, WorkflowLimits, object, string_field,
    text::{self, Scope, StepScope},
    unknown_fields,
};
use crate::{
    error::Problem,
    orchestrator::spec::{self, MAX_TIMEOUT_MS},
};

/// Most steps a workflow holds, loops' steps included.
const MAX_STEPS: usize = 20;
const MAX_ID_CHARS: usize = 40;
const MAX_NAME_CHARS: usize = 200;
/// The longest condition, in characters.
const MAX_CONDITION_CHARS: usize = 2_000;
const FIELDS: [&str; 9] = ["id", "agent", "prompt", "template", "version", "variables", "timeoutMs", "retry", "when"];
const LOOP_FIELDS: [&str; 3] = ["id", "loop", "when"];
const APPROVAL_FIELDS: [&str; 3] = ["id", "approval", "when"];
/// Longest an approval may wait: 30 days.
const MAX_APPROVAL_WAIT_MS: u64 = 30 * 24 * 3_600_000;
/// Most step executions a workflow's `limits.maxSteps` may allow.
pub const MAX_STEP_EXECUTIONS: u32 = 1000;

/// A node as written: the parts that are valid.
enum Draft {
    Step(StepDraft),
    Loop(LoopDraft),
    Approval(ApprovalDraft),
}

struct ApprovalDraft {
    path: String,
    id: Option<String>,
    when: Option<String>,
    message: Option<String>,
    timeout_ms: Option<u64>,
    on_timeout: Option<OnTimeout>,
}

#[derive(Default)]
struct StepDraft {
    path: String,
    id: Option<String>,
    agent: Option<String>,
    source: Option<StepSource>,
    timeout_ms: Option<u64>,
    retry: Option<Value>,
    when: Option<String>,
}

struct LoopDraft {
    path: String,
    id: Option<String>,
    when: Option<String>,
    steps: Vec<StepDraft>,
    until: Option<String>,
    max_iterations: Option<u32>,
}

/// The canonical body, checking structure, step ids, loops (`maxIterations` at most
/// `max_iterations`), and every text's and condition's syntax and references.
pub(super) fn check(
    body: &Value,
    variables: &BTreeSet<&str>,
    max_iterations: u32,
    problems: &mut Vec<Problem>,
) -> Value {
    let drafts = drafts(body, max_iterations, problems);
    let ids = ids(&drafts);
    let scope_at = |current: usize, within: Option<Range<usize>>| Scope {
        variables,
        steps: Some(StepScope { ids: &ids, current, within }),
    };
    let mut at = 0;
    for draft in &drafts {
        match draft {
            Draft::Step(step) => {
                check_step(step, &scope_at(at, None), problems);
                at += 1;
            }
            Draft::Approval(approval) => {
                let scope = scope_at(at, None);
                if let Some(when) = &approval.when {
                    text::check_condition(&format!("{}.when", approval.path), when, &scope, problems);
                }
                if let Some(message) = &approval.message {
                    text::check(&format!("{}.approval.message", approval.path), message, &scope, problems);
                }
                at += 1;
            }
            Draft::Loop(looped) => {
                let range = at..at + looped.steps.len();
                if let Some(when) = &looped.when {
                    text::check_condition(&format!("{}.when", looped.path), when, &scope_at(at, None), problems);
                }
                for (i, step) in looped.steps.iter().enumerate() {
                    check_step(step, &scope_at(at + i, Some(range.clone())), problems);
                }
                if let Some(until) = &looped.until {
                    let scope = scope_at(range.end, Some(range.clone()));
                    text::check_condition(&format!("{}.loop.until", looped.path), until, &scope, problems);
                }
                at = range.end;
            }
        }
    }
    let nodes: Vec<Value> = drafts.into_iter().filter_map(Draft::node).map(|node| node_json(&node)).collect();
    let limits = limits(body, problems);
    let mut canonical = json!({ "steps": nodes });
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

/// Checks a step's texts and its condition in `scope`.
fn check_step(step: &StepDraft, scope: &Scope, problems: &mut Vec<Problem>) {
    let path = &step.path;
    match &step.source {
        Some(StepSource::Prompt(prompt)) => text::check(&format!("{path}.prompt"), prompt, scope, problems),
        Some(StepSource::Template { variables, .. }) => {
            for (name, value) in variables {
                if let Some(value) = value.as_str() {
                    text::check(&format!("{path}.variables.{name}"), value, scope, problems);
                }
            }
        }
        None => {}
    }
    if let Some(when) = &step.when {
        text::check_condition(&format!("{path}.when"), when, scope, problems);
    }
}

/// The nodes of a checked body.
pub(super) fn parse(body: &Value) -> Vec<Node> {
    drafts(body, u32::MAX, &mut Vec::new()).into_iter().filter_map(Draft::node).collect()
}

/// The id of every step and approval in the order the body lists them, loops' steps in place
/// (None where one has no valid id).
fn ids(drafts: &[Draft]) -> Vec<Option<&str>> {
    drafts
        .iter()
        .flat_map(|draft| match draft {
            Draft::Step(step) => vec![step.id.as_deref()],
            Draft::Approval(approval) => vec![approval.id.as_deref()],
            Draft::Loop(looped) => looped.steps.iter().map(|step| step.id.as_deref()).collect(),
        })
        .collect()
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

fn drafts(body: &Value, max_iterations: u32, problems: &mut Vec<Problem>) -> Vec<Draft> {
    let Some(obj) = object(body, "body", "must be an object with `steps`", problems) else {
        return Vec::new();
    };
    unknown_fields("body", obj, &["steps", "limits"], "workflow", problems);
    let Some(list) = listed(obj.get("steps"), "body.steps", problems) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let drafts: Vec<Draft> = list
        .iter()
        .enumerate()
        .map(|(i, node)| {
            let path = format!("body.steps[{i}]");
            if node.get("loop").is_some() {
                Draft::Loop(loop_draft(path, node, max_iterations, &mut seen, problems))
            } else if node.get("approval").is_some() {
                Draft::Approval(approval_draft(path, node, &mut seen, problems))
            } else {
                Draft::Step(draft(path, node, &mut seen, problems))
            }
        })
        .collect();
    let total = ids(&drafts).len();
    if total > MAX_STEPS {
        problems
            .push(Problem::new("body.steps", format!("holds {total} steps with its loops'; the limit is {MAX_STEPS}")));
    }
    drafts
}

/// A list of 1 to [`MAX_STEPS`] nodes at `path`.
fn listed<'a>(value: Option<&'a Value>, path: &str, problems: &mut Vec<Problem>) -> Option<&'a [Value]> {
    match value.and_then(Value::as_array) {
        Some(list) if (1..=MAX_STEPS).contains(&list.len()) => Some(list.as_slice()),
        _ => {
            problems.push(Problem::new(path, format!("must list 1 to {MAX_STEPS} steps")));
            None
        }
    }
}

/// A loop node: `{"id", "when"?, "loop": {"steps": [...], "until": "<condition>",
/// "maxIterations": N}}`; its steps are plain steps.
fn loop_draft(
    path: String,
    node: &Value,
    max_iterations: u32,
    seen: &mut HashSet<String>,
    problems: &mut Vec<Problem>,
) -> LoopDraft {
    let empty = Map::new();
    let obj = node.as_object().unwrap_or(&empty);
    unknown_fields(&path, obj, &LOOP_FIELDS, "loop", problems);
    let id = id(&path, obj.get("id"), seen, problems);
    let when = condition(obj, "when", &path, false, problems);
    let inner_path = format!("{path}.loop");
    let Some(inner) =
        object(&obj["loop"], &inner_path, "must be an object with `steps`, `until` and `maxIterations`", problems)
    else {
        return LoopDraft { path, id, when, steps: Vec::new(), until: None, max_iterations: None };
    };
    unknown_fields(&inner_path, inner, &["steps", "until", "maxIterations"], "loop", problems);
    let steps = listed(inner.get("steps"), &format!("{inner_path}.steps"), problems).unwrap_or_default();
    let steps = steps
        .iter()
        .enumerate()
        .filter_map(|(i, step)| {
            let step_path = format!("{inner_path}.steps[{i}]");
            for (key, kind) in [("loop", "a loop"), ("approval", "an approval")] {
                if step.get(key).is_some() {
                    problems.push(Problem::new(step_path, format!("is {kind}; a loop's steps are plain steps")));
                    return None;
                }
            }
            Some(draft(step_path, step, seen, problems))
        })
        .collect();
    let until = condition(inner, "until", &inner_path, true, problems);
    let max_iterations = match inner.get("maxIterations") {
        None | Some(Value::Null) => {
            let message = format!("is required: a whole number from 1 to {max_iterations}, the most rounds it runs");
            problems.push(Problem::new(format!("{inner_path}.maxIterations"), message));
            None
        }
        value => {
            whole(value, &format!("{inner_path}.maxIterations"), u64::from(max_iterations), problems).map(|n| n as u32)
        }
    };
    LoopDraft { path, id, when, steps, until, max_iterations }
}

/// An approval node: `{"id", "when"?, "approval": {"message"?, "timeoutMs"?, "onTimeout"?}}`;
/// `onTimeout` (`fail`, `approve` or `reject`) needs a `timeoutMs`.
fn approval_draft(
    path: String,
    node: &Value,
    seen: &mut HashSet<String>,
    problems: &mut Vec<Problem>,
) -> ApprovalDraft {
    let empty = Map::new();
    let obj = node.as_object().unwrap_or(&empty);
    unknown_fields(&path, obj, &APPROVAL_FIELDS, "approval", problems);
    let id = id(&path, obj.get("id"), seen, problems);
    let when = condition(obj, "when", &path, false, problems);
    let inner_path = format!("{path}.approval");
    let inner = match &obj["approval"] {
        Value::Null => Some(&empty),
        value => object(value, &inner_path, "must be an object (it may be empty)", problems),
    };
    let Some(inner) = inner else {
        return ApprovalDraft { path, id, when, message: None, timeout_ms: None, on_timeout: None };
    };
    unknown_fields(&inner_path, inner, &["message", "timeoutMs", "onTimeout"], "approval", problems);
    let message = string_field(inner, "message", &inner_path, MAX_PROMPT_CHARS, false, problems).map(str::to_string);
    let timeout_ms = whole(inner.get("timeoutMs"), &format!("{inner_path}.timeoutMs"), MAX_APPROVAL_WAIT_MS, problems);
    let on_timeout = match inner.get("onTimeout") {
        None | Some(Value::Null) => Some(OnTimeout::Fail),
        Some(value) => {
            let found = match value.as_str() {
                Some("fail") => Some(OnTimeout::Fail),
                Some("approve") => Some(OnTimeout::Approve),
                Some("reject") => Some(OnTimeout::Reject),
                _ => None,
            };
            let onto = format!("{inner_path}.onTimeout");
            match found {
                None => problems.push(Problem::new(onto, "must be `fail`, `approve` or `reject`")),
                Some(_) if timeout_ms.is_none() && inner.get("timeoutMs").is_none() => {
                    problems.push(Problem::new(onto, "needs a `timeoutMs`: without one, an approval waits forever"));
                }
                Some(_) => {}
            }
            found
        }
    };
    ApprovalDraft { path, id, when, message, timeout_ms, on_timeout }
}

/// A condition at `obj[key]`: an expression, at most [`MAX_CONDITION_CHARS`] characters.
fn condition(
    obj: &Map<String, Value>,
    key: &str,
    path: &str,
    required: bool,
    problems: &mut Vec<Problem>,
) -> Option<String> {
    string_field(obj, key, path, MAX_CONDITION_CHARS, required, problems).map(str::to_string)
}

fn draft(path: String, step: &Value, seen: &mut HashSet<String>, problems: &mut Vec<Problem>) -> StepDraft {
    let Some(obj) = object(step, &path, "must be an object with an `id`", problems) else {
        return StepDraft { path, ..StepDraft::default() };
    };
    let path = path.as_str();
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
    let when = condition(obj, "when", path, false, problems);
    StepDraft { path: path.to_string(), id, agent, source, timeout_ms, retry, when }
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
    fn node(self) -> Option<Node> {
        match self {
            Draft::Step(step) => step.step().map(Node::Step),
            Draft::Approval(approval) => Some(Node::Approval(Approval {
                id: approval.id?,
                path: approval.path,
                when: approval.when,
                message: approval.message,
                timeout_ms: approval.timeout_ms,
                on_timeout: approval.on_timeout?,
            })),
            Draft::Loop(looped) => {
                let steps: Vec<Step> = looped.steps.into_iter().filter_map(StepDraft::step).collect();
                Some(Node::Loop(Loop {
                    id: looped.id?,
                    path: looped.path,
                    when: looped.when,
                    steps,
                    until: looped.until?,
                    max_iterations: looped.max_iterations?,
                }))
            }
        }
    }
}

impl StepDraft {
    fn step(self) -> Option<Step> {
        Some(Step {
            id: self.id?,
            path: self.path,
            agent: self.agent,
            source: self.source?,
            timeout_ms: self.timeout_ms,
            retry: self.retry,
            when: self.when,
        })
    }
}

/// The canonical form of a node.
fn node_json(node: &Node) -> Value {
    match node {
        Node::Step(step) => to_json(step),
        Node::Approval(approval) => {
            let mut inner = Map::new();
            if let Some(message) = &approval.message {
                inner.insert("message".into(), json!(message));
            }
            if let Some(ms) = approval.timeout_ms {
                inner.insert("timeoutMs".into(), json!(ms));
                inner.insert("onTimeout".into(), json!(approval.on_timeout.as_str()));
            }
            let mut out = Map::new();
            out.insert("id".into(), json!(approval.id));
            if let Some(when) = &approval.when {
                out.insert("when".into(), json!(when));
            }
            out.insert("approval".into(), Value::Object(inner));
            Value::Object(out)
        }
        Node::Loop(looped) => {
            let mut out = Map::new();
            out.insert("id".into(), json!(looped.id));
            if let Some(when) = &looped.when {
                out.insert("when".into(), json!(when));
            }
            let steps: Vec<Value> = looped.steps.iter().map(to_json).collect();
            out.insert(
                "loop".into(),
                json!({"steps": steps, "until": looped.until, "maxIterations": looped.max_iterations}),
            );
            Value::Object(out)
        }
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
    if let Some(when) = &step.when {
        out.insert("when".into(), json!(when));
    }
    Value::Object(out)
}
