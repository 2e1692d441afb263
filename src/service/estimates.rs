//! Cost estimates: what a run would cost, checked, routed and counted exactly as `runTeam`
//! would do it, without running it. Runs store the same estimate as they start.

use std::{collections::HashMap, sync::Arc};

use super::runs::{Prepared, RunInput, Runner};
use crate::{
    domain::{Caller, TeamRole},
    error::{AppError, Problem},
    orchestrator::{
        estimate::{self, Estimate},
        executor::Price,
        providers::ChatMessage,
        routing::Route,
        spec::TeamSpec,
    },
};

/// Where a run would go, and what it would cost.
pub struct CostEstimate {
    pub route: Route,
    pub estimate: Estimate,
}

/// Estimates a run of `input` on a team the caller may see (any role; API keys need
/// `teams:read`). Bad input is refused as `runTeam` refuses it.
pub async fn estimate_cost(
    runner: &Runner,
    caller: &Caller,
    team_id: &str,
    input: RunInput,
) -> Result<CostEstimate, AppError> {
    let Prepared { spec, route, messages, .. } =
        runner.prepare(caller, team_id, &input, TeamRole::Viewer).await.map_err(as_arguments)?;
    let prices = runner.prices.for_models(spec.agents.iter().map(|a| a.model.as_str())).await?;
    let answer_limit = runner.default_max_tokens(&caller.principal);
    let estimate = count(spec, route.agent.clone(), messages, prices, answer_limit).await?;
    Ok(CostEstimate { route, estimate })
}

/// The estimate of a run routed to `agent` whose agents without `maxTokens` answer up to
/// `default_max_tokens`, counted off the async runtime: a long conversation keeps the
/// tokenizer busy for a while.
pub async fn count(
    spec: Arc<TeamSpec>,
    agent: String,
    messages: Vec<ChatMessage>,
    prices: HashMap<String, Price>,
    default_max_tokens: Option<u32>,
) -> Result<Estimate, AppError> {
    tokio::task::spawn_blocking(move || estimate::estimate(&spec, &agent, &messages, &prices, default_max_tokens))
        .await
        .map_err(AppError::internal)
}

/// `estimateCost` takes a run's input as arguments: what `runTeam` reports at
/// `input.variables.plan` is at `variables.plan` here, and at `input.content` at `input`.
fn as_arguments(error: AppError) -> AppError {
    match error {
        AppError::BadUserInput { message, problems } => AppError::BadUserInput {
            message,
            problems: problems.into_iter().map(|p| Problem { path: argument(&p.path), ..p }).collect(),
        },
        other => other,
    }
}

fn argument(path: &str) -> String {
    match path {
        "input.content" => "input".into(),
        _ => path.strip_prefix("input.").unwrap_or(path).into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_input_paths_become_argument_paths() {
        let paths = ["input.content", "input.variables.plan", "input.parentMessageId", "spec.agents[0].systemPrompt"];
        let moved: Vec<String> = paths.iter().map(|p| argument(p)).collect();
        assert_eq!(moved, ["input", "variables.plan", "parentMessageId", "spec.agents[0].systemPrompt"]);
    }
}
