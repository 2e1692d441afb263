//! Monitoring from rollups: percentiles against a brute-force computation on random latencies,
//! the overview and series of real runs, insights with their figures, error groups resolved and
//! reopened, live metrics, and the bad inputs a dashboard will send.

use crate::common;

use chrono::{DateTime, Duration, SubsecRound, TimeZone, Utc};
use common::{
    TestApp, WsClient, first_code,
    meanwhile::{Meanwhile, sql},
    problem_paths,
};
use ensemble::{
    db::batch::Batch,
    domain::{Caller, GlobalRole, RunEvent, RunEventKind},
    service::rollups::{self, latency_bucket},
};
use entity::{audit_logs, error_groups, runs, states::RunStatus};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryTrait, sea_query::Expr};
use serde_json::{Value, json};

const OVERVIEW: &str = "query($team: ID!, $range: TimeRangeInput) { teamOverview(teamId: $team, range: $range) {
    from to runs failures successRate latency { p50Ms p95Ms p99Ms avgMs } tokensIn tokensOut costUsd activeConversations
    retries fallbacks retryRate fallbackRate topErrors { fingerprint code count } busiestAgents { agent runs failures latency { p95Ms } } } }";

const SERIES: &str = "query($team: ID, $metric: Metric!, $bucket: Grain!, $range: TimeRangeInput, $agent: String, $model: String) {
    metricsSeries(teamId: $team, metric: $metric, bucket: $bucket, range: $range, agent: $agent, model: $model) { from to points { at value } } }";

const RUN: &str = "mutation($team: ID!, $input: RunInput!, $wait: Boolean = true) { runTeam(teamId: $team, input: $input, wait: $wait) { id status } }";

async fn team(app: &TestApp, token: &str, spec: Value) -> String {
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Watched\", spec: $spec}) { id } }";
    let (_, body) = app.gql_as(token, create, json!({"spec": spec})).await;
    body["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string()
}

fn simple_spec() -> Value {
    json!({"format": "ensemble.team/v1", "agents": [{"name": "triage", "model": "local/echo"}], "routing": {"default": "triage"}})
}

/// A deterministic pseudo-random sequence (xorshift), so a failure can be replayed.
struct Random(u64);

impl Random {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }
}

/// Adds `finished` runs to the rollups, in a batch as the run writer does.
async fn add_rollups(app: &TestApp, finished: &[runs::Model]) {
    let batch = rollups::add(Batch::new(app.state.writer.backend()), finished);
    app.state.writer.run(batch).await.unwrap();
}

/// A finished run as the run writer hands it to the rollups.
fn finished(team: &str, agent: &str, model: &str, at: DateTime<Utc>, latency_ms: i64, failed: bool) -> runs::Model {
    runs::Model {
        id: format!("run_{}", uuid::Uuid::now_v7().simple()),
        team_id: team.into(),
        team_version: 1,
        conversation_id: None,
        user_id: None,
        api_key_id: None,
        status: if failed { RunStatus::Failed } else { RunStatus::Succeeded },
        input: "x".into(),
        variables: None,
        message_id: None,
        routed_agent: Some(agent.into()),
        rule: None,
        rule_reason: None,
        agent: Some(agent.into()),
        model: Some(model.into()),
        output: None,
        response_message_id: None,
        attempts: 1,
        retries: 0,
        fallbacks: 0,
        tokens_in: 10,
        tokens_out: 20,
        cost_usd: 0.0,
        latency_ms: Some(latency_ms),
        error_code: None,
        error: None,
        created_at: at,
        started_at: Some(at),
        finished_at: Some(at),
        estimated_cost_usd: None,
        estimated_max_cost_usd: None,
        reserved_tokens: None,
        reserved_nano_usd: None,
    }
}

/// The nearest-rank percentile of raw latencies, rounded as the histogram rounds.
fn brute_force(latencies: &mut [i64], p: f64) -> Option<i64> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let rank = ((p * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
    Some(latency_bucket(latencies[rank - 1]))
}

#[tokio::test]
async fn percentiles_from_rollups_equal_a_brute_force_computation() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let team = team(&app, &token, simple_spec()).await;
    let mut random = Random(0x5eed_1234_abcd_0001);
    // Three days of runs from two agents, with latencies over five orders of magnitude.
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let runs: Vec<runs::Model> = (0..3_000)
        .map(|_| {
            let at = start + Duration::seconds(random.next(3 * 86_400) as i64);
            let latency = match random.next(10) {
                0 => random.next(100_000) as i64,
                1..=3 => random.next(5_000) as i64,
                _ => random.next(400) as i64,
            };
            let agent = if random.next(3) == 0 { "writer" } else { "triage" };
            finished(&team, agent, "local/echo", at, latency, random.next(20) == 0)
        })
        .collect();
    for chunk in runs.chunks(250) {
        add_rollups(&app, chunk).await;
    }
    // A range with ragged edges: minutes, hours and days are all read.
    let (from, to) = (start + Duration::minutes(7 * 60 + 13), start + Duration::minutes(2 * 1440 + 19 * 60 + 41));
    let inside = |r: &&runs::Model| r.finished_at.unwrap() >= from && r.finished_at.unwrap() < to;
    let mut all: Vec<i64> = runs.iter().filter(inside).map(|r| r.latency_ms.unwrap()).collect();
    let mut triage: Vec<i64> = runs
        .iter()
        .filter(inside)
        .filter(|r| r.agent.as_deref() == Some("triage"))
        .map(|r| r.latency_ms.unwrap())
        .collect();
    let range = json!({"from": from, "to": to});
    let (_, body) = app.gql_as(&token, OVERVIEW, json!({"team": team, "range": range})).await;
    let overview = &body["data"]["teamOverview"];
    assert_eq!(overview["runs"], all.len(), "{body}");
    assert_eq!(overview["failures"], runs.iter().filter(inside).filter(|r| r.status == RunStatus::Failed).count());
    for (field, p) in [("p50Ms", 0.50), ("p95Ms", 0.95), ("p99Ms", 0.99)] {
        assert_eq!(overview["latency"][field], json!(brute_force(&mut all, p)), "{field}");
    }
    let busiest = &overview["busiestAgents"][0];
    assert_eq!(busiest["agent"], "triage");
    assert_eq!(busiest["runs"], triage.len());
    assert_eq!(busiest["latency"]["p95Ms"], json!(brute_force(&mut triage, 0.95)));

    // Hourly p95 series: each point is the brute-force p95 of that hour's runs (null when empty).
    let (_, body) = app
        .gql_as(&token, SERIES, json!({"team": team, "metric": "LATENCY_P95", "bucket": "HOUR", "range": range}))
        .await;
    let points = body["data"]["metricsSeries"]["points"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(points.len(), 2 * 24 + 13, "07:00 on day 1 to 20:00 on day 3");
    for point in points {
        let hour: DateTime<Utc> = point["at"].as_str().unwrap().parse().unwrap();
        let mut in_hour: Vec<i64> = runs
            .iter()
            .filter(|r| r.finished_at.unwrap() >= hour && r.finished_at.unwrap() < hour + Duration::hours(1))
            .map(|r| r.latency_ms.unwrap())
            .collect();
        assert_eq!(point["value"].as_f64(), brute_force(&mut in_hour, 0.95).map(|ms| ms as f64), "{hour}");
    }
}

#[tokio::test]
async fn a_bucket_without_runs_has_no_latency_or_rate_but_counts_zero() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let team = team(&app, &token, simple_spec()).await;
    // Runs at 00:10 and 02:10; none between 01:00 and 02:00.
    let start = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let runs = [
        finished(&team, "triage", "local/echo", start + Duration::minutes(10), 120, false),
        finished(&team, "triage", "local/echo", start + Duration::minutes(130), 340, false),
    ];
    add_rollups(&app, &runs).await;
    let range = json!({"from": start, "to": start + Duration::hours(3)});
    let series = |metric: &'static str| {
        let (app, token, team, range) = (&app, &token, &team, &range);
        async move {
            let vars = json!({"team": team, "metric": metric, "bucket": "HOUR", "range": range});
            let (_, body) = app.gql_as(token, SERIES, vars).await;
            let points = body["data"]["metricsSeries"]["points"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
            points.iter().map(|p| p["value"].clone()).collect::<Vec<Value>>()
        }
    };
    for metric in ["LATENCY_P50", "LATENCY_P95", "LATENCY_P99"] {
        assert_eq!(
            series(metric).await,
            [json!(120.0), Value::Null, json!(340.0)],
            "{metric}: no 0 ms where nothing ran"
        );
    }
    for metric in ["RETRY_RATE", "FALLBACK_RATE"] {
        assert_eq!(series(metric).await, [json!(0.0), Value::Null, json!(0.0)], "{metric}");
    }
    assert_eq!(series("RUNS").await, [json!(1.0), json!(0.0), json!(1.0)]);
    assert_eq!(series("TOKENS").await, [json!(30.0), json!(0.0), json!(30.0)]);
    assert_eq!(series("FAILURES").await, [json!(0.0), json!(0.0), json!(0.0)]);
}

#[tokio::test]
async fn overview_and_series_of_real_runs() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let spec = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "triage", "model": "local/echo"}, {"name": "billing", "model": "local/flaky-1"},
                   {"name": "outage", "model": "local/down"}, {"name": "doomed", "model": "local/down"}],
        "routing": {"rules": [{"name": "money", "when": {"contains": "refund"}, "routeTo": "billing"},
                              {"name": "status", "when": {"contains": "status"}, "routeTo": "outage"},
                              {"name": "hopeless", "when": {"contains": "hopeless"}, "routeTo": "doomed"}], "default": "triage"},
        "fallbacks": {"outage": ["triage"]},
        "retry": {"maxAttempts": 2, "initialBackoffMs": 5, "maxBackoffMs": 5, "jitter": false}
    });
    let team = team(&app, &token, spec).await;
    let conversation = "mutation($team: ID!) { startConversation(teamId: $team, title: \"Chat\") { id } }";
    let (_, body) = app.gql_as(&token, conversation, json!({"team": team})).await;
    let conversation = body["data"]["startConversation"]["id"].clone();
    for input in [
        json!({"content": "hello", "conversationId": conversation}),
        json!({"content": "hello again"}),
        json!({"content": "a refund please"}),
        json!({"content": "status?"}),
        json!({"content": "hopeless"}),
    ] {
        let (_, body) = app.gql_as(&token, RUN, json!({"team": team, "input": input})).await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    let (_, body) = app.gql_as(&token, OVERVIEW, json!({"team": team})).await;
    let o = &body["data"]["teamOverview"];
    assert_eq!(o["runs"], 5, "{body}");
    assert_eq!(o["failures"], 1);
    assert_eq!(o["successRate"], 0.8);
    assert_eq!(o["retryRate"], 0.6, "billing retried once, outage and doomed retried: {body}");
    assert_eq!(o["fallbackRate"], 0.2);
    assert_eq!(o["activeConversations"], 1);
    assert_eq!(o["topErrors"][0]["code"], "server_error");
    assert_eq!(o["busiestAgents"][0]["agent"], "triage");
    assert_eq!(o["busiestAgents"][0]["runs"], 2);
    assert!(o["latency"]["p99Ms"].as_i64().is_some());

    let range = json!({"from": Utc::now() - Duration::minutes(30), "to": Utc::now()});
    let (_, body) =
        app.gql_as(&token, SERIES, json!({"team": team, "metric": "RUNS", "bucket": "MINUTE", "range": range})).await;
    let points = body["data"]["metricsSeries"]["points"].as_array().unwrap_or_else(|| panic!("{body}")).clone();
    assert!((30..=31).contains(&points.len()), "every minute is present: {}", points.len());
    assert_eq!(points.iter().map(|p| p["value"].as_f64().unwrap()).sum::<f64>(), 5.0);
    let at: Vec<&str> = points.iter().map(|p| p["at"].as_str().unwrap()).collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "in order");
    let vars = json!({"team": team, "metric": "FAILURES", "bucket": "HOUR", "agent": "doomed"});
    let (_, body) = app.gql_as(&token, SERIES, vars).await;
    let failures: f64 =
        body["data"]["metricsSeries"]["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).sum();
    assert_eq!(failures, 1.0, "{body}");
    // Across teams: the caller's teams only.
    let (_, body) = app.gql_as(&token, SERIES, json!({"metric": "RUNS", "bucket": "DAY"})).await;
    let total: f64 =
        body["data"]["metricsSeries"]["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).sum();
    assert_eq!(total, 5.0, "{body}");
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let (_, body) = app.gql_as(&stranger, SERIES, json!({"metric": "RUNS", "bucket": "DAY"})).await;
    let total: f64 =
        body["data"]["metricsSeries"]["points"].as_array().unwrap().iter().map(|p| p["value"].as_f64().unwrap()).sum();
    assert_eq!(total, 0.0, "{body}");
}

#[tokio::test]
async fn bad_ranges_buckets_and_other_teams_are_refused() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let team = team(&app, &token, simple_spec()).await;
    let now = Utc::now();
    let backwards = json!({"team": team, "range": {"from": now, "to": now - Duration::hours(1)}});
    let (_, body) = app.gql_as(&token, OVERVIEW, backwards).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(problem_paths(&body), ["range.from"]);
    let too_long = json!({"team": team, "range": {"from": now - Duration::days(401), "to": now}});
    let (_, body) = app.gql_as(&token, OVERVIEW, too_long).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("400 days"));
    let month = json!({"from": now - Duration::days(30), "to": now});
    let vars = json!({"team": team, "metric": "RUNS", "bucket": "MINUTE", "range": month});
    let (_, body) = app.gql_as(&token, SERIES, vars).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("at most 1500 points"), "{body}");
    let stranger = app.token("user_stranger", GlobalRole::Member);
    for query in [OVERVIEW, "query($team: ID!) { performanceInsights(teamId: $team) { kind } }"] {
        let (_, body) = app.gql_as(&stranger, query, json!({"team": team})).await;
        assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    }
    let vars = json!({"team": team, "metric": "RUNS", "bucket": "HOUR"});
    let (_, body) = app.gql_as(&stranger, SERIES, vars).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
}

#[tokio::test]
async fn error_groups_resolve_and_reopen() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "doomed", "model": "local/down"}],
                      "routing": {"default": "doomed"}, "retry": {"maxAttempts": 1}});
    let team = team(&app, &token, spec).await;
    app.gql_as(&token, RUN, json!({"team": team, "input": {"content": "one"}})).await;
    let groups = "query($team: ID, $range: TimeRangeInput) { errorGroups(teamId: $team, range: $range) { nodes { fingerprint count resolvedAt lastRunId } } }";
    let (_, body) = app.gql_as(&token, groups, json!({"team": team})).await;
    let group = body["data"]["errorGroups"]["nodes"][0].clone();
    assert_eq!(group["count"], 1, "{body}");
    let resolve = "mutation($f: ID!) { resolveErrorGroup(fingerprint: $f) { fingerprint count resolvedAt } }";
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let (_, body) = app.gql_as(&stranger, resolve, json!({"f": group["fingerprint"]})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    let (_, body) = app.gql_as(&token, resolve, json!({"f": group["fingerprint"]})).await;
    assert!(body["data"]["resolveErrorGroup"]["resolvedAt"].is_string(), "{body}");
    let (_, body) = app.gql_as(&token, resolve, json!({"f": "no-such-group"})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");

    // The same failure again reopens the group.
    app.gql_as(&token, RUN, json!({"team": team, "input": {"content": "two"}})).await;
    let (_, body) = app.gql_as(&token, groups, json!({})).await;
    let reopened = &body["data"]["errorGroups"]["nodes"][0];
    assert_eq!((reopened["count"].clone(), reopened["resolvedAt"].clone()), (json!(2), Value::Null), "{body}");
    // A range that ends before the failures holds no group.
    let before = json!({"from": Utc::now() - Duration::days(2), "to": Utc::now() - Duration::days(1)});
    let (_, body) = app.gql_as(&token, groups, json!({"team": team, "range": before})).await;
    assert_eq!(body["data"]["errorGroups"]["nodes"], json!([]), "{body}");
}

#[tokio::test]
async fn insights_name_their_figures() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let spec = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "fast", "model": "local/echo"}, {"name": "slow", "model": "openai/gpt-4o"},
                   {"name": "flaky", "model": "openai/gpt-4o-mini"}],
        "routing": {"rules": [{"name": "never", "when": {"contains": "zebra"}, "routeTo": "slow"}], "default": "fast"}
    });
    let team = team(&app, &token, spec).await;
    let at = Utc::now() - Duration::hours(2);
    let mut rows = Vec::new();
    for i in 0..40 {
        rows.push(finished(&team, "fast", "local/echo", at, 50, false));
        let mut slow = finished(&team, "slow", "openai/gpt-4o", at, 4_000 + i, false);
        slow.cost_usd = 0.01;
        rows.push(slow);
        let mut flaky = finished(&team, "flaky", "openai/gpt-4o-mini", at, 300, i % 4 == 0);
        flaky.retries = 2;
        flaky.fallbacks = i64::from(i % 2 == 0) as i32;
        rows.push(flaky);
    }
    add_rollups(&app, &rows).await;
    let query = "query($team: ID!) { performanceInsights(teamId: $team) { kind severity subject summary suggestion figures { name value unit } } }";
    let (_, body) = app.gql_as(&token, query, json!({"team": team})).await;
    let findings = body["data"]["performanceInsights"].as_array().unwrap_or_else(|| panic!("{body}"));
    let find = |kind: &str| findings.iter().find(|f| f["kind"] == kind).unwrap_or_else(|| panic!("{kind}: {body}"));
    assert_eq!(find("SLOWEST_AGENT")["subject"], "slow");
    assert_eq!(find("SLOWEST_AGENT")["figures"][0], json!({"name": "p95", "value": 4000.0, "unit": "ms"}));
    assert_eq!(find("FAILING_AGENT")["subject"], "flaky");
    assert_eq!(find("FAILING_AGENT")["figures"][0]["value"], 0.25);
    assert_eq!(find("FALLBACK_HOT_SPOT")["figures"][0]["value"], 0.5);
    assert_eq!(find("RETRY_STORM")["figures"][0]["value"], 2.0);
    assert_eq!(find("COSTLIEST_AGENT")["subject"], "slow");
    assert_eq!(find("UNUSED_RULE")["subject"], "never");
    // local/echo is free and always succeeded: cheaper than gpt-4o at the same success.
    let cheaper =
        findings.iter().find(|f| f["kind"] == "CHEAPER_MODEL" && f["subject"] == "slow").expect("cheaper model");
    assert!(cheaper["summary"].as_str().unwrap().contains("local/echo"), "{cheaper}");
    assert!(findings.iter().all(|f| !f["figures"].as_array().unwrap().is_empty()), "no finding without figures");
    assert_eq!(findings[0]["severity"], "WARNING", "warnings first");
}

#[tokio::test]
async fn live_metrics_push_a_fresh_overview_after_a_run() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let team = team(&app, &token, simple_spec()).await;
    let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"token": token}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let query = "subscription($team: ID!) { liveMetrics(teamId: $team, intervalSeconds: 1) { runs } }";
    ws.send(json!({"type": "subscribe", "id": "m", "payload": {"query": query, "variables": {"team": team}}})).await;
    let first = ws.next_json().await;
    assert_eq!(first["payload"]["data"]["liveMetrics"]["runs"], 0, "{first}");
    app.gql_as(&token, RUN, json!({"team": team, "input": {"content": "hi"}})).await;
    let next = ws.next_json().await;
    assert_eq!(next["payload"]["data"]["liveMetrics"]["runs"], 1, "{next}");

    let stranger = app.token("user_stranger", GlobalRole::Member);
    let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"token": stranger}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({"type": "subscribe", "id": "m", "payload": {"query": query, "variables": {"team": team}}})).await;
    let refused = ws.next_json().await;
    assert_eq!(refused["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND", "{refused}");
}

#[tokio::test]
async fn a_database_error_ends_live_metrics_with_internal() {
    use sea_orm::ConnectionTrait;
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let team = team(&app, &token, simple_spec()).await;
    let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"token": token}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let query = "subscription($team: ID!) { liveMetrics(teamId: $team, intervalSeconds: 1) { runs } }";
    ws.send(json!({"type": "subscribe", "id": "m", "payload": {"query": query, "variables": {"team": team}}})).await;
    assert_eq!(ws.next_json().await["payload"]["data"]["liveMetrics"]["runs"], 0);

    // The overview reads conversations: the table is gone when the next run of the team ends.
    app.state.db.execute_unprepared("ALTER TABLE conversations RENAME TO conversations_gone").await.unwrap();
    app.state.runner.events.publish(RunEvent::new("run_gone", &team, RunEventKind::Completed));
    let ended = ws.next_json().await;
    assert_eq!((&ended["type"], &ended["id"]), (&json!("error"), &json!("m")), "{ended}");
    assert_eq!(ended["payload"][0]["extensions"]["code"], "INTERNAL", "{ended}");
}

/// The README's monitoring walkthrough, run as written.
#[tokio::test]
async fn the_readme_monitoring_walkthrough_works() {
    let readme = include_str!("../../README.md");
    let section = readme.split("### Monitoring walkthrough").nth(1).expect("the walkthrough section");
    let document = section.split("```graphql").nth(1).and_then(|b| b.split("```").next()).expect("the document");
    // Forty runs in a second or two would pass the default rate limit; a person pasting does not.
    let app = TestApp::spawn_with(|config| config.rate_limit_per_minute = 0).await;
    let token = app.token("user_shopkeeper", GlobalRole::Member);
    let run = |operation: &'static str, variables: Value| app.operation(&token, document, operation, variables);
    let team = run("Shop", json!({})).await["createTeam"]["id"].clone();
    for text in ["Where is my parcel?", "I want a refund", "Is it in stock?", "Send a fax"] {
        for _ in 0..10 {
            run("Ask", json!({"team": team, "text": text})).await;
        }
    }
    let overview = run("Overview", json!({"team": team})).await["teamOverview"].clone();
    assert_eq!(overview["runs"], 40, "{overview}");
    assert_eq!(
        [&overview["successRate"], &overview["retryRate"], &overview["fallbackRate"]],
        [&json!(0.75), &json!(0.75), &json!(0.25)],
        "{overview}"
    );
    let series = run("Series", json!({"team": team})).await["metricsSeries"]["points"].clone();
    let points = series.as_array().unwrap();
    assert!((24..=25).contains(&points.len()), "{series}");
    assert_eq!(points.iter().map(|p| p["value"].as_f64().unwrap()).sum::<f64>(), 40.0);
    let insights = run("Insights", json!({"team": team})).await["performanceInsights"].clone();
    let has = |kind: &str, subject: &str| {
        insights.as_array().unwrap().iter().any(|f| f["kind"] == kind && f["subject"] == subject)
    };
    assert!(has("FAILING_AGENT", "legacy") && has("FALLBACK_HOT_SPOT", "warehouse"), "{insights}");
    assert!(has("UNUSED_RULE", "gifts"), "{insights}");
    let errors = run("Errors", json!({"team": team})).await["errorGroups"]["nodes"].clone();
    assert_eq!((errors[0]["agent"].as_str(), errors[0]["count"].as_i64()), (Some("legacy"), Some(10)), "{errors}");
    let resolved = run("Resolve", json!({"fingerprint": errors[0]["fingerprint"]})).await;
    assert!(resolved["resolveErrorGroup"]["resolvedAt"].is_string(), "{resolved}");
    let audit = run("Audit", json!({"team": team})).await["auditLogs"]["nodes"].clone();
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|row| row["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["error_group.resolve", "team.create"], "{audit}");
    let usage = run("Usage", json!({})).await["usageReport"]["rows"].clone();
    let runs: i64 = usage.as_array().unwrap().iter().map(|row| row["runs"].as_i64().unwrap()).sum();
    assert_eq!(runs, 40, "{usage}");
}

#[tokio::test]
async fn an_error_group_resolved_meanwhile_is_answered_as_resolved_then_and_recorded_once() {
    let app = TestApp::spawn().await;
    let token = app.token("user_owner", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "doomed", "model": "local/down"}],
                      "routing": {"default": "doomed"}, "retry": {"maxAttempts": 1}});
    let team = team(&app, &token, spec).await;
    app.gql_as(&token, RUN, json!({"team": team, "input": {"content": "one"}})).await;
    let group = error_groups::Entity::find().one(&app.state.db).await.unwrap().expect("the failure's group");
    // An operator resolves it on another instance after this call read it.
    let then = (Utc::now() - Duration::minutes(1)).trunc_subsecs(6);
    let resolve = error_groups::Entity::update_many()
        .col_expr(error_groups::Column::ResolvedAt, Expr::value(then))
        .filter(error_groups::Column::Fingerprint.eq(&group.fingerprint))
        .into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &resolve)]);
    let caller = Caller { principal: app.state.auth.from_token(&token).await.unwrap(), meta: Default::default() };

    let resolved =
        ensemble::service::error_groups::resolve(&app.state.db, &chain, &caller, &group.fingerprint).await.unwrap();

    assert_eq!(resolved.resolved_at, Some(then), "the resolution that landed first");
    let audited = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("error_group.resolve"));
    assert_eq!(audited.count(&app.state.db).await.unwrap(), 0, "this call resolved nothing");
}
