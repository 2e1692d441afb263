//! Dashboard queries on a large history, SQLite: 1,000,000 runs over 30 days for 50 teams are
//! seeded (runs rows plus their rollups, through the same `rollups::add` the run writer uses),
//! then `teamOverview` over 30 days and `metricsSeries` (HOUR, 30 days) are timed over real
//! HTTP, one request at a time, against the same figures computed from raw runs (the latencies
//! read in order, as SQLite has no percentile function).
//!
//! `cargo bench --bench monitoring` (release). `ENSEMBLE_BENCH_DB` keeps the seeded database at
//! a path of your choice and reuses it on the next run (default: a temporary folder);
//! `ENSEMBLE_BENCH_RUNS` (default 1000000) and `ENSEMBLE_BENCH_REQUESTS` (default 300) set the
//! sizes.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use ensemble::{config::Config, db::batch::Batch, domain::GlobalRole, service::rollups, startup::App, state::AppState};
use entity::{
    runs,
    states::{ErrorCode, RunStatus},
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, QuerySelect, QueryTrait,
};
use serde_json::{Value, json};

const TEAMS: usize = 50;
const DAYS: i64 = 30;
const AGENTS: [(&str, &str, Option<&str>); 4] = [
    ("triage", "openai/gpt-4o-mini", None),
    ("billing", "openai/gpt-4o", Some("money")),
    ("writer", "openai/gpt-4.1", Some("essay")),
    ("research", "openai/gpt-4.1-mini", Some("deep")),
];
const OVERVIEW: &str = "query($t: ID!, $r: TimeRangeInput) { teamOverview(teamId: $t, range: $r) {
    runs failures successRate latency { p50Ms p95Ms p99Ms } tokensIn tokensOut costUsd retryRate fallbackRate
    activeConversations busiestAgents { agent runs latency { p95Ms } } } }";
const SERIES: &str = "query($t: ID!, $r: TimeRangeInput, $m: Metric!) { metricsSeries(teamId: $t, metric: $m, bucket: HOUR, range: $r) { points { at value } } }";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A deterministic pseudo-random sequence (xorshift).
struct Random(u64);

impl Random {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

struct Server {
    state: AppState,
    client: reqwest::Client,
    url: String,
    token: String,
}

impl Server {
    async fn call(&self, query: &str, variables: Value) -> Value {
        let body = json!({"query": query, "variables": variables});
        let response = self.client.post(&self.url).bearer_auth(&self.token).json(&body).send().await.expect("request");
        let answer: Value = response.json().await.expect("JSON answer");
        assert!(answer.get("errors").is_none(), "{answer}");
        answer["data"].clone()
    }
}

async fn serve(file: &std::path::Path) -> Server {
    let mut config = Config::from_env().expect("config");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = file.parent().unwrap().join("data");
    config.database_url = format!("sqlite://{}", file.display());
    config.rate_limit_per_minute = 0;
    let app = App::build(config).await.expect("server builds");
    let addr = app.local_addr();
    let state = app.state().clone();
    tokio::spawn(async move { app.run_until(std::future::pending()).await });
    let dev = state.auth.dev.as_ref().expect("dev auth");
    let token = dev.sign("user_bench", None, GlobalRole::Member, Duration::from_secs(3600)).expect("token");
    Server { state, client: reqwest::Client::new(), url: format!("http://{addr}/graphql"), token }
}

/// The bench user's teams, created (with their four agents) when there are none yet.
async fn teams(server: &Server) -> Vec<String> {
    let listed = server.call("{ teams(first: 100) { nodes { id } } }", json!({})).await;
    let mut ids: Vec<String> =
        listed["teams"]["nodes"].as_array().unwrap().iter().map(|t| t["id"].as_str().unwrap().to_string()).collect();
    let agents: Vec<Value> = AGENTS.iter().map(|(name, model, _)| json!({"name": name, "model": model})).collect();
    let rules: Vec<Value> = AGENTS
        .iter()
        .filter_map(|(name, _, rule)| {
            rule.map(|rule| json!({"name": rule, "when": {"contains": rule}, "routeTo": name}))
        })
        .collect();
    let spec =
        json!({"format": "ensemble.team/v1", "agents": agents, "routing": {"rules": rules, "default": "triage"}});
    let create = "mutation($n: String!, $s: JSON) { createTeam(input: {name: $n, spec: $s}) { id } }";
    while ids.len() < TEAMS {
        let made = server.call(create, json!({"n": format!("Team {}", ids.len()), "s": spec})).await;
        ids.push(made["createTeam"]["id"].as_str().unwrap().to_string());
    }
    ids
}

/// One seeded run: a team, a time in the last 30 days, an agent, a latency with a long tail.
fn seeded(random: &mut Random, teams: &[String], now: DateTime<Utc>, n: u64) -> runs::Model {
    let at = now - chrono::Duration::seconds(random.below((DAYS * 86_400) as u64) as i64);
    let (agent, model, rule) = AGENTS[random.below(AGENTS.len() as u64) as usize];
    let latency = match random.below(100) {
        0 => 10_000 + random.below(50_000),
        1..=9 => 2_000 + random.below(8_000),
        _ => 200 + random.below(1_800),
    } as i64;
    let failed = random.below(100) < 3;
    let retries = if random.below(10) == 0 { 1 + random.below(2) as i32 } else { 0 };
    let fallbacks = i32::from(random.below(50) == 0);
    let (tokens_in, tokens_out) = (200 + random.below(2_000) as i64, 50 + random.below(800) as i64);
    runs::Model {
        id: format!("run_seed_{n:08}"),
        team_id: teams[random.below(teams.len() as u64) as usize].clone(),
        team_version: 1,
        conversation_id: None,
        user_id: Some("user_bench".into()),
        api_key_id: None,
        status: if failed { RunStatus::Failed } else { RunStatus::Succeeded },
        input: "seeded".into(),
        variables: None,
        message_id: None,
        routed_agent: Some(agent.into()),
        rule: rule.map(str::to_string),
        rule_reason: None,
        agent: Some(agent.into()),
        model: Some(model.into()),
        output: None,
        response_message_id: None,
        attempts: 1 + retries + fallbacks,
        retries,
        fallbacks,
        tokens_in,
        tokens_out,
        cost_usd: (tokens_in as f64 * 2.5 + tokens_out as f64 * 10.0) / 1e6,
        latency_ms: Some(latency),
        error_code: failed.then_some(ErrorCode::ServerError),
        error: None,
        created_at: at - chrono::Duration::milliseconds(latency),
        started_at: Some(at - chrono::Duration::milliseconds(latency)),
        finished_at: Some(at),
        estimated_cost_usd: None,
        estimated_max_cost_usd: None,
        reserved_tokens: None,
        reserved_nano_usd: None,
    }
}

/// Inserts `total` runs and their rollups, in batches of 2,000 runs.
async fn seed(state: &AppState, teams: &[String], total: u64) {
    let mut random = Random(0x9e37_79b9_7f4a_7c15);
    let now = Utc::now();
    let began = Instant::now();
    let mut n = 0;
    while n < total {
        let batch: Vec<runs::Model> = (n..(n + 2_000).min(total)).map(|i| seeded(&mut random, teams, now, i)).collect();
        n += batch.len() as u64;
        // Runs 500 to a statement (a benchmark's seed, not held to D1's limits), then their
        // rollups as the run writer adds them, in one batch.
        let mut write = Batch::new(state.writer.backend());
        for chunk in batch.chunks(500) {
            let rows = chunk.iter().map(|r| runs::ActiveModel::from(r.clone()).reset_all());
            write = write.write(&runs::Entity::insert_many(rows).into_query());
        }
        state.writer.run(rollups::add(write, &batch)).await.expect("runs and rollups added");
    }
    println!("seeded {total} runs with their rollups in {:.0?}", began.elapsed());
}

#[derive(sea_orm::FromQueryResult)]
struct RawRun {
    status: String,
    routed_agent: String,
    latency_ms: i64,
    retries: i32,
    fallbacks: i32,
    tokens_in: i64,
    tokens_out: i64,
    cost_usd: f64,
}

/// The nearest-rank percentile of sorted latencies.
fn nearest_rank(sorted: &[i64], p: f64) -> i64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

/// The overview's figures from raw runs: totals and rates, then percentiles of the team and of
/// each agent from the latencies read in order.
async fn raw_overview(state: &AppState, team: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<f64> {
    let rows = runs::Entity::find()
        .select_only()
        .columns([runs::Column::Status, runs::Column::RoutedAgent, runs::Column::LatencyMs])
        .columns([runs::Column::Retries, runs::Column::Fallbacks, runs::Column::TokensIn, runs::Column::TokensOut])
        .column(runs::Column::CostUsd)
        .filter(runs::Column::TeamId.eq(team))
        .filter(runs::Column::CreatedAt.gte(from))
        .filter(runs::Column::CreatedAt.lt(to))
        .order_by_asc(runs::Column::LatencyMs)
        .into_model::<RawRun>()
        .all(&state.db)
        .await
        .expect("raw runs");
    let mut by_agent: std::collections::HashMap<&str, Vec<i64>> = std::collections::HashMap::new();
    for row in &rows {
        by_agent.entry(&row.routed_agent).or_default().push(row.latency_ms);
    }
    let latencies: Vec<i64> = rows.iter().map(|r| r.latency_ms).collect();
    let count = |f: &dyn Fn(&RawRun) -> bool| rows.iter().filter(|r| f(r)).count() as f64;
    let mut figures = vec![
        rows.len() as f64,
        count(&|r| r.status == "failed"),
        count(&|r| r.retries > 0),
        count(&|r| r.fallbacks > 0),
        rows.iter().map(|r| (r.tokens_in + r.tokens_out) as f64).sum(),
        rows.iter().map(|r| r.cost_usd).sum(),
    ];
    figures.extend([0.5, 0.95, 0.99].map(|p| nearest_rank(&latencies, p) as f64));
    figures.extend(by_agent.values().map(|l| nearest_rank(l, 0.95) as f64));
    figures
}

/// The series' figures from raw runs: each hour's p95.
async fn raw_series(state: &AppState, team: &str, from: DateTime<Utc>, to: DateTime<Utc>) -> usize {
    let rows: Vec<(DateTime<Utc>, i64)> = runs::Entity::find()
        .select_only()
        .columns([runs::Column::CreatedAt, runs::Column::LatencyMs])
        .filter(runs::Column::TeamId.eq(team))
        .filter(runs::Column::CreatedAt.gte(from))
        .filter(runs::Column::CreatedAt.lt(to))
        .into_tuple()
        .all(&state.db)
        .await
        .expect("raw runs");
    let mut hours: std::collections::BTreeMap<i64, Vec<i64>> = std::collections::BTreeMap::new();
    for (at, latency) in rows {
        hours.entry(at.timestamp() / 3_600).or_default().push(latency);
    }
    hours
        .values_mut()
        .map(|l| {
            l.sort_unstable();
            nearest_rank(l, 0.95) as usize
        })
        .sum()
}

/// p50 and p99 of `requests` calls of `call`, one at a time, over the teams in turn.
async fn measure<F, Fut>(teams: &[String], requests: u64, mut call: F) -> (Duration, Duration)
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut latencies = Vec::new();
    for i in 0..requests {
        let began = Instant::now();
        call(teams[i as usize % teams.len()].clone()).await;
        latencies.push(began.elapsed());
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() as f64 * q) as usize).min(latencies.len() - 1)];
    (at(0.50), at(0.99))
}

#[tokio::main]
async fn main() {
    let total = env_number("ENSEMBLE_BENCH_RUNS", 1_000_000);
    let requests = env_number("ENSEMBLE_BENCH_REQUESTS", 300);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = std::env::var("ENSEMBLE_BENCH_DB").map(PathBuf::from).unwrap_or_else(|_| dir.path().join("bench.db"));
    let server = serve(&file).await;
    let teams = teams(&server).await;
    let stored = runs::Entity::find().count(&server.state.db).await.expect("count");
    if stored < total {
        seed(&server.state, &teams, total - stored).await;
    }
    let to = Utc::now();
    let from = to - chrono::Duration::days(DAYS);
    let range = json!({"from": from, "to": to});

    let overview = measure(&teams, requests, |team| {
        let vars = json!({"t": team, "r": range});
        let server = &server;
        async move {
            server.call(OVERVIEW, vars).await;
        }
    })
    .await;
    let runs_series = measure(&teams, requests, |team| {
        let vars = json!({"t": team, "r": range, "m": "RUNS"});
        let server = &server;
        async move {
            assert_eq!(server.call(SERIES, vars).await["metricsSeries"]["points"].as_array().unwrap().len(), 721);
        }
    })
    .await;
    let series = measure(&teams, requests, |team| {
        let vars = json!({"t": team, "r": range, "m": "LATENCY_P95"});
        let server = &server;
        async move {
            assert_eq!(server.call(SERIES, vars).await["metricsSeries"]["points"].as_array().unwrap().len(), 721);
        }
    })
    .await;
    let raw_requests = (requests / 5).max(20);
    let state = &server.state;
    let raw_overview = measure(&teams, raw_requests, |team| async move {
        std::hint::black_box(raw_overview(state, &team, from, to).await);
    })
    .await;
    let raw_series = measure(&teams, raw_requests, |team| async move {
        std::hint::black_box(raw_series(state, &team, from, to).await);
    })
    .await;
    println!(
        "SQLite, {stored_or_seeded} runs over {DAYS} days for {TEAMS} teams; one request at a time",
        stored_or_seeded = stored.max(total)
    );
    println!("teamOverview, 30 days (HTTP):        p50 {:>9.2?}  p99 {:>9.2?}", overview.0, overview.1);
    println!(
        "  the same from raw runs (SQL only):  p50 {:>9.2?}  p99 {:>9.2?}  ({:.1}x the p99)",
        raw_overview.0,
        raw_overview.1,
        ratio(raw_overview.1, overview.1)
    );
    println!("metricsSeries RUNS HOUR, 30 days (HTTP): p50 {:>9.2?}  p99 {:>9.2?}", runs_series.0, runs_series.1);
    println!("metricsSeries LATENCY_P95 HOUR (HTTP):  p50 {:>9.2?}  p99 {:>9.2?}", series.0, series.1);
    println!(
        "  the same from raw runs (SQL only):  p50 {:>9.2?}  p99 {:>9.2?}  ({:.1}x the p99)",
        raw_series.0,
        raw_series.1,
        ratio(raw_series.1, series.1)
    );
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}
