//! `/metrics` as an operator scrapes it: runs started and finished by status, model-call
//! latency and provider errors by provider, rate-limited operations and budget refusals move
//! with real operations; no label carries an id; `ENSEMBLE_METRICS_TOKEN` guards the endpoint
//! and never reaches a log.

use crate::common;

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use common::{TestApp, first_code, served::ServedLog};
use ensemble::domain::GlobalRole;
use serde_json::{Value, json};

const RUN: &str = "mutation($team: ID!, $content: String!, $wait: Boolean!) {
    runTeam(teamId: $team, input: {content: $content}, wait: $wait) { id status errorCode } }";

/// Agents that answer after 300 ms, fail every call, or take 20 s.
fn spec() -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "quick", "model": "local/slow-300"}, {"name": "broken", "model": "local/down"},
                   {"name": "sloth", "model": "local/slow-20000"}],
        "routing": {"rules": [{"name": "fail", "when": {"contains": "fail"}, "routeTo": "broken"},
                              {"name": "wait", "when": {"contains": "wait"}, "routeTo": "sloth"}],
                    "default": "quick"},
        "retry": {"maxAttempts": 2, "initialBackoffMs": 10, "maxBackoffMs": 10, "retryOn": ["server_error"]}
    })
}

async fn create_team(app: &TestApp, token: &str) -> String {
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Support\", spec: $spec}) { id } }";
    app.must(token, create, json!({"spec": spec()})).await["createTeam"]["id"].as_str().unwrap().to_string()
}

async fn scrape(app: &TestApp) -> String {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.text().await.unwrap()
}

/// The value of one series (`name{labels}` exactly as exposed); 0 when it is not there yet.
fn value(text: &str, series: &str) -> f64 {
    let prefix = format!("{series} ");
    text.lines().find_map(|line| line.strip_prefix(prefix.as_str())).map_or(0.0, |v| v.parse().unwrap())
}

/// How much each series moved between two scrapes.
fn moved(before: &str, after: &str, series: &str) -> f64 {
    value(after, series) - value(before, series)
}

#[tokio::test]
async fn run_counters_move_as_runs_start_succeed_fail_and_are_cancelled() {
    let app = TestApp::spawn().await;
    let token = app.token("user_operator", GlobalRole::Member);
    let team = create_team(&app, &token).await;
    let before = scrape(&app).await;

    let ok = app.must(&token, RUN, json!({"team": team, "content": "hello", "wait": true})).await;
    assert_eq!(ok["runTeam"]["status"], "SUCCEEDED");
    let failed = app.must(&token, RUN, json!({"team": team, "content": "please fail", "wait": true})).await;
    assert_eq!(failed["runTeam"]["status"], "FAILED");
    let slow = app.must(&token, RUN, json!({"team": team, "content": "wait for it", "wait": false})).await;
    let during = scrape(&app).await;
    let cancel = "mutation($id: ID!) { cancelRun(id: $id) { status } }";
    assert_eq!(
        app.must(&token, cancel, json!({"id": slow["runTeam"]["id"]})).await["cancelRun"]["status"],
        "CANCELLED"
    );
    let after = scrape(&app).await;

    assert_eq!(moved(&before, &after, "ensemble_runs_started_total"), 3.0, "{after}");
    for (status, n) in [("succeeded", 1.0), ("failed", 1.0), ("cancelled", 1.0)] {
        assert_eq!(
            moved(&before, &after, &format!("ensemble_runs_finished_total{{status=\"{status}\"}}")),
            n,
            "{status}"
        );
    }
    assert_eq!(value(&during, "ensemble_runs_in_progress"), 1.0, "{during}");
    assert_eq!(value(&after, "ensemble_runs_in_progress"), 0.0);
    // One answer and two failed calls; the call the cancel cut short is not the provider's.
    let calls = "ensemble_model_call_duration_seconds_count{provider=\"local\"}";
    assert_eq!(moved(&before, &after, calls), 3.0, "{after}");
    assert!(moved(&before, &after, "ensemble_model_call_duration_seconds_sum{provider=\"local\"}") >= 0.3);
    let fast = "ensemble_model_call_duration_seconds_bucket{provider=\"local\",le=\"0.25\"}";
    assert_eq!(moved(&before, &after, fast), 2.0, "the 300 ms answer is above 0.25 s: {after}");
    let errors = "ensemble_provider_errors_total{provider=\"local\",class=\"server_error\"}";
    assert_eq!(moved(&before, &after, errors), 2.0, "{after}");
}

#[tokio::test]
async fn budget_refusals_and_rate_limited_operations_are_counted() {
    let app = TestApp::spawn_with(|c| {
        c.runs.daily_token_budget = Some(5);
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 20;
    })
    .await;
    let token = app.token("user_hasty", GlobalRole::Member);
    let team = create_team(&app, &token).await;
    let before = scrape(&app).await;

    let (_, body) = app.gql_as(&token, RUN, json!({"team": team, "content": "hello", "wait": true})).await;
    assert_eq!(first_code(&body), "QUOTA_EXCEEDED", "{body}");
    let mut limited = 0.0;
    for _ in 0..40 {
        let (status, body) = app.gql_as(&token, "{ __typename }", json!({})).await;
        if status == 429 {
            assert_eq!(first_code(&body), "RATE_LIMITED");
            limited += 1.0;
        }
    }
    let after = scrape(&app).await;

    let refusals = "ensemble_budget_refusals_total{principal=\"user\",budget=\"tokens\"}";
    assert_eq!(moved(&before, &after, refusals), 1.0, "{after}");
    assert_eq!(moved(&before, &after, "ensemble_runs_started_total"), 0.0, "the refused run never started");
    assert!(limited >= 15.0, "only {limited} operations were refused");
    assert_eq!(moved(&before, &after, "ensemble_rate_limited_total"), limited, "{after}");
}

#[tokio::test]
async fn no_label_carries_a_team_user_key_or_run_id() {
    let app = TestApp::spawn().await;
    let token = app.token("user_3f9c2b7e", GlobalRole::Member);
    let team = create_team(&app, &token).await;
    let create_key = "mutation { createApiKey(input: {name: \"ci\", scopes: [RUNS_EXECUTE, TEAMS_READ]}) { secret apiKey { id prefix } } }";
    let key = app.must(&token, create_key, json!({})).await["createApiKey"].clone();
    let secret = key["secret"].as_str().unwrap();
    let run = app.must(secret, RUN, json!({"team": team, "content": "please fail", "wait": true})).await;
    let run_id = run["runTeam"]["id"].as_str().unwrap().to_string();

    let text = scrape(&app).await;

    for id in [
        team.as_str(),
        "user_3f9c2b7e",
        key["apiKey"]["id"].as_str().unwrap(),
        key["apiKey"]["prefix"].as_str().unwrap(),
        secret,
        &run_id,
    ] {
        assert!(!text.contains(id), "{id} is in /metrics:\n{text}");
    }
    // Every run label comes from a fixed set, and the only provider label is a configured one.
    for line in
        text.lines().filter(|l| l.starts_with("ensemble_model_call") || l.starts_with("ensemble_provider_errors"))
    {
        assert!(line.contains("provider=\"local\""), "{line}");
    }
}

#[tokio::test]
async fn with_a_metrics_token_set_metrics_answer_only_to_its_bearer() {
    const TOKEN: &str = "scrape-5e1f0c9d7a";
    let app = TestApp::spawn_with(|c| c.metrics_token = Some(TOKEN.into())).await;
    let get = |authorization: Option<String>| {
        let mut request = app.client.get(app.url("/metrics"));
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        request.send()
    };

    for refused in
        [None, Some("Bearer wrong".to_string()), Some(format!("Basic {TOKEN}")), Some(format!("Bearer {TOKEN}x"))]
    {
        let response = get(refused.clone()).await.unwrap();
        assert_eq!(response.status(), 401, "{refused:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer realm=\"metrics\"");
        let body = response.text().await.unwrap();
        assert!(!body.contains(TOKEN) && !body.contains("ensemble_"), "{body}");
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("ENSEMBLE_METRICS_TOKEN"), "{message}");
    }
    for accepted in [format!("Bearer {TOKEN}"), format!("bearer {TOKEN}")] {
        let response = get(Some(accepted)).await.unwrap();
        assert_eq!(response.status(), 200);
        assert!(response.text().await.unwrap().contains("ensemble_runs_started_total"));
    }
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "only /metrics asks for the token");
}

/// The real binary with `ENSEMBLE_METRICS_TOKEN` and debug logs: scraped with, without and with
/// the wrong token, its token appears in no log line.
#[tokio::test]
async fn the_metrics_token_never_reaches_the_log() {
    const TOKEN: &str = "scrape-b64c2e81d0f7";
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::install_dev_key(&data);
    let mut server = common::ensemble()
        .arg("serve")
        .env("DATABASE_URL", format!("sqlite://{}/ensemble.db", dir.path().display()))
        .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
        .env("ENSEMBLE_DATA_DIR", &data)
        .env("ENSEMBLE_METRICS_TOKEN", TOKEN)
        .env("RUST_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = ServedLog::follow(&mut server);
    let addr = log.listening(&mut server, Duration::from_secs(30)).await;
    let client = reqwest::Client::new();
    let url = |path: &str| format!("http://{addr}{path}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while client.get(url("/readyz")).send().await.map(|r| r.status() != 200).unwrap_or(true) {
        assert!(Instant::now() < deadline, "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    assert_eq!(client.get(url("/metrics")).send().await.unwrap().status(), 401);
    assert_eq!(client.get(url("/metrics")).bearer_auth("nope").send().await.unwrap().status(), 401);
    assert_eq!(client.get(url("/metrics")).bearer_auth(TOKEN).send().await.unwrap().status(), 200);
    let misused = client.post(url("/graphql")).bearer_auth(TOKEN).json(&json!({"query": "{ me { id } }"})).send();
    assert_eq!(misused.await.unwrap().status(), 401, "the metrics token is no API credential");

    let _ = server.kill();
    let _ = server.wait();
    let log = log.all().await.join("\n");
    assert!(log.contains("/metrics"), "the requests were logged at debug level:\n{log}");
    assert!(!log.contains(TOKEN), "the token is in the log:\n{log}");
}
