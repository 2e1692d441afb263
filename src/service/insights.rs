//! Performance insights: findings about a team's runs, each from rollup figures, carrying
//! those figures and a suggested change. A finding needs enough runs behind it to mean
//! something (`MIN_RUNS`); no figures, no finding.

use std::collections::HashMap;

use sea_orm::DatabaseConnection;

use super::{
    analytics::{self, By, Selection, Slice, Totals},
    prices::PriceBook,
    range::TimeRange,
    rollups::{self, Grain, Piece},
};
use crate::{domain::Caller, error::AppError, orchestrator::spec};

/// Fewest runs a figure needs before it may back a finding.
pub const MIN_RUNS: i64 = 10;
/// An agent failing more often than this is flagged.
pub const FAILURE_RATE: f64 = 0.05;
/// An agent falling back more often than this is a hot spot.
pub const FALLBACK_RATE: f64 = 0.10;
/// An hour whose runs were retried this many times each, on average, is a retry storm.
pub const RETRIES_PER_RUN: f64 = 1.0;

/// What a finding is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, async_graphql::Enum)]
pub enum Kind {
    SlowestAgent,
    FailingAgent,
    FallbackHotSpot,
    RetryStorm,
    CostliestAgent,
    UnusedRule,
    CheaperModel,
}

/// One finding: a summary, a suggestion and the figures (name, value, unit) behind it.
#[derive(Clone, Debug)]
pub struct Finding {
    pub kind: Kind,
    pub warning: bool,
    pub subject: String,
    pub summary: String,
    pub suggestion: String,
    pub figures: Vec<(&'static str, f64, &'static str)>,
}

/// Every finding for a team over `range`, warnings first.
pub async fn find(
    db: &DatabaseConnection,
    prices: &PriceBook,
    caller: &Caller,
    team_id: &str,
    range: TimeRange,
) -> Result<Vec<Finding>, AppError> {
    let team = analytics::readable_team(db, caller, team_id).await?;
    let team_only = Selection::team(team_id);
    let (from, to) = range.seconds();
    let pieces = rollups::cover(from, to);
    let agents = analytics::slices(db, &team_only, &pieces, By::AGENT).await?;
    let mut team_totals = Totals::default();
    agents.iter().for_each(|a| team_totals.add(&a.totals));
    let measured: Vec<&Slice> = agents.iter().filter(|a| a.totals.runs >= MIN_RUNS).collect();

    let mut findings = Vec::new();
    findings.extend(slowest(&measured));
    findings.extend(measured.iter().filter_map(|a| failing(a)));
    findings.extend(measured.iter().filter_map(|a| fallback_hot_spot(a)));
    findings.extend(costliest(&agents, &team_totals));
    let hours = [Piece { grain: Grain::Hour, from: Grain::Hour.floor(from), to: Grain::Hour.ceil(to) }];
    let hourly =
        analytics::bucketed_slices(db, &team_only, &hours, By { bucket: true, latency: false, ..By::AGENT }).await?;
    findings.extend(retry_storm(&hourly));
    if team_totals.runs >= MIN_RUNS {
        let rules = analytics::slices(db, &team_only, &pieces, By { rule: true, ..By::default() }).await?;
        findings.extend(unused_rules(&team.spec, &rules, team_totals.runs));
    }
    let by_agent_model =
        analytics::slices(db, &team_only, &pieces, By { agent: true, model: true, ..By::default() }).await?;
    let by_model = analytics::slices(db, &team_only, &pieces, By { model: true, ..By::default() }).await?;
    findings.extend(cheaper_models(prices, &by_agent_model, &by_model).await?);
    findings.sort_by_key(|f| !f.warning);
    Ok(findings)
}

fn percent(rate: f64) -> String {
    format!("{:.1}%", rate * 100.0)
}

/// The agent with the highest p95, when more than one agent has enough runs.
fn slowest(agents: &[&Slice]) -> Option<Finding> {
    if agents.len() < 2 {
        return None;
    }
    let slowest = agents.iter().max_by_key(|a| a.latency.p95)?;
    let p95 = slowest.latency.p95?;
    let others: Vec<i64> = agents.iter().filter(|a| a.agent != slowest.agent).filter_map(|a| a.latency.p95).collect();
    let next = others.iter().max().copied().unwrap_or(0);
    Some(Finding {
        kind: Kind::SlowestAgent,
        warning: false,
        subject: slowest.agent.clone(),
        summary: format!(
            "{} is the slowest agent: p95 {p95} ms over {} runs (the next slowest: {next} ms).",
            slowest.agent, slowest.totals.runs
        ),
        suggestion: "Give it a faster model, lower its maxTokens, or route long inputs to another agent.".into(),
        figures: vec![
            ("p95", p95 as f64, "ms"),
            ("runs", slowest.totals.runs as f64, "runs"),
            ("next slowest p95", next as f64, "ms"),
        ],
    })
}

fn failing(agent: &Slice) -> Option<Finding> {
    let t = &agent.totals;
    let rate = t.per_run(t.failures).filter(|rate| *rate > FAILURE_RATE)?;
    Some(Finding {
        kind: Kind::FailingAgent,
        warning: true,
        subject: agent.agent.clone(),
        summary: format!("{} fails {} of its runs ({} of {}).", agent.agent, percent(rate), t.failures, t.runs),
        suggestion: "Look at its error groups; add retries for transient errors or a fallback agent.".into(),
        figures: vec![
            ("failure rate", rate, "ratio"),
            ("failures", t.failures as f64, "runs"),
            ("runs", t.runs as f64, "runs"),
            ("threshold", FAILURE_RATE, "ratio"),
        ],
    })
}

fn fallback_hot_spot(agent: &Slice) -> Option<Finding> {
    let t = &agent.totals;
    let rate = t.per_run(t.fallback_runs).filter(|rate| *rate > FALLBACK_RATE)?;
    Some(Finding {
        kind: Kind::FallbackHotSpot,
        warning: true,
        subject: agent.agent.clone(),
        summary: format!(
            "Runs routed to {} fell back to another agent {} of the time ({} of {} runs).",
            agent.agent,
            percent(rate),
            t.fallback_runs,
            t.runs
        ),
        suggestion: "Its own model is failing often: raise its retries, or make the fallback its primary model.".into(),
        figures: vec![
            ("fallback rate", rate, "ratio"),
            ("runs that fell back", t.fallback_runs as f64, "runs"),
            ("runs", t.runs as f64, "runs"),
            ("threshold", FALLBACK_RATE, "ratio"),
        ],
    })
}

/// The agent with the largest share of cost, when the team spent anything.
fn costliest(agents: &[Slice], team: &Totals) -> Option<Finding> {
    if team.cost_usd <= 0.0 || agents.len() < 2 {
        return None;
    }
    let top = agents.iter().max_by(|a, b| a.totals.cost_usd.total_cmp(&b.totals.cost_usd))?;
    let share = top.totals.cost_usd / team.cost_usd;
    Some(Finding {
        kind: Kind::CostliestAgent,
        warning: false,
        subject: top.agent.clone(),
        summary: format!(
            "{} accounts for {} of the team's cost (${:.4} of ${:.4}).",
            top.agent,
            percent(share),
            top.totals.cost_usd,
            team.cost_usd
        ),
        suggestion: "Try a cheaper model for it, lower its maxTokens, or route simpler inputs elsewhere.".into(),
        figures: vec![
            ("cost", top.totals.cost_usd, "USD"),
            ("team cost", team.cost_usd, "USD"),
            ("share", share, "ratio"),
            ("runs", top.totals.runs as f64, "runs"),
        ],
    })
}

/// The hour with the most retries per run, when it passes the storm threshold.
fn retry_storm(hourly: &[(i64, Slice)]) -> Option<Finding> {
    let (start, worst) = hourly
        .iter()
        .filter(|(_, s)| s.totals.runs >= MIN_RUNS)
        .max_by(|(_, a), (_, b)| retries_per_run(a).total_cmp(&retries_per_run(b)))?;
    let rate = retries_per_run(worst);
    if rate < RETRIES_PER_RUN {
        return None;
    }
    let at = rollups::time(*start);
    Some(Finding {
        kind: Kind::RetryStorm,
        warning: true,
        subject: worst.agent.clone(),
        summary: format!(
            "In the hour from {} UTC, runs routed to {} were retried {rate:.1} times each ({} retries over {} runs).",
            at.format("%Y-%m-%d %H:%M"),
            worst.agent,
            worst.totals.retries,
            worst.totals.runs
        ),
        suggestion: "Its provider was failing: check the attempts' errors, lengthen backoff, or add a fallback.".into(),
        figures: vec![
            ("retries per run", rate, "ratio"),
            ("retries", worst.totals.retries as f64, "attempts"),
            ("runs", worst.totals.runs as f64, "runs"),
            ("hour start", *start as f64, "unix seconds"),
        ],
    })
}

fn retries_per_run(slice: &Slice) -> f64 {
    slice.totals.per_run(slice.totals.retries).unwrap_or(0.0)
}

/// Rules of the team's current spec that matched none of the range's runs.
fn unused_rules(document: &serde_json::Value, by_rule: &[Slice], runs: i64) -> Vec<Finding> {
    // Only the rules' names matter here, not whether the agents' providers are reachable.
    let Ok(spec) = spec::parse(document, &|_| true) else {
        return Vec::new();
    };
    let matched: HashMap<&str, i64> = by_rule.iter().map(|s| (s.rule.as_str(), s.totals.runs)).collect();
    spec.routing
        .rules
        .iter()
        .filter(|rule| !matched.contains_key(rule.name.as_str()))
        .map(|rule| Finding {
            kind: Kind::UnusedRule,
            warning: false,
            subject: rule.name.clone(),
            summary: format!("The routing rule {} matched none of the team's {runs} runs.", rule.name),
            suggestion: "Check its condition against real inputs, or remove it to keep routing simple.".into(),
            figures: vec![("matches", 0.0, "runs"), ("runs", runs as f64, "runs")],
        })
        .collect()
}

/// For each agent and model, a cheaper model the team has run with at least the same success
/// rate, priced for the agent's own token mix.
async fn cheaper_models(
    prices: &PriceBook,
    by_agent_model: &[Slice],
    by_model: &[Slice],
) -> Result<Vec<Finding>, AppError> {
    let models = prices.for_models(by_model.iter().map(|s| s.model.as_str())).await?;
    let mut findings = Vec::new();
    for used in by_agent_model.iter().filter(|s| s.totals.runs >= MIN_RUNS) {
        let (Some(current), Some(success)) = (models.get(&used.model), used.totals.success_rate()) else {
            continue;
        };
        let (tokens_in, tokens_out) = (used.totals.tokens_in as u32, used.totals.tokens_out as u32);
        let cost_now = current.cost(tokens_in, tokens_out);
        let best = by_model
            .iter()
            .filter(|other| other.model != used.model && other.totals.runs >= MIN_RUNS)
            .filter(|other| other.totals.success_rate().is_some_and(|s| s >= success))
            .filter_map(|other| Some((other, models.get(&other.model)?.cost(tokens_in, tokens_out))))
            .filter(|(_, cost)| *cost < cost_now)
            .min_by(|a, b| a.1.total_cmp(&b.1));
        if let Some((other, cost)) = best {
            let other_success = other.totals.success_rate().unwrap_or(0.0);
            findings.push(Finding {
                kind: Kind::CheaperModel,
                warning: false,
                subject: used.agent.clone(),
                summary: format!(
                    "{} runs on {} ({} success over {} runs). {} succeeded {} over {} runs and would have cost ${cost:.4} instead of ${cost_now:.4} for the same tokens.",
                    used.agent,
                    used.model,
                    percent(success),
                    used.totals.runs,
                    other.model,
                    percent(other_success),
                    other.totals.runs
                ),
                suggestion: format!("Try {} for {}.", other.model, used.agent),
                figures: vec![
                    ("success rate", success, "ratio"),
                    ("alternative success rate", other_success, "ratio"),
                    ("cost", cost_now, "USD"),
                    ("alternative cost", cost, "USD"),
                ],
            });
        }
    }
    Ok(findings)
}
