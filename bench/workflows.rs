//! Workflow runs at scale on SQLite: 1,000 workflows of 5 steps on `local/slow-500`, started at
//! once over real HTTP (`startWorkflow`, answered at once), waited for until every one has
//! ended. Figures: how many succeeded, steps per second, end-to-end p50 / p99 against the ideal
//! (5 × 500 ms), the server's resident memory; then memory after 10,000 workflows against
//! after 1,000. The baseline is `runTeam` on the same model and server: 1,000 runs started at
//! once (`wait: false`), runs per second until all have ended.
//!
//! `cargo bench --bench workflows` (release). `ENSEMBLE_BENCH_WORKFLOWS` (default 1000) sets a
//! wave, `ENSEMBLE_BENCH_WAVES` (default 10) how many waves the memory figure runs.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use ensemble::{config::Config, domain::GlobalRole, startup::App};
use serde_json::{Value, json};

/// Clients sending the starts.
const CLIENTS: usize = 32;
const STEPS: usize = 5;
const STEP_MS: u64 = 500;
const START: &str =
    "mutation($t: ID!, $input: StartWorkflowInput!) { startWorkflow(teamId: $t, input: $input) { id status } }";
const RUN: &str =
    "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"Where is my order?\"}, wait: false) { id } }";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident memory of this process (server and clients), in KiB.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Target {
    client: reqwest::Client,
    url: String,
    token: String,
    state: ensemble::state::AppState,
}

impl Target {
    async fn call(&self, query: &str, variables: &Value) -> Value {
        let body = json!({"query": query, "variables": variables});
        let response = self.client.post(&self.url).bearer_auth(&self.token).json(&body).send().await.expect("request");
        let answer: Value = response.json().await.expect("JSON answer");
        assert!(answer.get("errors").is_none(), "a request failed: {answer}");
        answer["data"].clone()
    }

    /// Sends `count` operations from `CLIENTS` clients at once.
    async fn send_all(self: &Arc<Self>, query: &'static str, variables: Value, count: usize) {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (target, variables, next) = (self.clone(), variables.clone(), next.clone());
                tokio::spawn(async move {
                    while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < count {
                        target.call(query, &variables).await;
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await.expect("client task");
        }
    }
}

/// A server on a fresh SQLite file with a team of one `local/slow-500` agent and a WORKFLOW
/// of 5 steps on it; answers a client, the team's id and the template's.
async fn serve(dir: &tempfile::TempDir) -> (Arc<Target>, String, String) {
    let mut config = Config::from_env().expect("config");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    config.database_url = format!("sqlite://{}/bench.db", dir.path().display());
    config.rate_limit_per_minute = 0;
    let app = App::build(config).await.expect("server builds");
    let addr = app.local_addr();
    let state = app.state().clone();
    tokio::spawn(async move { app.run_until(std::future::pending()).await });
    let dev = state.auth.dev.as_ref().expect("dev auth");
    let token = dev.sign("user_bench", None, GlobalRole::Member, Duration::from_secs(7200)).expect("token");
    let url = format!("http://{addr}/graphql");
    let target = Arc::new(Target { client: reqwest::Client::new(), url, token, state });
    let spec =
        json!({"format": "ensemble.team/v1", "agents": [{"name": "steady", "model": format!("local/slow-{STEP_MS}")}]});
    let create = "mutation($s: JSON) { createTeam(input: {name: \"Bench\", spec: $s}) { id } }";
    let team = target.call(create, &json!({"s": spec})).await["createTeam"]["id"].as_str().unwrap().to_string();
    // Each step reads the one before, as real workflows do.
    let prompt = |n: usize| match n {
        1 => "Part 1".to_string(),
        n => format!("Part {n} after {{{{ steps.s{}.output }}}}", n - 1),
    };
    let steps: Vec<Value> =
        (1..=STEPS).map(|n| json!({"id": format!("s{n}"), "agent": "steady", "prompt": prompt(n)})).collect();
    let template =
        "mutation($b: JSON!) { createTemplate(input: {kind: WORKFLOW, name: \"Five parts\", body: $b}) { id } }";
    let made = target.call(template, &json!({"b": {"steps": steps}})).await;
    (target, team, made["createTemplate"]["id"].as_str().unwrap().to_string())
}

/// Waits until `open` answers 0; answers how long that took since `since`.
async fn until_none<F, Fut>(since: Instant, open: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = u64>,
{
    while open().await > 0 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    since.elapsed()
}

/// Waits until no workflow of the server is in progress.
async fn workflows_ended(target: &Target, since: Instant) -> Duration {
    use entity::{states::WorkflowStatus, workflow_runs};
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let open = workflow_runs::Entity::find().filter(workflow_runs::Column::Status.is_in(WorkflowStatus::IN_PROGRESS));
    until_none(since, || async { open.clone().count(&target.state.db).await.expect("count") }).await
}

/// Waits until no run of the server is in progress.
async fn runs_ended(target: &Target, since: Instant) -> Duration {
    use entity::{runs, states::RunStatus};
    use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
    let open = runs::Entity::find().filter(runs::Column::Status.is_in([RunStatus::Queued, RunStatus::Running]));
    until_none(since, || async { open.clone().count(&target.state.db).await.expect("count") }).await
}

/// The wave's workflows: how many succeeded, and their end-to-end times, sorted.
async fn outcomes(target: &Target) -> (usize, usize, Vec<Duration>) {
    use entity::{states::WorkflowStatus, workflow_runs};
    use sea_orm::EntityTrait;
    let rows = workflow_runs::Entity::find().all(&target.state.db).await.expect("read");
    let succeeded = rows.iter().filter(|row| row.status == WorkflowStatus::Succeeded).count();
    let took = |created: DateTime<Utc>, finished: Option<DateTime<Utc>>| {
        finished.map(|finished| (finished - created).to_std().unwrap_or_default())
    };
    let mut times: Vec<Duration> = rows.iter().filter_map(|row| took(row.created_at, row.finished_at)).collect();
    times.sort_unstable();
    (rows.len(), succeeded, times)
}

fn at(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)]
}

#[tokio::main]
async fn main() {
    let wave = env_number("ENSEMBLE_BENCH_WORKFLOWS", 1_000) as usize;
    let waves = env_number("ENSEMBLE_BENCH_WAVES", 10) as usize;
    let ideal = Duration::from_millis(STEPS as u64 * STEP_MS);

    // Baseline: runTeam on the same model, all started at once.
    let dir = tempfile::tempdir().expect("temp dir");
    let (target, team, template) = serve(&dir).await;
    let began = Instant::now();
    target.send_all(RUN, json!({"t": team}), wave).await;
    let runs_took = runs_ended(&target, began).await;
    let runs_per_sec = wave as f64 / runs_took.as_secs_f64();

    let input = json!({"t": team, "input": {"templateId": template}});
    let began = Instant::now();
    target.send_all(START, input.clone(), wave).await;
    let started_in = began.elapsed();
    let took = workflows_ended(&target, began).await;
    let (total, succeeded, times) = outcomes(&target).await;
    let steps_per_sec = (succeeded * STEPS) as f64 / took.as_secs_f64();
    let after_first = rss_kib();
    println!("{wave} workflows of {STEPS} steps on local/slow-{STEP_MS}, SQLite, {CLIENTS} clients, one process");
    println!(
        "started in {started_in:.2?} ({:.0} starts/s); all ended in {took:.2?}",
        wave as f64 / started_in.as_secs_f64()
    );
    println!("succeeded: {succeeded} of {total}");
    println!(
        "steps/s: {steps_per_sec:.0}; end to end p50 {:.2?}, p99 {:.2?} against the ideal {ideal:.2?} (p99 {:.2}x)",
        at(&times, 0.5),
        at(&times, 0.99),
        at(&times, 0.99).as_secs_f64() / ideal.as_secs_f64()
    );
    println!(
        "baseline runTeam: {wave} runs started at once ended in {runs_took:.2?}: {runs_per_sec:.0} runs/s; steps/s ÷ runs/s = {:.2}",
        steps_per_sec / runs_per_sec
    );
    println!("memory after {wave} workflows: {after_first} KiB");

    for _ in 1..waves {
        let began = Instant::now();
        target.send_all(START, input.clone(), wave).await;
        workflows_ended(&target, began).await;
    }
    let after_all = rss_kib();
    let (total, succeeded, _) = outcomes(&target).await;
    println!(
        "memory after {total} workflows ({succeeded} succeeded): {after_all} KiB, {:.2}x of after {wave}",
        after_all as f64 / after_first as f64
    );
}
