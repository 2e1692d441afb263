//! `runTeam` throughput on SQLite: 32 concurrent clients over real HTTP run a one-agent team on
//! `local/echo` with `wait: true`, against a `serverInfo` query under the same load (the
//! baseline). Then memory: the process's resident size after 1,000 runs, halfway, and after
//! 100,000.
//!
//! `cargo bench --bench runs` (release). `ENSEMBLE_BENCH_SECS` (default 10) sets each measured
//! phase, `ENSEMBLE_BENCH_RUNS` (default 100000) the long run for the memory figure.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use ensemble::{config::Config, domain::GlobalRole, startup::App};
use serde_json::{Value, json};

const CLIENTS: usize = 32;
const RUN: &str =
    "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"Where is my order?\"}) { status output } }";
const INFO: &str = "{ serverInfo { version database } }";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Resident memory of this process, in KiB.
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
}

impl Target {
    async fn call(&self, query: &str, variables: &Value) -> Value {
        let response = self
            .client
            .post(&self.url)
            .bearer_auth(&self.token)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .expect("request");
        response.json().await.expect("JSON answer")
    }
}

fn check(body: &Value) {
    assert!(body.get("errors").is_none(), "a request failed: {body}");
    if let Some(run) = body["data"].get("runTeam") {
        assert_eq!(run["status"], "SUCCEEDED", "{body}");
    }
}

/// `CLIENTS` loops sending `query` for `secs`; answers (requests/s, p50, p99).
async fn load(target: Arc<Target>, query: &'static str, variables: Value, secs: u64) -> (f64, Duration, Duration) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (target, variables) = (target.clone(), variables.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                while Instant::now() < deadline {
                    let began = Instant::now();
                    check(&target.call(query, &variables).await);
                    latencies.push(began.elapsed());
                }
                latencies
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.expect("client task"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len() as f64 / elapsed, at(0.50), at(0.99))
}

/// Runs until `total` runs have been made in all.
async fn run_until(target: Arc<Target>, variables: Value, done: Arc<AtomicU64>, total: u64) {
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (target, variables, done) = (target.clone(), variables.clone(), done.clone());
            tokio::spawn(async move {
                while done.fetch_add(1, Ordering::Relaxed) < total {
                    check(&target.call(RUN, &variables).await);
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("client task");
    }
    done.store(total, Ordering::Relaxed);
}

/// A server on a fresh SQLite file with one team; answers a client for it and the team's id
/// (the folder must outlive the server).
async fn serve(dir: &tempfile::TempDir) -> (Arc<Target>, Value) {
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
    let token = dev.sign("user_bench", None, GlobalRole::Member, Duration::from_secs(3600)).expect("token");
    let target = Arc::new(Target { client: reqwest::Client::new(), url: format!("http://{addr}/graphql"), token });
    let created = target.call("mutation { createTeam(input: {name: \"Bench\"}) { id } }", &json!({})).await;
    assert!(created["data"]["createTeam"]["id"].is_string(), "{created}");
    (target, json!({"t": created["data"]["createTeam"]["id"]}))
}

#[tokio::main]
async fn main() {
    let secs = env_number("ENSEMBLE_BENCH_SECS", 10);
    let total = env_number("ENSEMBLE_BENCH_RUNS", 100_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let (target, variables) = serve(&dir).await;

    load(target.clone(), INFO, json!({}), 2).await;
    let (info_rps, info_p50, info_p99) = load(target.clone(), INFO, json!({}), secs).await;
    load(target.clone(), RUN, variables.clone(), 2).await;
    let (run_rps, run_p50, run_p99) = load(target.clone(), RUN, variables.clone(), secs).await;
    println!("{CLIENTS} clients, {secs} s each, SQLite, one process (clients and server share the cores)");
    println!("serverInfo:            {info_rps:>8.0} req/s   p50 {info_p50:>9.2?}   p99 {info_p99:>9.2?}");
    println!("runTeam (local/echo):  {run_rps:>8.0} runs/s  p50 {run_p50:>9.2?}   p99 {run_p99:>9.2?}");
    println!(
        "ratio runTeam / serverInfo: {:.2} of the throughput, {:.1}x the p99",
        run_rps / info_rps,
        run_p99.as_secs_f64() / info_p99.as_secs_f64()
    );

    // Memory on a server of its own, so the phases above do not count.
    let fresh = tempfile::tempdir().expect("temp dir");
    let (target, variables) = serve(&fresh).await;
    let done = Arc::new(AtomicU64::new(0));
    run_until(target.clone(), variables.clone(), done.clone(), 1_000).await;
    let after_1k = rss_kib();
    let began = Instant::now();
    run_until(target.clone(), variables.clone(), done.clone(), total / 2).await;
    let halfway = rss_kib();
    run_until(target, variables, done, total).await;
    let after_all = rss_kib();
    println!(
        "memory: {after_1k} KiB after 1,000 runs, {halfway} KiB after {}, {after_all} KiB after {total} ({:.2}x of the first; {:.0} runs/s over the long run)",
        total / 2,
        after_all as f64 / after_1k as f64,
        (total - 1_000) as f64 / began.elapsed().as_secs_f64()
    );
}
