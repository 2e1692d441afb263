//! TeamSpec (`"format": "ensemble.team/v1"`): agents, routing rules, fallbacks, retry and
//! limits, parsed once into validated types. Every problem is collected with its path, so a
//! caller sees them all at once; a valid spec serialises back to one canonical document.

use std::collections::{BTreeMap, HashMap, HashSet};

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value, json};

use crate::error::Problem;

pub const FORMAT: &str = "ensemble.team/v1";
/// The largest `limits.timeoutMs` a spec may set: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;
const MAX_AGENTS: usize = 50;
const MAX_RULES: usize = 200;
const MAX_REGEX_LEN: usize = 1000;
const REGEX_SIZE_LIMIT: usize = 1 << 18;
const MAX_CONDITION_DEPTH: usize = 8;
const ERROR_CLASSES: [&str; 8] = [
    "timeout",
    "rate_limited",
    "server_error",
    "context_length",
    "content_filter",
    "auth",
    "bad_request",
    "connection",
];

#[derive(Clone, Debug)]
pub struct TeamSpec {
    pub agents: Vec<Agent>,
    pub routing: Routing,
    pub fallbacks: BTreeMap<String, Vec<Fallback>>,
    pub retry: RetryPolicy,
    pub limits: Limits,
}

#[derive(Clone, Debug)]
pub struct Agent {
    pub name: String,
    /// `provider/model`.
    pub model: String,
    pub system_prompt: String,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    pub description: Option<String>,
}

#[derive(Clone, Debug)]
pub struct Routing {
    pub rules: Vec<Rule>,
    pub default: String,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub when: Condition,
    pub route_to: String,
}

#[derive(Clone, Debug)]
pub enum Condition {
    Contains(Vec<String>),
    Regex(Regex),
    LengthAbove(u64),
    LengthBelow(u64),
    Variable { name: String, equals: Value },
    All(Vec<Condition>),
    Any(Vec<Condition>),
    Not(Box<Condition>),
}

/// One step of an agent's fallback chain: `"bigger"`, or `{"agent": "bigger", "on":
/// ["context_length"]}` to take it only after those error classes.
#[derive(Clone, Debug, PartialEq)]
pub struct Fallback {
    pub agent: String,
    pub on: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff_ms: u64,
    pub max_backoff_ms: u64,
    pub multiplier: f64,
    pub jitter: bool,
    pub retry_on: Vec<String>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            initial_backoff_ms: 200,
            max_backoff_ms: 5000,
            multiplier: 2.0,
            jitter: true,
            retry_on: vec!["timeout".into(), "rate_limited".into(), "server_error".into()],
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct Limits {
    pub timeout_ms: Option<u64>,
    pub max_cost_usd: Option<f64>,
}

/// Collects problems under a path.
struct Checker<'a> {
    problems: Vec<Problem>,
    known_provider: &'a dyn Fn(&str) -> bool,
}

impl Checker<'_> {
    fn problem(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.problems.push(Problem::new(path, message));
    }

    fn string(&mut self, obj: &Map<String, Value>, key: &str, path: &str, required: bool) -> Option<String> {
        match obj.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Some(s.clone()),
            None | Some(Value::Null) | Some(Value::String(_)) if !required => None,
            Some(Value::String(_)) | None | Some(Value::Null) => {
                self.problem(format!("{path}.{key}"), "is required");
                None
            }
            Some(_) => {
                self.problem(format!("{path}.{key}"), "must be a string");
                None
            }
        }
    }

    fn number(&mut self, obj: &Map<String, Value>, key: &str, path: &str, range: (f64, f64)) -> Option<f64> {
        match obj.get(key) {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(v) if v >= range.0 && v <= range.1 => Some(v),
                _ => {
                    self.problem(format!("{path}.{key}"), format!("must be between {} and {}", range.0, range.1));
                    None
                }
            },
            Some(_) => {
                self.problem(format!("{path}.{key}"), "must be a number");
                None
            }
        }
    }
}

/// Parses and validates a spec; `known_provider` says which `provider/` prefixes exist.
pub fn parse(value: &Value, known_provider: &dyn Fn(&str) -> bool) -> Result<TeamSpec, Vec<Problem>> {
    let mut c = Checker { problems: Vec::new(), known_provider };
    let Some(root) = value.as_object() else {
        return Err(vec![Problem::new("spec", "must be a JSON object")]);
    };
    match root.get("format").and_then(Value::as_str) {
        Some(FORMAT) => {}
        Some(other) => c.problem("spec.format", format!("`{other}` is not `{FORMAT}`")),
        None => c.problem("spec.format", format!("is required (`{FORMAT}`)")),
    }
    for key in root.keys() {
        if !["format", "agents", "routing", "fallbacks", "retry", "limits"].contains(&key.as_str()) {
            c.problem(format!("spec.{key}"), "is not a TeamSpec field");
        }
    }
    let agents = agents(&mut c, root.get("agents"));
    let names: HashSet<&str> = agents.iter().map(|a| a.name.as_str()).collect();
    let routing = routing(&mut c, root.get("routing"), &names, &agents);
    let fallbacks = fallbacks(&mut c, root.get("fallbacks"), &names);
    let retry = retry(&mut c, root.get("retry"), "spec.retry");
    let limits = limits(&mut c, root.get("limits"));
    if c.problems.is_empty() { Ok(TeamSpec { agents, routing, fallbacks, retry, limits }) } else { Err(c.problems) }
}

fn agents(c: &mut Checker, value: Option<&Value>) -> Vec<Agent> {
    let Some(list) = value.and_then(Value::as_array).filter(|l| !l.is_empty()) else {
        c.problem("spec.agents", "must list at least one agent");
        return Vec::new();
    };
    if list.len() > MAX_AGENTS {
        c.problem("spec.agents", format!("at most {MAX_AGENTS} agents"));
    }
    let mut seen = HashSet::new();
    let mut agents = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("spec.agents[{i}]");
        let Some(obj) = item.as_object() else {
            c.problem(path, "must be an object");
            continue;
        };
        let name = c.string(obj, "name", &path, true);
        let model = c.string(obj, "model", &path, true);
        if let Some(model) = &model {
            match model.split_once('/') {
                Some((provider, name)) if !provider.is_empty() && !name.is_empty() => {
                    if !(c.known_provider)(provider) {
                        let variable = crate::config::providers::base_url_variable(provider);
                        c.problem(format!("{path}.model"), format!("unknown provider \"{provider}\" — set {variable}"));
                    } else if provider == "local"
                        && let Err(why) = super::providers::local::check_model(name)
                    {
                        c.problem(format!("{path}.model"), why);
                    }
                }
                _ => c.problem(format!("{path}.model"), "must be `provider/model`"),
            }
        }
        let system_prompt = c.string(obj, "systemPrompt", &path, false).unwrap_or_default();
        let temperature = c.number(obj, "temperature", &path, (0.0, 2.0));
        let max_tokens = c.number(obj, "maxTokens", &path, (1.0, 1_000_000.0)).map(|n| n as u32);
        let description = c.string(obj, "description", &path, false);
        if let Some(name) = &name
            && !seen.insert(name.clone())
        {
            c.problem(format!("{path}.name"), format!("duplicate agent name `{name}`"));
        }
        if let (Some(name), Some(model)) = (name, model) {
            agents.push(Agent { name, model, system_prompt, temperature, max_tokens, description });
        }
    }
    agents
}

fn routing(c: &mut Checker, value: Option<&Value>, names: &HashSet<&str>, agents: &[Agent]) -> Routing {
    let empty = Map::new();
    let obj = match value {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            c.problem("spec.routing", "must be an object");
            &empty
        }
    };
    let default = match obj.get("default").and_then(Value::as_str) {
        Some(name) => {
            if !names.contains(name) && !agents.is_empty() {
                c.problem("spec.routing.default", format!("unknown agent `{name}`"));
            }
            name.to_string()
        }
        None => agents.first().map(|a| a.name.clone()).unwrap_or_default(),
    };
    let mut rules = Vec::new();
    let list = obj.get("rules").and_then(Value::as_array).cloned().unwrap_or_default();
    if list.len() > MAX_RULES {
        c.problem("spec.routing.rules", format!("at most {MAX_RULES} rules"));
    }
    let mut rule_names = HashSet::new();
    for (i, item) in list.iter().enumerate() {
        let path = format!("spec.routing.rules[{i}]");
        let Some(rule) = item.as_object() else {
            c.problem(path, "must be an object");
            continue;
        };
        let name = c.string(rule, "name", &path, false).unwrap_or_else(|| format!("rule-{}", i + 1));
        if !rule_names.insert(name.clone()) {
            c.problem(format!("{path}.name"), format!("duplicate rule name `{name}`"));
        }
        let route_to = c.string(rule, "routeTo", &path, true);
        if let Some(target) = &route_to
            && !names.contains(target.as_str())
            && !agents.is_empty()
        {
            c.problem(format!("{path}.routeTo"), format!("unknown agent `{target}`"));
        }
        let when = match rule.get("when") {
            Some(when) => condition(c, when, &format!("{path}.when"), 0),
            None => {
                c.problem(format!("{path}.when"), "is required");
                None
            }
        };
        if let (Some(when), Some(route_to)) = (when, route_to) {
            rules.push(Rule { name, when, route_to });
        }
    }
    Routing { rules, default }
}

fn condition(c: &mut Checker, value: &Value, path: &str, depth: usize) -> Option<Condition> {
    if depth > MAX_CONDITION_DEPTH {
        c.problem(path, format!("conditions nest at most {MAX_CONDITION_DEPTH} levels"));
        return None;
    }
    let Some((kind, arg)) = value.as_object().filter(|o| o.len() == 1).and_then(|o| o.iter().next()) else {
        c.problem(
            path,
            "must be an object with exactly one of contains, regex, lengthAbove, lengthBelow, variable, all, any, not",
        );
        return None;
    };
    let at = format!("{path}.{kind}");
    let list = |c: &mut Checker, arg: &Value| -> Option<Vec<Condition>> {
        let items = arg.as_array().filter(|a| !a.is_empty());
        let Some(items) = items else {
            c.problem(at.clone(), "must be a non-empty list of conditions");
            return None;
        };
        let parsed: Vec<_> =
            items.iter().enumerate().map(|(i, item)| condition(c, item, &format!("{at}[{i}]"), depth + 1)).collect();
        parsed.into_iter().collect()
    };
    match kind.as_str() {
        "contains" => {
            let words: Option<Vec<String>> = match arg {
                Value::String(s) => Some(vec![s.clone()]),
                Value::Array(items) if !items.is_empty() => {
                    items.iter().map(|i| i.as_str().filter(|s| !s.is_empty()).map(str::to_string)).collect()
                }
                _ => None,
            };
            if words.is_none() {
                c.problem(at, "must be a word or a non-empty list of words");
            }
            words.map(Condition::Contains)
        }
        "regex" => {
            let Some(pattern) = arg.as_str() else {
                c.problem(at, "must be a string");
                return None;
            };
            if pattern.len() > MAX_REGEX_LEN {
                c.problem(at, format!("is longer than {MAX_REGEX_LEN} characters"));
                return None;
            }
            match RegexBuilder::new(pattern).size_limit(REGEX_SIZE_LIMIT).dfa_size_limit(REGEX_SIZE_LIMIT).build() {
                Ok(regex) => Some(Condition::Regex(regex)),
                Err(regex::Error::CompiledTooBig(_)) => {
                    c.problem(at, "is too large once compiled; simplify it");
                    None
                }
                Err(_) => {
                    c.problem(at, format!("`{pattern}` is not a valid regular expression"));
                    None
                }
            }
        }
        "lengthAbove" | "lengthBelow" => match arg.as_u64() {
            Some(n) if kind == "lengthAbove" => Some(Condition::LengthAbove(n)),
            Some(n) => Some(Condition::LengthBelow(n)),
            None => {
                c.problem(at, "must be a whole number of characters");
                None
            }
        },
        "variable" => {
            let name = arg.get("name").and_then(Value::as_str).filter(|n| !n.is_empty());
            match (name, arg.get("equals")) {
                (Some(name), Some(equals)) => {
                    Some(Condition::Variable { name: name.to_string(), equals: equals.clone() })
                }
                _ => {
                    c.problem(at, "must be {\"name\": …, \"equals\": …}");
                    None
                }
            }
        }
        "all" => list(c, arg).map(Condition::All),
        "any" => list(c, arg).map(Condition::Any),
        "not" => condition(c, arg, &at, depth + 1).map(|inner| Condition::Not(Box::new(inner))),
        other => {
            c.problem(at, format!("`{other}` is not a condition"));
            None
        }
    }
}

fn fallbacks(c: &mut Checker, value: Option<&Value>, names: &HashSet<&str>) -> BTreeMap<String, Vec<Fallback>> {
    let mut chains = BTreeMap::new();
    let Some(value) = value.filter(|v| !v.is_null()) else { return chains };
    let Some(obj) = value.as_object() else {
        c.problem("spec.fallbacks", "must map an agent to the agents it falls back to");
        return chains;
    };
    for (from, to) in obj {
        let path = format!("spec.fallbacks.{from}");
        if !names.contains(from.as_str()) {
            c.problem(path.clone(), format!("unknown agent `{from}`"));
        }
        let Some(list) = to.as_array() else {
            c.problem(path, "must be a list of agent names");
            continue;
        };
        let chain = list.iter().enumerate().filter_map(|(i, item)| fallback(c, item, &format!("{path}[{i}]"), names));
        chains.insert(from.clone(), chain.collect());
    }
    if let Some(cycle) = find_cycle(&chains) {
        c.problem("spec.fallbacks", format!("fallbacks form a cycle: {}", cycle.join(" → ")));
    }
    chains
}

fn fallback(c: &mut Checker, item: &Value, path: &str, names: &HashSet<&str>) -> Option<Fallback> {
    let (agent, on) = match item {
        Value::String(name) => (Some(name.as_str()), None),
        Value::Object(obj) => {
            let on = match obj.get("on") {
                None | Some(Value::Null) => None,
                Some(list) => Some(error_classes(c, list, &format!("{path}.on"))?),
            };
            (obj.get("agent").and_then(Value::as_str), on)
        }
        _ => (None, None),
    };
    match agent {
        Some(name) if names.contains(name) => Some(Fallback { agent: name.to_string(), on }),
        Some(name) => {
            c.problem(path, format!("unknown agent `{name}`"));
            None
        }
        None => {
            c.problem(path, "must be an agent name or {\"agent\": …, \"on\": [error classes]}");
            None
        }
    }
}

/// A list of error class names, each checked.
fn error_classes(c: &mut Checker, list: &Value, path: &str) -> Option<Vec<String>> {
    let Some(items) = list.as_array() else {
        c.problem(path, "must be a list of error classes");
        return None;
    };
    let mut classes = Vec::new();
    for item in items {
        match item.as_str() {
            Some(class) if ERROR_CLASSES.contains(&class) => classes.push(class.to_string()),
            _ => c.problem(path, format!("{item} is not one of {}", ERROR_CLASSES.join(", "))),
        }
    }
    (classes.len() == items.len()).then_some(classes)
}

/// A cycle in the fallback graph, as the path that closes it.
fn find_cycle(chains: &BTreeMap<String, Vec<Fallback>>) -> Option<Vec<String>> {
    fn visit<'a>(
        node: &'a str,
        chains: &'a BTreeMap<String, Vec<Fallback>>,
        state: &mut HashMap<&'a str, bool>,
        path: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match state.get(node) {
            Some(true) => {
                let start = path.iter().position(|n| *n == node).unwrap_or(0);
                let mut cycle: Vec<String> = path[start..].iter().map(|s| s.to_string()).collect();
                cycle.push(node.to_string());
                return Some(cycle);
            }
            Some(false) => return None,
            None => {}
        }
        state.insert(node, true);
        path.push(node);
        for next in chains.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(&next.agent, chains, state, path) {
                return Some(cycle);
            }
        }
        path.pop();
        state.insert(node, false);
        None
    }
    let mut state = HashMap::new();
    chains.keys().find_map(|start| visit(start, chains, &mut state, &mut Vec::new()))
}

/// A retry policy given apart from a spec (a workflow step's `retry`), checked as the spec's is;
/// `path` places its problems.
pub fn retry_policy(value: &Value, path: &str) -> Result<RetryPolicy, Vec<Problem>> {
    let mut c = Checker { problems: Vec::new(), known_provider: &|_| true };
    let policy = retry(&mut c, Some(value), path);
    if c.problems.is_empty() { Ok(policy) } else { Err(c.problems) }
}

fn retry(c: &mut Checker, value: Option<&Value>, path: &str) -> RetryPolicy {
    let mut policy = RetryPolicy::default();
    let Some(value) = value.filter(|v| !v.is_null()) else { return policy };
    let Some(obj) = value.as_object() else {
        c.problem(path, "must be an object");
        return policy;
    };
    if let Some(n) = c.number(obj, "maxAttempts", path, (1.0, 10.0)) {
        policy.max_attempts = n as u32;
    }
    if let Some(n) = c.number(obj, "initialBackoffMs", path, (0.0, 600_000.0)) {
        policy.initial_backoff_ms = n as u64;
    }
    if let Some(n) = c.number(obj, "maxBackoffMs", path, (0.0, 600_000.0)) {
        policy.max_backoff_ms = n as u64;
    }
    if let Some(n) = c.number(obj, "multiplier", path, (1.0, 10.0)) {
        policy.multiplier = n;
    }
    match obj.get("jitter") {
        None | Some(Value::Null) => {}
        Some(Value::Bool(b)) => policy.jitter = *b,
        Some(_) => c.problem(format!("{path}.jitter"), "must be true or false"),
    }
    if let Some(list) = obj.get("retryOn")
        && let Some(classes) = error_classes(c, list, &format!("{path}.retryOn"))
    {
        policy.retry_on = classes;
    }
    if policy.max_backoff_ms < policy.initial_backoff_ms {
        c.problem(format!("{path}.maxBackoffMs"), "must not be below initialBackoffMs");
    }
    policy
}

fn limits(c: &mut Checker, value: Option<&Value>) -> Limits {
    let Some(value) = value.filter(|v| !v.is_null()) else { return Limits::default() };
    let Some(obj) = value.as_object() else {
        c.problem("spec.limits", "must be an object");
        return Limits::default();
    };
    Limits {
        timeout_ms: c.number(obj, "timeoutMs", "spec.limits", (1.0, MAX_TIMEOUT_MS as f64)).map(|n| n as u64),
        max_cost_usd: c.number(obj, "maxCostUsd", "spec.limits", (0.0, 1_000_000.0)),
    }
}

impl TeamSpec {
    /// The canonical document: every field spelled out, defaults filled in.
    pub fn to_json(&self) -> Value {
        let agents: Vec<Value> = self
            .agents
            .iter()
            .map(|a| {
                let mut agent = json!({"name": a.name, "model": a.model, "systemPrompt": a.system_prompt});
                if let Some(t) = a.temperature {
                    agent["temperature"] = json!(t);
                }
                if let Some(m) = a.max_tokens {
                    agent["maxTokens"] = json!(m);
                }
                if let Some(d) = &a.description {
                    agent["description"] = json!(d);
                }
                agent
            })
            .collect();
        let rules: Vec<Value> = self
            .routing
            .rules
            .iter()
            .map(|r| json!({"name": r.name, "when": r.when.to_json(), "routeTo": r.route_to}))
            .collect();
        let mut limits = Map::new();
        if let Some(t) = self.limits.timeout_ms {
            limits.insert("timeoutMs".into(), json!(t));
        }
        if let Some(m) = self.limits.max_cost_usd {
            limits.insert("maxCostUsd".into(), json!(m));
        }
        let r = &self.retry;
        json!({
            "format": FORMAT,
            "agents": agents,
            "routing": {"rules": rules, "default": self.routing.default},
            "fallbacks": self.fallbacks.iter().map(|(from, chain)| (from.clone(), chain.iter().map(Fallback::to_json).collect())).collect::<Map<String, Value>>(),
            "retry": {"maxAttempts": r.max_attempts, "initialBackoffMs": r.initial_backoff_ms, "maxBackoffMs": r.max_backoff_ms,
                      "multiplier": r.multiplier, "jitter": r.jitter, "retryOn": r.retry_on},
            "limits": limits,
        })
    }
}

impl Fallback {
    fn to_json(&self) -> Value {
        match &self.on {
            None => json!(self.agent),
            Some(on) => json!({"agent": self.agent, "on": on}),
        }
    }
}

impl Condition {
    fn to_json(&self) -> Value {
        match self {
            Self::Contains(words) => json!({"contains": words}),
            Self::Regex(regex) => json!({"regex": regex.as_str()}),
            Self::LengthAbove(n) => json!({"lengthAbove": n}),
            Self::LengthBelow(n) => json!({"lengthBelow": n}),
            Self::Variable { name, equals } => json!({"variable": {"name": name, "equals": equals}}),
            Self::All(items) => json!({"all": items.iter().map(Self::to_json).collect::<Vec<_>>()}),
            Self::Any(items) => json!({"any": items.iter().map(Self::to_json).collect::<Vec<_>>()}),
            Self::Not(inner) => json!({"not": inner.to_json()}),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known(provider: &str) -> bool {
        matches!(provider, "local" | "openai")
    }

    fn paths(value: Value) -> Vec<String> {
        parse(&value, &known).unwrap_err().into_iter().map(|p| p.path).collect()
    }

    fn design_example() -> Value {
        json!({
            "format": "ensemble.team/v1",
            "agents": [
                {"name": "triage", "model": "local/echo", "systemPrompt": "...", "temperature": 0.2, "maxTokens": 512},
                {"name": "billing", "model": "openai/gpt-4o-mini", "systemPrompt": "..."}
            ],
            "routing": {"rules": [{"name": "money", "when": {"any": [{"contains": ["invoice", "refund"]}, {"regex": "(?i)charge"}]}, "routeTo": "billing"}], "default": "triage"},
            "fallbacks": {"billing": ["triage"]},
            "retry": {"maxAttempts": 3, "initialBackoffMs": 200, "maxBackoffMs": 5000, "multiplier": 2.0, "jitter": true, "retryOn": ["timeout", "rate_limited", "server_error"]},
            "limits": {"timeoutMs": 30000, "maxCostUsd": 0.50}
        })
    }

    #[test]
    fn the_design_example_is_valid_and_round_trips() {
        let spec = parse(&design_example(), &known).unwrap();
        assert_eq!(spec.agents.len(), 2);
        let canonical = spec.to_json();
        assert_eq!(parse(&canonical, &known).unwrap().to_json(), canonical);
    }

    #[test]
    fn no_agents_is_a_problem() {
        assert_eq!(paths(json!({"format": FORMAT, "agents": []})), ["spec.agents"]);
    }

    #[test]
    fn every_problem_is_listed_at_once() {
        let bad = json!({
            "format": "ensemble.team/v1",
            "agents": [
                {"name": "a", "model": "local/echo", "temperature": 3},
                {"name": "a", "model": "nowhere/x"},
                {"name": "b", "model": "justamodel"},
                {"name": "d", "model": "local/echoo"}
            ],
            "routing": {"rules": [
                {"name": "r1", "when": {"regex": "(unclosed"}, "routeTo": "ghost"},
                {"name": "r2", "when": {"regex": "a{1000}{1000}"}, "routeTo": "a"},
                {"name": "r3", "when": {"sparkles": true}, "routeTo": "a"}
            ], "default": "nobody"},
            "fallbacks": {"a": ["b"], "b": ["a"], "c": ["a"]},
            "retry": {"maxAttempts": 11},
            "limits": {"maxCostUsd": -1}
        });
        let found = paths(bad);
        for expected in [
            "spec.agents[0].temperature",
            "spec.agents[1].name",
            "spec.agents[1].model",
            "spec.agents[2].model",
            "spec.agents[3].model",
            "spec.routing.default",
            "spec.routing.rules[0].routeTo",
            "spec.routing.rules[0].when.regex",
            "spec.routing.rules[1].when.regex",
            "spec.routing.rules[2].when.sparkles",
            "spec.fallbacks.c",
            "spec.fallbacks",
            "spec.retry.maxAttempts",
            "spec.limits.maxCostUsd",
        ] {
            assert!(found.iter().any(|p| p == expected), "{expected} missing from {found:?}");
        }
    }

    #[test]
    fn fallbacks_may_name_the_error_classes_they_take() {
        let mut spec = design_example();
        spec["fallbacks"] = json!({"billing": [{"agent": "triage", "on": ["context_length"]}]});
        let parsed = parse(&spec, &known).unwrap();
        let step = Fallback { agent: "triage".into(), on: Some(vec!["context_length".into()]) };
        assert_eq!(parsed.fallbacks["billing"], [step]);
        assert_eq!(parsed.to_json()["fallbacks"], spec["fallbacks"]);
        spec["fallbacks"] = json!({"billing": [{"agent": "triage", "on": ["sunspots"]}, 7]});
        assert_eq!(paths(spec), ["spec.fallbacks.billing[0].on", "spec.fallbacks.billing[1]"]);
    }

    #[test]
    fn fallback_cycles_are_named() {
        let mut spec = design_example();
        spec["fallbacks"] = json!({"billing": ["triage"], "triage": ["billing"]});
        let problems = parse(&spec, &known).unwrap_err();
        assert!(problems[0].message.contains("billing → triage → billing"), "{problems:?}");
    }
}
