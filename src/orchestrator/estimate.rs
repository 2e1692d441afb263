//! What a run will cost before it starts: one answer from the routed agent (expected), and
//! every call its retry policy and fallback chain allow (worst case), counted and priced the
//! way the executor counts and prices calls. No database here: the caller brings the prices.

use std::collections::HashMap;

use super::{
    executor::{self, Price},
    providers::ChatMessage,
    spec::{Agent, TeamSpec},
    tokens,
};

/// One agent a run may call, in the order the executor would call it.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub agent: String,
    pub model: String,
    /// The most calls the run makes to this agent.
    pub attempts: u32,
    /// Prompt tokens of each call: the system prompt, the conversation, the message.
    pub input_tokens: u32,
    /// Answer tokens each call is reckoned at.
    pub output_tokens: u32,
    /// What one call costs.
    pub call_cost_usd: f64,
    /// What all of its calls cost.
    pub cost_usd: f64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Estimate {
    /// The routed agent first, then the fallbacks that may follow it.
    pub steps: Vec<Step>,
    /// One successful call to the routed agent.
    pub expected_cost_usd: f64,
    /// Every call of every step, or the spec's `limits.maxCostUsd` when that is less.
    pub worst_case_cost_usd: f64,
    pub worst_case_attempts: u32,
    /// Input and output tokens of every call of every step (no cost limit lowers it).
    pub worst_case_tokens: u64,
    pub capped_by_limit: bool,
    /// Models of the steps without a price (counted as free), each once.
    pub unpriced_models: Vec<String>,
}

impl Estimate {
    /// The routed agent's step; none only for a spec that lacks the agent it routed to.
    pub fn routed(&self) -> Option<&Step> {
        self.steps.first()
    }
}

/// Estimates a run of `spec` routed to `routed`, whose models are sent `messages` (the
/// conversation so far and the new message) after their system prompts. Agents without
/// `maxTokens` answer up to `default_max_tokens` (a run held to a budget), else are reckoned at 0.
pub fn estimate(
    spec: &TeamSpec,
    routed: &str,
    messages: &[ChatMessage],
    prices: &HashMap<String, Price>,
    default_max_tokens: Option<u32>,
) -> Estimate {
    // Every agent is sent the same messages after its own system prompt: count them once.
    let conversation = tokens::count_messages(messages);
    let attempts = executor::most_attempts(&spec.retry);
    let steps: Vec<Step> = executor::chain(spec, routed)
        .into_iter()
        // A step that takes no error class is always skipped. Any other step can be reached:
        // the agent before it may end on any error class, its last attempt not being retried.
        .filter(|(_, on)| on.as_ref().is_none_or(|classes| !classes.is_empty()))
        .filter_map(|(name, _)| spec.agents.iter().find(|agent| agent.name == name))
        .map(|agent| step(agent, attempts, conversation, prices, default_max_tokens))
        .collect();
    let total: f64 = steps.iter().map(|s| s.cost_usd).sum();
    let (worst_case_cost_usd, capped_by_limit) = match spec.limits.max_cost_usd {
        Some(max) if total > max => (max, true),
        _ => (total, false),
    };
    let mut unpriced_models: Vec<String> = Vec::new();
    for step in &steps {
        if !prices.contains_key(&step.model) && !unpriced_models.contains(&step.model) {
            unpriced_models.push(step.model.clone());
        }
    }
    Estimate {
        expected_cost_usd: steps.first().map_or(0.0, |s| s.call_cost_usd),
        worst_case_cost_usd,
        worst_case_attempts: steps.iter().map(|s| s.attempts).sum(),
        worst_case_tokens: steps
            .iter()
            .map(|s| u64::from(s.attempts) * (u64::from(s.input_tokens) + u64::from(s.output_tokens)))
            .sum(),
        capped_by_limit,
        unpriced_models,
        steps,
    }
}

/// `conversation` is the `count_messages` of what follows the agent's system prompt.
fn step(
    agent: &Agent,
    attempts: u32,
    conversation: u32,
    prices: &HashMap<String, Price>,
    default_max_tokens: Option<u32>,
) -> Step {
    let system = executor::system_message(agent).map_or(0, |message| tokens::count_message(&message));
    let input_tokens = conversation.saturating_add(system);
    let output_tokens = executor::answer_allowance(agent, default_max_tokens);
    let call_cost_usd = prices.get(&agent.model).copied().unwrap_or_default().cost(input_tokens, output_tokens);
    Step {
        agent: agent.name.clone(),
        model: agent.model.clone(),
        attempts,
        input_tokens,
        output_tokens,
        call_cost_usd,
        cost_usd: call_cost_usd * f64::from(attempts),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::orchestrator::{providers::Role, spec};

    fn parse(doc: Value) -> TeamSpec {
        spec::parse(&doc, &|_| true).unwrap()
    }

    fn said(content: &str) -> Vec<ChatMessage> {
        vec![
            ChatMessage { role: Role::User, content: "Earlier question".into() },
            ChatMessage { role: Role::Assistant, content: "Earlier answer".into() },
            ChatMessage { role: Role::User, content: content.into() },
        ]
    }

    fn price(input: f64, output: f64) -> Price {
        Price { input_usd_per_mtok: input, output_usd_per_mtok: output }
    }

    #[test]
    fn each_step_counts_the_prompt_the_executor_sends() {
        let spec = parse(json!({
            "format": "ensemble.team/v1",
            "agents": [{"name": "a", "model": "local/echo", "systemPrompt": "Be terse.", "maxTokens": 64},
                       {"name": "b", "model": "local/echo"}],
            "fallbacks": {"a": ["b"]}
        }));
        let messages = said("Where is my parcel?");
        let out = estimate(&spec, "a", &messages, &HashMap::new(), None);
        for (step, agent) in out.steps.iter().zip(&spec.agents) {
            let sent = tokens::count_messages(&executor::prompt(agent, &messages));
            assert_eq!(step.input_tokens, sent, "{}", agent.name);
        }
        assert_eq!((out.steps[0].output_tokens, out.steps[1].output_tokens), (64, 0));
        assert_eq!(out.unpriced_models, ["local/echo"]);
        assert_eq!(out.expected_cost_usd, 0.0);
    }

    #[test]
    fn the_worst_case_is_every_attempt_of_every_reachable_step() {
        let spec = parse(json!({
            "format": "ensemble.team/v1",
            "agents": [{"name": "a", "model": "x/one", "maxTokens": 100}, {"name": "b", "model": "x/two", "maxTokens": 10},
                       {"name": "c", "model": "x/free"}, {"name": "never", "model": "x/one"}],
            "fallbacks": {"a": ["b", {"agent": "never", "on": []}], "b": ["c"]},
            "retry": {"maxAttempts": 2}
        }));
        let prices = HashMap::from([("x/one".to_string(), price(1.0, 2.0)), ("x/two".to_string(), price(3.0, 4.0))]);
        let out = estimate(&spec, "a", &said("hi"), &prices, None);
        let agents: Vec<&str> = out.steps.iter().map(|s| s.agent.as_str()).collect();
        assert_eq!(agents, ["a", "b", "c"]);
        let tokens = out.steps[0].input_tokens;
        let one = (f64::from(tokens) * 1.0 + 100.0 * 2.0) / 1e6;
        let two = (f64::from(tokens) * 3.0 + 10.0 * 4.0) / 1e6;
        assert_eq!(out.expected_cost_usd, one);
        assert!((out.worst_case_cost_usd - 2.0 * (one + two)).abs() < 1e-12, "{out:?}");
        assert_eq!((out.worst_case_attempts, out.capped_by_limit), (6, false));
        let steps = &out.steps;
        let tokens = 2 * (steps[0].input_tokens + 100) + 2 * (steps[1].input_tokens + 10) + 2 * steps[2].input_tokens;
        assert_eq!(out.worst_case_tokens, u64::from(tokens));
        assert_eq!(out.unpriced_models, ["x/free"]);
    }

    #[test]
    fn a_default_answer_limit_counts_for_agents_without_max_tokens_only() {
        let spec = parse(json!({
            "format": "ensemble.team/v1",
            "agents": [{"name": "a", "model": "x/one"}, {"name": "b", "model": "x/one", "maxTokens": 10}],
            "fallbacks": {"a": ["b"]},
            "retry": {"maxAttempts": 1, "retryOn": []}
        }));
        let prices = HashMap::from([("x/one".to_string(), price(0.0, 1.0))]);
        let unbounded = estimate(&spec, "a", &said("hi"), &prices, None);
        assert_eq!(unbounded.steps.iter().map(|s| s.output_tokens).collect::<Vec<_>>(), [0, 10]);
        let held = estimate(&spec, "a", &said("hi"), &prices, Some(4096));
        assert_eq!(held.steps.iter().map(|s| s.output_tokens).collect::<Vec<_>>(), [4096, 10]);
        assert!((held.worst_case_cost_usd - 4106.0 / 1e6).abs() < 1e-12, "{held:?}");
        let input: u32 = held.steps.iter().map(|s| s.input_tokens).sum();
        assert_eq!(held.worst_case_tokens, u64::from(input) + 4106);
    }

    #[test]
    fn a_policy_that_retries_nothing_calls_each_agent_once_and_the_limit_caps_the_worst_case() {
        let spec = parse(json!({
            "format": "ensemble.team/v1",
            "agents": [{"name": "a", "model": "x/one", "maxTokens": 1000}, {"name": "b", "model": "x/one", "maxTokens": 1000}],
            "fallbacks": {"a": ["b"]},
            "retry": {"maxAttempts": 5, "retryOn": []},
            "limits": {"maxCostUsd": 0.001}
        }));
        let prices = HashMap::from([("x/one".to_string(), price(0.0, 1.0))]);
        let out = estimate(&spec, "a", &said("hi"), &prices, None);
        assert_eq!(out.steps.iter().map(|s| s.attempts).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(out.steps.iter().map(|s| s.cost_usd).sum::<f64>(), 0.002);
        assert_eq!((out.worst_case_cost_usd, out.capped_by_limit), (0.001, true));
    }
}
