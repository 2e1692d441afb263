//! One run, after routing: call the agent with retries (exponential backoff with jitter,
//! `Retry-After` honoured), then walk its fallback chain (steps may take only some error
//! classes), until an answer, the run's deadline, its cost limit, or a cancel. Every call is
//! an `Attempt`; events go out as things happen. No database here: the caller stores the result.

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, Utc};
use entity::states::{AttemptOutcome, ErrorCode};
use rand::Rng;
use tokio::{sync::watch, time::Instant};

use super::{
    providers::{ChatMessage, CompletionRequest, ErrorClass, ProviderError, Providers, Role},
    spec::{Agent, RetryPolicy, TeamSpec},
    tokens,
};
use crate::{
    domain::{RunEvent, RunEventKind},
    metrics::RunMetrics,
};

/// What a model costs, in US dollars per million tokens.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Price {
    pub input_usd_per_mtok: f64,
    pub output_usd_per_mtok: f64,
}

impl Price {
    pub fn cost(&self, tokens_in: u32, tokens_out: u32) -> f64 {
        (f64::from(tokens_in) * self.input_usd_per_mtok + f64::from(tokens_out) * self.output_usd_per_mtok) / 1e6
    }
}

/// Everything one run needs besides the spec.
pub struct RunContext<'a> {
    pub run_id: &'a str,
    pub team_id: &'a str,
    pub providers: &'a Providers,
    /// Prices of every model the spec names (absent: free).
    pub prices: &'a std::collections::HashMap<String, Price>,
    /// The conversation so far (root first) and the new user message last.
    pub history: Vec<ChatMessage>,
    pub deadline: Instant,
    pub max_cost_usd: Option<f64>,
    /// The answer limit of agents that set no `maxTokens` (a run held to a budget has one).
    pub default_max_tokens: Option<u32>,
    /// Which answer within a workflow run this run is (1 outside one).
    pub turn: u32,
    pub cancel: watch::Receiver<bool>,
    pub emit: &'a (dyn Fn(RunEvent) + Send + Sync),
    /// Where each call's latency and error class are counted.
    pub metrics: &'a RunMetrics,
}

/// One call to a model.
#[derive(Clone, Debug)]
pub struct Attempt {
    pub agent: String,
    pub model: String,
    /// 1 for the agent's first call.
    pub attempt: u32,
    pub outcome: AttemptOutcome,
    pub latency_ms: u64,
    pub tokens_in: u32,
    pub tokens_out: u32,
    pub cost_usd: f64,
    pub backoff_ms: Option<u64>,
    pub error: Option<String>,
    pub started_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Succeeded,
    Failed,
    Cancelled,
}

/// How the run ended.
#[derive(Debug)]
pub struct Outcome {
    pub status: Status,
    /// The agent that answered or tried last, and its model.
    pub agent: String,
    pub model: String,
    pub output: Option<String>,
    pub attempts: Vec<Attempt>,
    pub retries: u32,
    pub fallbacks: u32,
    /// Why the run failed or was cancelled.
    pub error_code: Option<ErrorCode>,
    pub error: Option<String>,
}

impl Outcome {
    pub fn tokens(&self) -> (u64, u64) {
        self.attempts.iter().fold((0, 0), |(i, o), a| (i + u64::from(a.tokens_in), o + u64::from(a.tokens_out)))
    }

    pub fn cost_usd(&self) -> f64 {
        self.attempts.iter().map(|a| a.cost_usd).sum()
    }
}

/// What an agent's every call starts with: its system prompt (when it has one), then `history`.
pub fn prompt(agent: &Agent, history: &[ChatMessage]) -> Vec<ChatMessage> {
    let mut messages = Vec::with_capacity(history.len() + 1);
    messages.extend(system_message(agent));
    messages.extend(history.iter().cloned());
    messages
}

/// The system message an agent's calls open with; none for an empty prompt.
pub fn system_message(agent: &Agent) -> Option<ChatMessage> {
    (!agent.system_prompt.is_empty()).then(|| ChatMessage { role: Role::System, content: agent.system_prompt.clone() })
}

/// The most answer tokens a call of `agent` asks for: its `maxTokens`, else `default` (a run
/// held to a daily budget has one); with neither, providers answer at whatever length they choose.
pub fn answer_limit(agent: &Agent, default: Option<u32>) -> Option<u32> {
    agent.max_tokens.or(default)
}

/// The answer a call is reckoned to cost before it is made: its answer limit, or nothing when
/// it has none.
pub fn answer_allowance(agent: &Agent, default: Option<u32>) -> u32 {
    answer_limit(agent, default).unwrap_or(0)
}

/// The most calls one agent gets in a run: every attempt of the policy, or only the first
/// when the policy retries no error class.
pub fn most_attempts(policy: &RetryPolicy) -> u32 {
    if policy.retry_on.is_empty() { 1 } else { policy.max_attempts }
}

/// The agents to try, in order: the routed agent, then its fallbacks depth first (each
/// fallback's own chain follows it), each agent once. A step may name the error classes it takes.
pub fn chain(spec: &TeamSpec, start: &str) -> Vec<(String, Option<Vec<String>>)> {
    fn walk(spec: &TeamSpec, agent: &str, on: Option<Vec<String>>, out: &mut Vec<(String, Option<Vec<String>>)>) {
        if out.iter().any(|(name, _)| name == agent) {
            return;
        }
        out.push((agent.to_string(), on));
        for step in spec.fallbacks.get(agent).into_iter().flatten() {
            walk(spec, &step.agent, step.on.clone(), out);
        }
    }
    let mut out = Vec::new();
    walk(spec, start, None, &mut out);
    out
}

/// The wait before attempt `attempt + 1`: `initial × multiplier^(attempt-1)` capped by
/// `maxBackoffMs`, half of it random when jitter is on, and never less than `Retry-After`.
pub fn backoff(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
    let base = (policy.initial_backoff_ms as f64 * policy.multiplier.powi(exponent)).min(policy.max_backoff_ms as f64);
    let ms =
        if policy.jitter && base >= 2.0 { base / 2.0 + rand::thread_rng().gen_range(0.0..=base / 2.0) } else { base };
    Duration::from_millis(ms as u64).max(retry_after.unwrap_or_default())
}

enum Interrupt {
    Cancelled,
    TimedOut,
}

impl Interrupt {
    /// How the call it cut short ended.
    fn outcome(&self) -> AttemptOutcome {
        match self {
            Self::Cancelled => AttemptOutcome::Cancelled,
            Self::TimedOut => AttemptOutcome::Timeout,
        }
    }

    fn message(&self) -> &'static str {
        match self {
            Self::Cancelled => "the run was cancelled",
            Self::TimedOut => "the run took longer than its time limit",
        }
    }

    /// The end of the whole run, with its code and message.
    fn stop(&self) -> Stop {
        let code = match self {
            Self::Cancelled => ErrorCode::Cancelled,
            Self::TimedOut => ErrorCode::Timeout,
        };
        Stop::Run(code, self.message().to_string())
    }
}

/// Waits for `future` unless the run is cancelled or its deadline passes first.
async fn guarded<T>(
    future: impl Future<Output = T>,
    cancel: &mut watch::Receiver<bool>,
    deadline: Instant,
) -> Result<T, Interrupt> {
    tokio::select! {
        value = future => Ok(value),
        _ = cancel.wait_for(|cancelled| *cancelled) => Err(Interrupt::Cancelled),
        _ = tokio::time::sleep_until(deadline) => Err(Interrupt::TimedOut),
    }
}

pub async fn execute(spec: Arc<TeamSpec>, routed: &str, mut ctx: RunContext<'_>) -> Outcome {
    let mut outcome = Outcome {
        status: Status::Failed,
        agent: routed.to_string(),
        model: String::new(),
        output: None,
        attempts: Vec::new(),
        retries: 0,
        fallbacks: 0,
        error_code: None,
        error: None,
    };
    let mut last: Option<ProviderError> = None;
    for (index, (name, on)) in chain(&spec, routed).into_iter().enumerate() {
        if let (Some(on), Some(error)) = (&on, &last)
            && !on.iter().any(|class| class == error.class.as_str())
        {
            continue;
        }
        let Some(agent) = spec.agents.iter().find(|a| a.name == name) else { continue };
        if index > 0 {
            outcome.fallbacks += 1;
            let mut event = event(&ctx, RunEventKind::Fallback, agent);
            event.error_class = last.as_ref().map(|e| e.class.into());
            (ctx.emit)(event);
        }
        outcome.agent = agent.name.clone();
        outcome.model = agent.model.clone();
        match try_agent(&spec.retry, agent, &mut ctx, &mut outcome).await {
            Ok(()) => return outcome,
            Err(Stop::Exhausted(error)) => last = Some(error),
            Err(Stop::Run(code, message)) => return finish(outcome, code, message),
        }
    }
    let error = last.unwrap_or_else(|| ProviderError::new(ErrorClass::BadRequest, "no agent could be tried"));
    finish(outcome, error.class.into(), error.message)
}

enum Stop {
    /// The agent is out of attempts (or met an error it does not retry): fall back.
    Exhausted(ProviderError),
    /// The whole run stops: `(code, message)`.
    Run(ErrorCode, String),
}

fn finish(mut outcome: Outcome, code: ErrorCode, message: String) -> Outcome {
    outcome.status = if code == ErrorCode::Cancelled { Status::Cancelled } else { Status::Failed };
    outcome.error_code = Some(code);
    outcome.error = Some(message);
    outcome
}

fn event(ctx: &RunContext<'_>, kind: RunEventKind, agent: &Agent) -> RunEvent {
    let mut event = RunEvent::new(ctx.run_id, ctx.team_id, kind);
    event.agent = Some(agent.name.clone());
    event.model = Some(agent.model.clone());
    event
}

/// Calls `agent` until it answers or runs out of attempts.
async fn try_agent(
    policy: &RetryPolicy,
    agent: &Agent,
    ctx: &mut RunContext<'_>,
    outcome: &mut Outcome,
) -> Result<(), Stop> {
    let messages = prompt(agent, &ctx.history);
    let price = ctx.prices.get(&agent.model).copied().unwrap_or_default();
    // What the next call costs at least: its prompt, and the answer the agent allows.
    let least = price.cost(tokens::count_messages(&messages), answer_allowance(agent, ctx.default_max_tokens));
    let attempts = most_attempts(policy);
    for attempt in 1..=attempts {
        if let Some(max) = ctx.max_cost_usd
            && outcome.cost_usd() + least > max
        {
            let spent = outcome.cost_usd();
            return Err(Stop::Run(
                ErrorCode::CostLimit,
                format!(
                    "the next call to {} would cost about ${least:.6} more than the ${spent:.6} spent, over the run's limit of ${max}",
                    agent.model
                ),
            ));
        }
        let mut started = event(ctx, RunEventKind::AttemptStarted, agent);
        started.attempt = Some(attempt as i32);
        (ctx.emit)(started);
        let (provider, model) = match ctx.providers.resolve(&agent.model) {
            Ok(found) => found,
            Err(error) => return Err(Stop::Exhausted(error)),
        };
        let request = CompletionRequest {
            agent: agent.name.clone(),
            model: model.to_string(),
            messages: messages.clone(),
            temperature: agent.temperature,
            max_tokens: answer_limit(agent, ctx.default_max_tokens),
            attempt,
            turn: ctx.turn,
        };
        let delta_event = event(ctx, RunEventKind::Delta, agent);
        let emit = ctx.emit;
        let on_delta = move |text: &str| {
            let mut delta = delta_event.clone();
            delta.at = Utc::now();
            delta.delta = Some(text.to_string());
            emit(delta);
        };
        let began = Instant::now();
        let started_at = Utc::now();
        let result = guarded(provider.complete(&request, &on_delta), &mut ctx.cancel, ctx.deadline).await;
        // Calls cut short by a cancel or the run's time limit are not the provider's doing.
        if let Ok(answer) = &result {
            let provider_name = agent.model.split_once('/').map_or("", |(name, _)| name);
            let class = answer.as_ref().err().map(|error| error.class.as_str());
            ctx.metrics.model_call(provider_name, began.elapsed(), class);
        }
        let latency_ms = began.elapsed().as_millis() as u64;
        let ended_as = |ended| Attempt {
            agent: agent.name.clone(),
            model: agent.model.clone(),
            attempt,
            outcome: ended,
            latency_ms,
            tokens_in: 0,
            tokens_out: 0,
            cost_usd: 0.0,
            backoff_ms: None,
            error: None,
            started_at,
        };
        let error = match result {
            Ok(Ok(answer)) => {
                let mut record = ended_as(AttemptOutcome::Ok);
                record.tokens_in = answer.tokens_in;
                record.tokens_out = answer.tokens_out;
                record.cost_usd = price.cost(answer.tokens_in, answer.tokens_out);
                outcome.attempts.push(record);
                outcome.status = Status::Succeeded;
                outcome.output = Some(answer.content);
                return Ok(());
            }
            Ok(Err(error)) => error,
            Err(interrupt) => {
                let mut record = ended_as(interrupt.outcome());
                record.error = Some(interrupt.message().to_string());
                outcome.attempts.push(record);
                return Err(interrupt.stop());
            }
        };
        let mut record = ended_as(error.class.into());
        record.error = Some(error.message.clone());
        let retry = attempt < attempts && policy.retry_on.iter().any(|c| c == error.class.as_str());
        let wait = retry.then(|| backoff(policy, attempt, error.retry_after));
        record.backoff_ms = wait.map(|w| w.as_millis() as u64);
        outcome.attempts.push(record);
        let mut failed = event(ctx, RunEventKind::AttemptFailed, agent);
        failed.attempt = Some(attempt as i32);
        failed.error_class = Some(error.class.into());
        failed.error = Some(error.message.clone());
        failed.backoff_ms = wait.map(|w| w.as_millis() as i64);
        (ctx.emit)(failed);
        let Some(wait) = wait else { return Err(Stop::Exhausted(error)) };
        outcome.retries += 1;
        if let Err(interrupt) = guarded(tokio::time::sleep(wait), &mut ctx.cancel, ctx.deadline).await {
            return Err(interrupt.stop());
        }
    }
    Err(Stop::Exhausted(ProviderError::new(ErrorClass::ServerError, "no attempts allowed")))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::orchestrator::spec;

    fn parse(doc: serde_json::Value) -> TeamSpec {
        spec::parse(&doc, &|_| true).unwrap()
    }

    #[test]
    fn the_chain_follows_fallbacks_depth_first_once_each() {
        let spec = parse(json!({
            "format": "ensemble.team/v1",
            "agents": [{"name": "a", "model": "local/down"}, {"name": "b", "model": "local/down"},
                       {"name": "c", "model": "local/echo"}, {"name": "d", "model": "local/echo"}],
            "fallbacks": {"a": ["b", {"agent": "d", "on": ["context_length"]}], "b": ["c", "d"]}
        }));
        let names: Vec<(String, Option<Vec<String>>)> = chain(&spec, "a");
        let order: Vec<&str> = names.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(order, ["a", "b", "c", "d"]);
        assert_eq!(chain(&spec, "c").len(), 1);
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 350,
            multiplier: 2.0,
            jitter: false,
            retry_on: vec![],
        };
        let waits: Vec<u128> = (1..=4).map(|n| backoff(&policy, n, None).as_millis()).collect();
        assert_eq!(waits, [100, 200, 350, 350]);
        assert_eq!(backoff(&policy, 1, Some(Duration::from_secs(1))).as_millis(), 1000);
        let jittered = RetryPolicy { jitter: true, ..policy };
        for _ in 0..50 {
            let wait = backoff(&jittered, 2, None).as_millis();
            assert!((100..=200).contains(&wait), "{wait}");
        }
    }
}
