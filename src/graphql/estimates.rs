//! `estimateCost`: what a run would cost before it runs, routed, counted and priced as the run
//! would be.

use async_graphql::{Context, ID, Object, SimpleObject};
use serde_json::Value;

use super::caller;
use crate::{
    error::GqlResultExt,
    graphql::scalars::Json,
    orchestrator::estimate::Step,
    service::{
        estimates::{self, CostEstimate as Estimated},
        runs::RunInput,
    },
    state::AppState,
};

#[derive(Default)]
pub struct EstimatesQuery;

#[Object]
impl EstimatesQuery {
    /// What `runTeam` with the same arguments would cost, without running it: the agent and
    /// rule routing picks, the prompt tokens counted with the run's tokenizer, and prices from
    /// `modelPrices`. Members of any role may ask; API keys need `teams:read`. Refuses what
    /// `runTeam` refuses, with the same messages, at the argument's path (`input`,
    /// `variables.<name>`, `version`, `parentMessageId`).
    #[allow(clippy::too_many_arguments)]
    async fn estimate_cost(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The team whose run to estimate.")] team_id: ID,
        #[graphql(desc = "The message the run would answer.")] input: String,
        #[graphql(desc = "The run's variables (a JSON object): routing rules and system prompts use them.")]
        variables: Option<Json<Value>>,
        #[graphql(desc = "The spec version to estimate; the current one when absent.")] version: Option<i32>,
        #[graphql(desc = "Estimate a message in this conversation: its models see the conversation too.")]
        conversation_id: Option<ID>,
        #[graphql(desc = "Estimate an answer to this message (default: the conversation's newest).")]
        parent_message_id: Option<ID>,
    ) -> async_graphql::Result<CostEstimate> {
        let state = ctx.data::<AppState>()?;
        let input = RunInput {
            content: input,
            variables: variables.map(|v| v.0),
            version,
            conversation_id: conversation_id.map(|id| id.0),
            parent_message_id: parent_message_id.map(|id| id.0),
            ..Default::default()
        };
        estimates::estimate_cost(&state.runner, &caller(ctx), &team_id, input).await.map(CostEstimate::from).gql()
    }
}

/// A run's predicted cost. Costs are US dollars; a model without a price counts as free and is
/// listed in `unpricedModels`.
#[derive(SimpleObject)]
pub struct CostEstimate {
    /// The agent routing picks.
    pub agent: String,
    /// The routing rule that matches; null when the default agent would answer.
    pub rule: Option<String>,
    /// Why routing picks the agent, as the run would record it.
    pub rule_reason: String,
    /// The routed agent's model.
    pub model: String,
    /// Prompt tokens of one call to the routed agent: its system prompt, the conversation and
    /// the message, with the chat format's per-message overhead.
    pub input_tokens: i64,
    /// Answer tokens reckoned for one call: the agent's `maxTokens`; when it sets none, 4096
    /// for a caller held to a daily budget (its answers are cut there), else 0 (the answer's
    /// length is then unknown, and not priced).
    pub output_tokens: i64,
    /// One successful call to the routed agent.
    pub expected_cost_usd: f64,
    /// Every call the run may make: each attempt the retry policy allows on the routed agent,
    /// then on each fallback that may follow it. At most the spec's `limits.maxCostUsd`.
    pub worst_case_cost_usd: f64,
    /// How many calls that worst case makes (before any cost limit stops the run).
    pub worst_case_attempts: i32,
    /// Input and output tokens of every call the run may make: what a run held to a daily
    /// budget reserves before it starts.
    pub worst_case_tokens: i64,
    /// Whether `limits.maxCostUsd` lowered the worst case.
    pub capped_by_limit: bool,
    /// The agents the run may call, in the order it would call them: the routed agent first.
    pub steps: Vec<EstimateStep>,
    /// Models of the steps without a price, each once.
    pub unpriced_models: Vec<String>,
}

/// One agent a run may call.
#[derive(SimpleObject)]
pub struct EstimateStep {
    pub agent: String,
    pub model: String,
    /// The most calls the run makes to this agent.
    pub attempts: i32,
    /// Prompt tokens of each call.
    pub input_tokens: i64,
    /// Answer tokens reckoned for each call.
    pub output_tokens: i64,
    /// All of this agent's calls together.
    pub cost_usd: f64,
}

impl From<&Step> for EstimateStep {
    fn from(step: &Step) -> Self {
        Self {
            agent: step.agent.clone(),
            model: step.model.clone(),
            attempts: step.attempts as i32,
            input_tokens: step.input_tokens.into(),
            output_tokens: step.output_tokens.into(),
            cost_usd: step.cost_usd,
        }
    }
}

impl From<Estimated> for CostEstimate {
    fn from(Estimated { route, estimate }: Estimated) -> Self {
        let routed = estimate.routed();
        Self {
            model: routed.map(|s| s.model.clone()).unwrap_or_default(),
            input_tokens: routed.map_or(0, |s| s.input_tokens.into()),
            output_tokens: routed.map_or(0, |s| s.output_tokens.into()),
            agent: route.agent,
            rule: route.rule,
            rule_reason: route.reason,
            expected_cost_usd: estimate.expected_cost_usd,
            worst_case_cost_usd: estimate.worst_case_cost_usd,
            worst_case_attempts: estimate.worst_case_attempts as i32,
            worst_case_tokens: i64::try_from(estimate.worst_case_tokens).unwrap_or(i64::MAX),
            capped_by_limit: estimate.capped_by_limit,
            steps: estimate.steps.iter().map(EstimateStep::from).collect(),
            unpriced_models: estimate.unpriced_models,
        }
    }
}
