//! What a template holds, by kind, and the checks and rendering over it — pure functions, no
//! database. Bodies are JSON; variables are a list of declarations. Template text (query
//! prompts, workflow step prompts, a team's system prompts) is rendered by minijinja in a
//! sandbox: no file access, fuel and recursion limits, strict undefined variables.
//!
//! Body shapes (canonical form is what `check` answers and what is stored):
//! - TEAM: a TeamSpec (`ensemble.team/v1`), in the canonical form `versions::validate_spec` gives.
//! - QUERY: `{"prompt": "Summarise {{ text }}"}`.
//! - WORKFLOW: `{"steps": [{"id": "research", "agent": "researcher", "prompt": "…"},
//!   {"id": "summary", "template": "summarise", "variables": {"text": "{{ steps.research.output }}"}}]}`
//!   — each step has an `id` (lowercase letters, digits, `-`, `_`), an optional `agent` of the
//!   team it runs on (absent: the team's routing decides), and exactly one of `prompt` (template
//!   text) or `template` (the id or slug of a QUERY template, optional `version`, and
//!   `variables`: a map whose string values are template text rendered before being passed).
//!   Later steps read earlier outputs as `{{ steps.<id>.output }}`. A step may carry a `when`
//!   condition, `timeoutMs` and `retry`; a node `{"id", "loop": {"steps", "until",
//!   "maxIterations"}}` repeats its steps, `{"id", "approval": {"message", "timeoutMs",
//!   "onTimeout"}}` waits for an operator (docs/workflows.md); `limits` bound the whole run.
//! - DEMO: `{"team": <TeamSpec>, "conversation": [{"role": "user", "content": "…"},
//!   {"role": "assistant", "agent": "triage", "content": "…"}]}`.

mod declarations;
mod demo;
mod steps;
#[cfg(test)]
mod tests;
mod text;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use self::text::Scope;
use crate::{config::ProviderSettings, error::Problem, orchestrator::prompts::is_template, service::versions};

/// The longest prompt a QUERY template or a workflow step may hold, in characters.
const MAX_PROMPT_CHARS: usize = 100_000;

pub use entity::states::TemplateKind as Kind;

/// The type a variable's value must have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, async_graphql::Enum)]
#[serde(rename_all = "lowercase")]
#[graphql(rename_items = "SCREAMING_SNAKE_CASE")]
pub enum VariableType {
    String,
    Number,
    Integer,
    Boolean,
    Array,
    Object,
}

/// One declared variable.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Variable {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: VariableType,
    #[serde(default)]
    pub required: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A body and its declarations that passed `check`, in canonical form.
#[derive(Clone, Debug, PartialEq)]
pub struct Checked {
    pub body: Value,
    pub variables: Vec<Variable>,
}

/// One node of a WORKFLOW body, parsed: a step, a loop of steps, or an approval.
#[derive(Clone, Debug, PartialEq)]
pub enum Node {
    Step(Step),
    Loop(Loop),
    Approval(Approval),
}

/// A pause until an operator approves or rejects (`approveWorkflowStep`).
#[derive(Clone, Debug, PartialEq)]
pub struct Approval {
    pub id: String,
    pub path: String,
    pub when: Option<String>,
    /// What the operator is asked, as template text.
    pub message: Option<String>,
    /// How long to wait for a decision; forever when absent.
    pub timeout_ms: Option<u64>,
    pub on_timeout: OnTimeout,
}

/// What an approval that timed out does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnTimeout {
    /// The workflow fails (`APPROVAL_TIMEOUT`).
    Fail,
    /// As if approved.
    Approve,
    /// As if rejected: the workflow fails (`REJECTED`).
    Reject,
}

impl OnTimeout {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Fail => "fail",
            Self::Approve => "approve",
            Self::Reject => "reject",
        }
    }
}

/// Steps repeated until `until` holds, at most `max_iterations` times.
#[derive(Clone, Debug, PartialEq)]
pub struct Loop {
    pub id: String,
    /// Where it is in the body (`body.steps[2]`), for problems.
    pub path: String,
    /// Run only when this condition holds.
    pub when: Option<String>,
    pub steps: Vec<Step>,
    /// Checked after each round; the loop ends when it holds.
    pub until: String,
    pub max_iterations: u32,
}

/// One workflow step, parsed.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub id: String,
    /// Where it is in the body (`body.steps[1]`, `body.steps[2].loop.steps[0]`), for problems.
    pub path: String,
    /// Run only when this condition holds.
    pub when: Option<String>,
    pub agent: Option<String>,
    pub source: StepSource,
    /// Longest the step's run may take, in milliseconds (below the team's own limit).
    pub timeout_ms: Option<u64>,
    /// The retry policy of the step's run, checked as a spec's `retry`; the team's when absent.
    pub retry: Option<Value>,
}

/// A workflow's own `limits`.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WorkflowLimits {
    /// Most step executions a run may start.
    pub max_steps: Option<u32>,
    /// Most its steps' runs may cost together, in US dollars.
    pub max_cost_usd: Option<f64>,
    /// Longest the whole run may take, in milliseconds.
    pub timeout_ms: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub enum StepSource {
    /// Template text rendered with the workflow's variables and `steps`.
    Prompt(String),
    /// A QUERY template (id or slug), rendered with `variables` after each string value is
    /// itself rendered like a prompt.
    Template { template: String, version: Option<i32>, variables: Map<String, Value> },
}

/// A message of a DEMO's sample conversation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DemoMessage {
    /// `user` or `assistant`.
    pub role: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    pub content: String,
}

/// What the server allows in a body: the providers a TEAM's agents may use, and the most
/// rounds a workflow loop may run (`ENSEMBLE_WORKFLOW_MAX_ITERATIONS`).
#[derive(Clone)]
pub struct Allowed {
    pub providers: ProviderSettings,
    pub max_iterations: u32,
}

impl Default for Allowed {
    /// The built-in providers and the default cap.
    fn default() -> Self {
        Self { providers: ProviderSettings::default(), max_iterations: DEFAULT_MAX_ITERATIONS }
    }
}

/// The default of `ENSEMBLE_WORKFLOW_MAX_ITERATIONS`.
pub const DEFAULT_MAX_ITERATIONS: u32 = 20;

/// Checks a body and its variable declarations for `kind`, listing every problem with its path
/// (`body.…`, `variables[i].…`) and, for template syntax errors, line and column.
/// A TEAM body's agents (a DEMO's team's) may use the providers `allowed` names.
pub fn check(kind: Kind, body: &Value, variables: &Value, allowed: &Allowed) -> Result<Checked, Vec<Problem>> {
    let providers = &allowed.providers;
    let mut problems = Vec::new();
    let declared = declarations::parse(variables, &mut problems);
    let names = declarations::names(variables);
    let scope = Scope { variables: &names, steps: None };
    let body = match kind {
        Kind::Team => team("body", body, &scope, providers, &mut problems),
        Kind::Query => query(body, &scope, &mut problems),
        Kind::Workflow => steps::check(body, &names, allowed.max_iterations, &mut problems),
        Kind::Demo => demo::check(body, &scope, providers, &mut problems),
    };
    if problems.is_empty() { Ok(Checked { body, variables: declared }) } else { Err(problems) }
}

/// The given values checked against the declarations, with defaults filled in: every missing
/// required variable, wrong type and unknown name is a problem at `variables.<name>`.
pub fn values(declared: &[Variable], given: &Value) -> Result<Map<String, Value>, Vec<Problem>> {
    declarations::values(declared, given)
}

/// Renders template text with `context` in the sandbox. A syntax error, a missing variable or a
/// render that runs out of fuel is a problem at `path`.
pub fn render(path: &str, text: &str, context: &Map<String, Value>) -> Result<String, Vec<Problem>> {
    text::render(path, text, context)
}

/// Every step of a checked WORKFLOW body in the order it lists them, loops' steps in place.
pub fn steps(body: &Value) -> Vec<Step> {
    nodes(body)
        .into_iter()
        .flat_map(|node| match node {
            Node::Step(step) => vec![step],
            Node::Loop(looped) => looped.steps,
            Node::Approval(_) => Vec::new(),
        })
        .collect()
}

/// The nodes of a checked WORKFLOW body.
pub fn nodes(body: &Value) -> Vec<Node> {
    steps::parse(body)
}

/// Whether `condition` holds in `context`; a syntax error, a missing value, or an evaluation
/// that runs out of fuel is a problem at `path`.
pub fn holds(path: &str, condition: &str, context: &Map<String, Value>) -> Result<bool, Vec<Problem>> {
    text::evaluate(path, condition, context)
}

/// The `limits` of a checked WORKFLOW body.
pub fn workflow_limits(body: &Value) -> WorkflowLimits {
    steps::limits(body, &mut Vec::new())
}

/// The team spec of a checked TEAM or DEMO body with every system prompt rendered with
/// `values` (already checked by `values`).
pub fn team_spec(kind: Kind, body: &Value, values: &Map<String, Value>) -> Result<Value, Vec<Problem>> {
    let (path, spec) = match kind {
        Kind::Team => ("body", body),
        Kind::Demo => ("body.team", body.get("team").unwrap_or(&Value::Null)),
        Kind::Query | Kind::Workflow => {
            let message = format!("a {} template holds no team; only team and demo templates do", kind);
            return Err(vec![Problem::new("kind", message)]);
        }
    };
    let mut spec = spec.clone();
    let mut problems = Vec::new();
    let agents = spec.get_mut("agents").and_then(Value::as_array_mut).map(Vec::as_mut_slice).unwrap_or_default();
    for (i, agent) in agents.iter_mut().enumerate() {
        if let Some(Value::String(prompt)) = agent.get_mut("systemPrompt")
            && is_template(prompt)
        {
            match text::render(&format!("{path}.agents[{i}].systemPrompt"), prompt, values) {
                Ok(rendered) => *prompt = rendered,
                Err(found) => problems.extend(found),
            }
        }
    }
    if problems.is_empty() { Ok(spec) } else { Err(problems) }
}

/// The sample conversation of a checked DEMO body.
pub fn conversation(body: &Value) -> Vec<DemoMessage> {
    demo::conversation(body)
}

/// The canonical spec of a TEAM body (or a DEMO's team) at `path`, or null: problems from
/// `validate_spec` moved under `path`, and every system prompt that is a template checked
/// against `scope`.
fn team(path: &str, spec: &Value, scope: &Scope, providers: &ProviderSettings, problems: &mut Vec<Problem>) -> Value {
    let canonical = versions::validate_spec(spec, providers).unwrap_or_else(|found| {
        problems.extend(found.into_iter().map(|problem| {
            let rest = problem.path.strip_prefix("spec").unwrap_or(&problem.path);
            Problem { path: format!("{path}{rest}"), ..problem }
        }));
        Value::Null
    });
    let agents = spec.get("agents").and_then(Value::as_array).map(Vec::as_slice).unwrap_or_default();
    for (i, agent) in agents.iter().enumerate() {
        if let Some(prompt) = agent.get("systemPrompt").and_then(Value::as_str)
            && is_template(prompt)
        {
            text::check(&format!("{path}.agents[{i}].systemPrompt"), prompt, scope, problems);
        }
    }
    canonical
}

/// The canonical QUERY body: `{"prompt": …}`, the prompt checked against `scope`.
fn query(body: &Value, scope: &Scope, problems: &mut Vec<Problem>) -> Value {
    let Some(obj) = object(body, "body", "must be an object with a `prompt`", problems) else {
        return Value::Null;
    };
    unknown_fields("body", obj, &["prompt"], "query", problems);
    let Some(prompt) = string_field(obj, "prompt", "body", MAX_PROMPT_CHARS, true, problems) else {
        return Value::Null;
    };
    text::check("body.prompt", prompt, scope, problems);
    json!({ "prompt": prompt })
}

/// `value` as an object, or a problem at `path` saying what it must be.
fn object<'a>(
    value: &'a Value,
    path: &str,
    must_be: &str,
    problems: &mut Vec<Problem>,
) -> Option<&'a Map<String, Value>> {
    let obj = value.as_object();
    if obj.is_none() {
        problems.push(Problem::new(path, must_be));
    }
    obj
}

/// A problem at `path.<key>` for every key of `obj` not in `allowed`; `what` names the object.
fn unknown_fields(path: &str, obj: &Map<String, Value>, allowed: &[&str], what: &str, problems: &mut Vec<Problem>) {
    for key in obj.keys().filter(|key| !allowed.contains(&key.as_str())) {
        problems.push(Problem::new(format!("{path}.{key}"), format!("is not a field of a {what}")));
    }
}

/// The string at `obj[key]`: not blank and at most `max` characters, or a problem at
/// `path.<key>`. Absent (or null) is a problem only when `required`.
fn string_field<'a>(
    obj: &'a Map<String, Value>,
    key: &str,
    path: &str,
    max: usize,
    required: bool,
    problems: &mut Vec<Problem>,
) -> Option<&'a str> {
    let message = match obj.get(key) {
        None | Some(Value::Null) if !required => return None,
        None | Some(Value::Null) => "is required".to_string(),
        Some(Value::String(text)) if text.trim().is_empty() => "must not be empty".to_string(),
        Some(Value::String(text)) if text.chars().count() > max => format!("must be at most {max} characters"),
        Some(Value::String(text)) => return Some(text),
        Some(_) => "must be a string".to_string(),
    };
    problems.push(Problem::new(format!("{path}.{key}"), message));
    None
}
