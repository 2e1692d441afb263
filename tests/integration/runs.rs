//! Runs end to end: routing, retries, fallbacks, every attempt stored, failures grouped, budgets,
//! cancel, pinned versions, crash recovery, and the bad inputs a client will send.

use crate::common;

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicUsize, Ordering},
};

use async_trait::async_trait;
use chrono::SubsecRound;
use common::{TestApp, first_code, problem_paths};
use ensemble::{
    db::batch::{Batch, BatchError, BatchWriter, StepResult},
    domain::{Caller, GlobalRole},
    service::{
        budgets::{Amount, Settlement},
        run_writer::{RunEnd, RunWriter},
        runs::{Runner, recover_interrupted},
    },
};
use entity::{
    budget_days, run_attempts, runs,
    states::{AttemptOutcome, BudgetHolder, ErrorCode, RunStatus},
    usage_daily,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait,
    QueryFilter, QueryTrait, Set, Statement, sea_query::Expr,
};
use serde_json::{Value, json};

const RUN: &str = "mutation($team: ID!, $input: RunInput!, $wait: Boolean = true) { runTeam(teamId: $team, input: $input, wait: $wait) {
    id status teamVersion output routedAgent rule ruleReason agent model attemptCount retries fallbacks tokensIn tokensOut costUsd errorCode error
    attempts { seq agent model attempt outcome backoffMs tokensIn tokensOut error } } }";

/// A team whose agents show every path: routed by rules, flaky, down with a fallback, too
/// small a context with a bigger agent for that error only, and always down.
fn spec() -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [
            {"name": "triage", "model": "local/echo", "systemPrompt": "Sort requests."},
            {"name": "billing", "model": "local/flaky-2", "systemPrompt": "Answer billing questions."},
            {"name": "outage", "model": "local/down"},
            {"name": "small", "model": "local/context-100"},
            {"name": "big", "model": "local/echo"},
            {"name": "doomed", "model": "local/down"},
            {"name": "also-doomed", "model": "local/down"}
        ],
        "routing": {"rules": [
            {"name": "money", "when": {"any": [{"contains": ["invoice", "refund"]}, {"regex": "(?i)charge"}]}, "routeTo": "billing"},
            {"name": "status", "when": {"contains": "status"}, "routeTo": "outage"},
            {"name": "essay", "when": {"lengthAbove": 200}, "routeTo": "small"},
            {"name": "hopeless", "when": {"variable": {"name": "mode", "equals": "hopeless"}}, "routeTo": "doomed"}
        ], "default": "triage"},
        "fallbacks": {"outage": ["triage"], "small": [{"agent": "big", "on": ["context_length"]}], "doomed": ["also-doomed"]},
        "retry": {"maxAttempts": 3, "initialBackoffMs": 20, "maxBackoffMs": 100, "multiplier": 2.0, "jitter": true,
                  "retryOn": ["timeout", "rate_limited", "server_error"]}
    })
}

async fn team(app: &TestApp, spec: Value) -> (String, String) {
    let token = app.token("user_runner", GlobalRole::Member);
    let (_, body) = app
        .gql_as(
            &token,
            "mutation($spec: JSON) { createTeam(input: {name: \"Support\", spec: $spec}) { id } }",
            json!({"spec": spec}),
        )
        .await;
    (token, body["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string())
}

async fn run(app: &TestApp, token: &str, team: &str, input: Value) -> Value {
    let (_, body) = app.gql_as(token, RUN, json!({"team": team, "input": input})).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["runTeam"].clone()
}

#[tokio::test]
async fn a_routed_run_records_its_rule_and_why() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let plain = run(&app, &token, &team, json!({"content": "Hello there"})).await;
    assert_eq!(plain["status"], "SUCCEEDED");
    assert_eq!(plain["routedAgent"], "triage");
    assert_eq!(plain["rule"], Value::Null);
    assert_eq!(plain["ruleReason"], "no rule matched; the default agent");
    assert!(plain["output"].as_str().unwrap().contains("[triage]"), "{plain}");
    assert!(plain["output"].as_str().unwrap().contains("Hello there"), "{plain}");
    assert!(plain["tokensIn"].as_i64().unwrap() > 0 && plain["tokensOut"].as_i64().unwrap() > 0, "{plain}");
    assert_eq!(plain["costUsd"], 0.0);
    assert_eq!(plain["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(plain["teamVersion"], 1);
}

#[tokio::test]
async fn a_flaky_agent_succeeds_on_its_third_attempt_with_three_rows() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let done = run(&app, &token, &team, json!({"content": "Where is my REFUND?"})).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!((done["rule"].as_str(), done["ruleReason"].as_str()), (Some("money"), Some("contains \"refund\"")));
    assert_eq!(done["agent"], "billing");
    assert_eq!((done["attemptCount"].as_i64(), done["retries"].as_i64()), (Some(3), Some(2)));
    let attempts = done["attempts"].as_array().unwrap();
    let outcomes: Vec<&str> = attempts.iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["server_error", "server_error", "ok"]);
    assert_eq!(attempts.iter().map(|a| a["attempt"].as_i64().unwrap()).collect::<Vec<_>>(), [1, 2, 3]);
    // Backoff: 20 ms then 40 ms, each at least half of that with jitter; none after the answer.
    assert!((10..=20).contains(&attempts[0]["backoffMs"].as_i64().unwrap()), "{attempts:?}");
    assert!((20..=40).contains(&attempts[1]["backoffMs"].as_i64().unwrap()), "{attempts:?}");
    assert_eq!(attempts[2]["backoffMs"], Value::Null);
    assert!(attempts[0]["error"].as_str().unwrap().contains("local/flaky-2"), "{attempts:?}");
}

#[tokio::test]
async fn a_down_agent_falls_back_and_the_fallback_answers() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let done = run(&app, &token, &team, json!({"content": "what is the status?"})).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!((done["routedAgent"].as_str(), done["agent"].as_str()), (Some("outage"), Some("triage")));
    assert_eq!(done["fallbacks"], 1);
    let agents: Vec<&str> = done["attempts"].as_array().unwrap().iter().map(|a| a["agent"].as_str().unwrap()).collect();
    assert_eq!(agents, ["outage", "outage", "outage", "triage"]);
    assert!(done["output"].as_str().unwrap().starts_with("[triage]"), "{done}");
}

#[tokio::test]
async fn a_context_length_error_goes_to_the_bigger_agent_without_retrying() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let essay = "The quarterly report covers many long topics in detail. ".repeat(12);
    let done = run(&app, &token, &team, json!({"content": essay})).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!((done["routedAgent"].as_str(), done["agent"].as_str()), (Some("small"), Some("big")));
    let outcomes: Vec<&str> =
        done["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["context_length", "ok"]);
    assert_eq!(done["ruleReason"], format!("length {} > 200", essay.chars().count()));
}

#[tokio::test]
async fn when_everything_is_down_the_run_fails_with_every_attempt_and_an_error_group() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let input = json!({"content": "anything", "variables": {"mode": "hopeless"}});
    let failed = run(&app, &token, &team, input.clone()).await;
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["errorCode"], "server_error");
    assert_eq!((failed["routedAgent"].as_str(), failed["agent"].as_str()), (Some("doomed"), Some("also-doomed")));
    assert_eq!(failed["attempts"].as_array().unwrap().len(), 6, "{failed}");
    assert_eq!(failed["output"], Value::Null);
    run(&app, &token, &team, input).await;
    let groups = "query($team: ID!) { errorGroups(teamId: $team) { nodes { agent code message count lastRunId } } }";
    let (_, body) = app.gql_as(&token, groups, json!({"team": team})).await;
    let nodes = body["data"]["errorGroups"]["nodes"].as_array().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(nodes.len(), 1, "{body}");
    assert_eq!((nodes[0]["agent"].as_str(), nodes[0]["code"].as_str()), (Some("also-doomed"), Some("server_error")));
    assert_eq!(nodes[0]["count"], 2);
    // The run is stored with its error, and visible in the team's list of failures.
    let (_, body) = app
        .gql_as(
            &token,
            "query($team: ID!) { runs(teamId: $team, status: FAILED) { nodes { id errorCode } } }",
            json!({"team": team}),
        )
        .await;
    assert_eq!(body["data"]["runs"]["nodes"].as_array().unwrap().len(), 2, "{body}");
}

#[tokio::test]
async fn bad_inputs_are_refused_and_store_nothing() {
    let app = TestApp::spawn_with(|c| c.runs.max_input_bytes = 100).await;
    let templated = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "a", "model": "local/echo", "systemPrompt": "You help {{ customer }} on the {{ plan }} plan."}]
    });
    let (token, team) = team(&app, templated).await;
    let other_token = app.token("user_other", GlobalRole::Member);
    let cases = [
        (
            token.as_str(),
            "team_nope",
            json!({"content": "hi", "variables": {"customer": "a", "plan": "b"}}),
            "NOT_FOUND",
            "",
        ),
        (other_token.as_str(), team.as_str(), json!({"content": "hi"}), "NOT_FOUND", ""),
        (
            token.as_str(),
            team.as_str(),
            json!({"content": "   ", "variables": {"customer": "a", "plan": "b"}}),
            "BAD_USER_INPUT",
            "input.content",
        ),
        (
            token.as_str(),
            team.as_str(),
            json!({"content": "x".repeat(101), "variables": {"customer": "a", "plan": "b"}}),
            "BAD_USER_INPUT",
            "input.content",
        ),
        (
            token.as_str(),
            team.as_str(),
            json!({"content": "hi", "variables": [1]}),
            "BAD_USER_INPUT",
            "input.variables",
        ),
        (
            token.as_str(),
            team.as_str(),
            json!({"content": "hi", "variables": {"customer": "x".repeat(101), "plan": "b"}}),
            "BAD_USER_INPUT",
            "input.variables",
        ),
        (
            token.as_str(),
            team.as_str(),
            json!({"content": "hi", "variables": {"plan": "pro"}}),
            "BAD_USER_INPUT",
            "input.variables.customer",
        ),
        (
            token.as_str(),
            team.as_str(),
            json!({"content": "hi", "version": 9, "variables": {"customer": "a", "plan": "b"}}),
            "BAD_USER_INPUT",
            "input.version",
        ),
        (
            token.as_str(),
            team.as_str(),
            json!({"content": "hi", "conversationId": "conv_nope"}),
            "BAD_USER_INPUT",
            "input.conversationId",
        ),
    ];
    for (who, team, input, code, path) in cases {
        let (_, body) = app.gql_as(who, RUN, json!({"team": team, "input": input})).await;
        assert_eq!(first_code(&body), code, "{input}: {body}");
        if !path.is_empty() {
            assert!(problem_paths(&body).contains(&path), "{input}: {body}");
        }
    }
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 0);
    let ok = run(&app, &token, &team, json!({"content": "hi", "variables": {"customer": "Ada", "plan": "pro"}})).await;
    assert_eq!(ok["status"], "SUCCEEDED", "{ok}");
}

/// Apollo Client and urql show an error's `message` only: it says the first problem in words.
#[tokio::test]
async fn a_refused_run_says_its_first_problem_in_the_message() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let (_, body) = app.gql_as(&token, RUN, json!({"team": team, "input": {"content": " ", "variables": [1]}})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["errors"][0]["message"], "input.content: must not be empty (and 1 more problem)", "{body}");
}

#[tokio::test]
async fn a_run_that_asks_for_an_agent_skips_routing() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    // "refund" would route to billing.
    let asked = run(&app, &token, &team, json!({"content": "a refund please", "agent": "big"})).await;
    assert_eq!(asked["status"], "SUCCEEDED", "{asked}");
    assert_eq!((asked["routedAgent"].as_str(), asked["agent"].as_str()), (Some("big"), Some("big")));
    assert_eq!((&asked["rule"], asked["ruleReason"].as_str()), (&Value::Null, Some("asked for agent `big`")));
    assert!(asked["output"].as_str().unwrap().starts_with("[big] "), "{asked}");

    let (_, body) = app.gql_as(&token, RUN, json!({"team": team, "input": {"content": "hi", "agent": "ghost"}})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(problem_paths(&body), ["input.agent"]);
    let message = body["errors"][0]["extensions"]["problems"][0]["message"].as_str().unwrap();
    assert!(message.contains("no agent `ghost`") && message.contains("triage, billing, outage"), "{message}");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 1, "the refused run is not stored");
}

#[tokio::test]
async fn a_pinned_version_runs_that_version() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let mut v2 = spec();
    v2["routing"]["default"] = json!("big");
    let update = "mutation($id: ID!, $spec: JSON) { updateTeam(id: $id, input: {spec: $spec}) { version } }";
    let (_, body) = app.gql_as(&token, update, json!({"id": team, "spec": v2})).await;
    assert_eq!(body["data"]["updateTeam"]["version"], 2, "{body}");
    let current = run(&app, &token, &team, json!({"content": "hello"})).await;
    assert_eq!((current["teamVersion"].as_i64(), current["agent"].as_str()), (Some(2), Some("big")));
    let pinned = run(&app, &token, &team, json!({"content": "hello", "version": 1})).await;
    assert_eq!((pinned["teamVersion"].as_i64(), pinned["agent"].as_str()), (Some(1), Some("triage")));
}

#[tokio::test]
async fn budgets_refuse_runs_before_any_model_is_called() {
    let app = TestApp::spawn_with(|c| c.runs.daily_token_budget = Some(1)).await;
    let (token, team) = team(&app, spec()).await;
    // The run's worst case (its prompt, answers up to 4096 tokens, every attempt) cannot fit.
    let (_, body) = app.gql_as(&token, RUN, json!({"team": team, "input": {"content": "hello"}})).await;
    assert_eq!(first_code(&body), "QUOTA_EXCEEDED", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("00:00 UTC"), "{body}");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 0, "no run, no provider call");
}

#[tokio::test]
async fn an_api_key_has_a_budget_of_its_own() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let create = "mutation($team: ID!) { createApiKey(input: {name: \"bot\", scopes: [RUNS_EXECUTE], teamId: $team, dailyCostBudgetUsd: 0.000001}) { secret apiKey { dailyCostBudgetUsd } } }";
    let (_, body) = app.gql_as(&token, create, json!({"team": team})).await;
    let secret = body["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{body}")).to_string();
    assert_eq!(body["data"]["createApiKey"]["apiKey"]["dailyCostBudgetUsd"], 0.000001);
    // Price the local models so runs cost something.
    let admin = app.token("user_admin", GlobalRole::Admin);
    let price = "mutation { upsertModelPrice(input: {model: \"local/*\", inputUsdPerMtok: 1.0, outputUsdPerMtok: 2.0}) { model } }";
    let (_, body) = app.gql_as(&admin, price, json!({})).await;
    assert!(body.get("errors").is_none(), "{body}");
    let (_, body) = app.gql_as(&secret, RUN, json!({"team": team, "input": {"content": "hello"}})).await;
    assert_eq!(first_code(&body), "QUOTA_EXCEEDED", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("API key"), "{body}");
    // The owner's own runs are not held to the key's budget.
    assert_eq!(run(&app, &token, &team, json!({"content": "me"})).await["status"], "SUCCEEDED");
}

#[tokio::test]
async fn a_slow_run_can_be_cancelled_while_it_runs() {
    let app = TestApp::spawn().await;
    let slow = json!({"format": "ensemble.team/v1", "agents": [{"name": "sloth", "model": "local/slow-20000"}]});
    let (token, team) = team(&app, slow).await;
    let (_, body) =
        app.gql_as(&token, RUN, json!({"team": team, "input": {"content": "take your time"}, "wait": false})).await;
    let started = body["data"]["runTeam"].clone();
    assert_eq!(started["status"], "RUNNING", "{body}");
    let cancel = "mutation($id: ID!) { cancelRun(id: $id) { status errorCode attempts { outcome } } }";
    let began = std::time::Instant::now();
    let (_, body) = app.gql_as(&token, cancel, json!({"id": started["id"]})).await;
    assert!(began.elapsed() < std::time::Duration::from_secs(5), "cancel waited for the model");
    let cancelled = &body["data"]["cancelRun"];
    assert_eq!(cancelled["status"], "CANCELLED", "{body}");
    assert_eq!(cancelled["errorCode"], "cancelled");
    assert_eq!(cancelled["attempts"], json!([{"outcome": "cancelled"}]));
    let (_, again) = app.gql_as(&token, cancel, json!({"id": started["id"]})).await;
    assert_eq!(first_code(&again), "CONFLICT", "{again}");
}

#[tokio::test]
async fn a_run_stops_at_its_time_limit_and_before_its_cost_limit() {
    let app = TestApp::spawn().await;
    let limited = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "sloth", "model": "local/slow-10000"}, {"name": "pricey", "model": "local/echo", "maxTokens": 1000}],
        "routing": {"rules": [{"name": "money", "when": {"contains": "pay"}, "routeTo": "pricey"}], "default": "sloth"},
        "limits": {"timeoutMs": 300, "maxCostUsd": 0.05}
    });
    let (token, team) = team(&app, limited).await;
    let began = std::time::Instant::now();
    let slow = run(&app, &token, &team, json!({"content": "hello"})).await;
    assert!(began.elapsed() < std::time::Duration::from_secs(5), "the time limit stopped the call");
    assert_eq!((slow["status"].as_str(), slow["errorCode"].as_str()), (Some("FAILED"), Some("timeout")), "{slow}");
    assert_eq!(slow["attempts"][0]["outcome"], "timeout");

    // 1,000 answer tokens at $100 per million is $0.10: over the $0.05 limit before the call.
    let admin = app.token("user_admin", GlobalRole::Admin);
    let price = "mutation { upsertModelPrice(input: {model: \"local/echo\", inputUsdPerMtok: 1, outputUsdPerMtok: 100}) { model } }";
    assert!(app.gql_as(&admin, price, json!({})).await.1.get("errors").is_none());
    let pricey = run(&app, &token, &team, json!({"content": "pay me"})).await;
    assert_eq!(
        (pricey["status"].as_str(), pricey["errorCode"].as_str()),
        (Some("FAILED"), Some("cost_limit")),
        "{pricey}"
    );
    assert_eq!(pricey["attempts"], json!([]), "no call was made");
    assert!(pricey["error"].as_str().unwrap().contains("limit of $0.05"), "{pricey}");
}

#[tokio::test]
async fn runs_a_crash_left_running_are_failed_as_interrupted_at_start() {
    let app = TestApp::spawn().await;
    let (_, team) = team(&app, spec()).await;
    let now = chrono::Utc::now();
    runs::ActiveModel {
        id: Set("run_crashed".into()),
        team_id: Set(team.clone()),
        team_version: Set(1),
        status: Set(RunStatus::Running),
        input: Set("lost".into()),
        attempts: Set(0),
        retries: Set(0),
        fallbacks: Set(0),
        tokens_in: Set(0),
        tokens_out: Set(0),
        cost_usd: Set(0.0),
        created_at: Set(now),
        started_at: Set(Some(now)),
        ..Default::default()
    }
    .insert(&app.state.db)
    .await
    .unwrap();
    app.give_up_d1_lease().await;
    let mut config = (*app.state.config).clone();
    config.listen = "127.0.0.1:0".parse().unwrap();
    let restarted = ensemble::startup::App::build(config).await.expect("the server starts again");
    drop(restarted);
    let row = runs::Entity::find_by_id("run_crashed").one(&app.state.db).await.unwrap().unwrap();
    assert_eq!((row.status, row.error_code), (RunStatus::Failed, Some(ErrorCode::Interrupted)));
    assert!(row.finished_at.is_some());
}

#[tokio::test]
async fn viewers_may_read_runs_but_not_start_them() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let viewer = app.token("user_viewer", GlobalRole::Member);
    app.gql_as(&viewer, "{ me { id } }", json!({})).await;
    let add = "mutation($team: ID!) { addTeamMember(teamId: $team, input: {userId: \"user_viewer\", role: VIEWER}) { role } }";
    app.gql_as(&token, add, json!({"team": team})).await;
    let (_, body) = app.gql_as(&viewer, RUN, json!({"team": team, "input": {"content": "hi"}})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "{body}");
    let id = run(&app, &token, &team, json!({"content": "hi"})).await["id"].clone();
    let (_, body) = app
        .gql_as(&viewer, "query($id: ID!) { run(id: $id) { status attempts { outcome } } }", json!({"id": id}))
        .await;
    assert_eq!(body["data"]["run"]["status"], "SUCCEEDED", "{body}");
}

/// The README's runs walkthrough, run as written, with its subscription on a websocket.
#[tokio::test]
async fn the_readme_runs_walkthrough_works() {
    let readme = include_str!("../../README.md");
    let section = readme.split("### Runs walkthrough").nth(1).expect("the walkthrough section");
    let blocks: Vec<&str> =
        section.split("```graphql").skip(1).map(|b| b.split("```").next().unwrap()).take(3).collect();
    let document = [blocks[0], blocks[2]].join("\n");
    let app = TestApp::spawn().await;
    let token = app.token("user_reader", GlobalRole::Member);
    let run = |operation: &'static str, variables: Value| app.operation(&token, &document, operation, variables);
    let team = run("CreateTeam", json!({})).await["createTeam"]["id"].clone();
    let mut ws = common::WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let watch = json!({"query": blocks[1], "variables": {"team": team}});
    ws.send(json!({"type": "subscribe", "id": "watch", "payload": watch})).await;
    let team_id = team.as_str().unwrap();
    common::live::team_activity_live(&app, &token, team_id, &mut [(&mut ws, "watch")]).await;

    let retried = run("Retried", json!({"team": team})).await["runTeam"].clone();
    assert_eq!((retried["status"].as_str(), retried["rule"].as_str()), (Some("SUCCEEDED"), Some("money")));
    assert_eq!((retried["agent"].as_str(), retried["retries"].as_i64()), (Some("billing"), Some(2)));
    let watched: Vec<String> = {
        let mut kinds = Vec::new();
        while kinds.last().map(String::as_str) != Some("COMPLETED") {
            let message = ws.next_json().await;
            kinds.push(message["payload"]["data"]["teamActivity"]["kind"].as_str().unwrap().to_string());
        }
        kinds
    };
    assert_eq!(watched.iter().filter(|k| *k == "ATTEMPT_FAILED").count(), 2, "{watched:?}");
    let fell_back = run("FellBack", json!({"team": team})).await["runTeam"].clone();
    assert_eq!((fell_back["agent"].as_str(), fell_back["fallbacks"].as_i64()), (Some("triage"), Some(1)));

    let conversation = run("Talk", json!({"team": team})).await["startConversation"]["id"].clone();
    let say = |text: &'static str, parent: Value| {
        run("Say", json!({"conversation": conversation, "text": text, "parent": parent}))
    };
    let first = say("Hello", Value::Null).await["sendMessage"].clone();
    say("Tell me more", Value::Null).await;
    say("Something else", first["responseMessageId"].clone()).await;
    let tree = run("Tree", json!({"conversation": conversation})).await["conversation"].clone();
    assert_eq!(tree["branches"].as_array().unwrap().len(), 2, "{tree}");
    assert_eq!(tree["tree"].as_array().unwrap().len(), 6, "{tree}");
}

/// Log lines written while a test runs (the server's tasks share the test's thread).
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_run_stored_with_an_unknown_status_is_an_internal_error_not_another_status() {
    let log = Captured::default();
    let writer = log.clone();
    let subscriber = tracing_subscriber::fmt().with_writer(move || writer.clone()).with_ansi(false).finish();
    let _logging = tracing::subscriber::set_default(subscriber);
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    let id = run(&app, &token, &team, json!({"content": "hello"})).await["id"].as_str().unwrap().to_string();
    // A status this server does not know, as a newer version or a hand edit could leave it.
    let edit = format!("UPDATE runs SET status = 'paused' WHERE id = '{id}'");
    app.state.db.execute_unprepared(&edit).await.unwrap();

    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&json!({"query": "query($id: ID!) { run(id: $id) { id status } }", "variables": {"id": id}}))
        .send()
        .await
        .unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(first_code(&body), "INTERNAL", "{body}");
    assert_eq!(body["errors"][0]["message"], ensemble::error::INTERNAL_MESSAGE);
    assert!(body["data"]["run"].is_null(), "no run in another status: {body}");
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    // (The request id on such lines is pinned in `internal_errors`.)
    let line = text.lines().find(|l| l.contains("internal error")).unwrap_or_else(|| panic!("no log line:\n{text}"));
    assert!(line.contains("ERROR") && line.contains("paused"), "the cause is logged: {line}");
}

/// A writer that, before the first batch after `arm`, writes a change of its own: what another
/// instance does between a service's read and its batch.
struct Meanwhile {
    inner: Arc<dyn BatchWriter>,
    db: DatabaseConnection,
    change: Mutex<Option<Statement>>,
    batches: AtomicUsize,
}

impl Meanwhile {
    fn new(app: &TestApp) -> Arc<Self> {
        Arc::new(Self {
            inner: app.state.writer.clone(),
            db: app.state.db.clone(),
            change: Mutex::new(None),
            batches: AtomicUsize::new(0),
        })
    }

    /// Sets the run's status before the next batch, as its end stored elsewhere would.
    fn arm(&self, run_id: &str, status: RunStatus) {
        let update = runs::Entity::update_many()
            .col_expr(runs::Column::Status, Expr::value(status))
            .filter(runs::Column::Id.eq(run_id))
            .into_query();
        *self.change.lock().unwrap() = Some(self.inner.backend().build(&update));
    }

    fn batches(&self) -> usize {
        self.batches.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl BatchWriter for Meanwhile {
    fn backend(&self) -> DbBackend {
        self.inner.backend()
    }

    async fn run(&self, batch: Batch) -> Result<Vec<StepResult>, BatchError> {
        let change = self.change.lock().unwrap().take();
        if let Some(change) = change {
            self.db.execute_raw(change).await.unwrap();
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.inner.run(batch).await
    }
}

/// A run in progress of `user_runner` on `team` that reserved `reserved` tokens.
fn in_progress(team: &str, id: &str, reserved: i64) -> runs::Model {
    let now = chrono::Utc::now().trunc_subsecs(6);
    runs::Model {
        id: id.into(),
        team_id: team.into(),
        team_version: 1,
        conversation_id: None,
        user_id: Some("user_runner".into()),
        api_key_id: None,
        status: RunStatus::Running,
        input: "lost".into(),
        variables: None,
        message_id: None,
        routed_agent: Some("triage".into()),
        rule: None,
        rule_reason: None,
        agent: Some("triage".into()),
        model: None,
        output: None,
        response_message_id: None,
        attempts: 0,
        retries: 0,
        fallbacks: 0,
        tokens_in: 0,
        tokens_out: 0,
        cost_usd: 0.0,
        latency_ms: None,
        error_code: None,
        error: None,
        created_at: now,
        started_at: Some(now),
        finished_at: None,
        estimated_cost_usd: None,
        estimated_max_cost_usd: None,
        reserved_tokens: Some(reserved),
        reserved_nano_usd: Some(0),
    }
}

/// Stores `runs` as running and holds their reservations on the user's budget row.
async fn store_in_progress(app: &TestApp, runs: &[runs::Model]) {
    for run in runs {
        runs::ActiveModel::from(run.clone()).reset_all().insert(&app.state.db).await.unwrap();
    }
    budget_days::ActiveModel::from(budget_days::Model {
        day: runs[0].created_at.format("%Y-%m-%d").to_string(),
        principal_kind: BudgetHolder::User,
        principal_id: "user_runner".into(),
        spent_tokens: 0,
        spent_nano_usd: 0,
        reserved_tokens: runs.iter().map(|run| run.reserved_tokens.unwrap()).sum(),
        reserved_nano_usd: 0,
    })
    .reset_all()
    .insert(&app.state.db)
    .await
    .unwrap();
}

/// Tokens still held on the user's budget row.
async fn held(app: &TestApp) -> i64 {
    budget_days::Entity::find().one(&app.state.db).await.unwrap().unwrap().reserved_tokens
}

async fn status_of(app: &TestApp, id: &str) -> (RunStatus, Option<ErrorCode>) {
    let row = runs::Entity::find_by_id(id).one(&app.state.db).await.unwrap().unwrap();
    (row.status, row.error_code)
}

#[tokio::test]
async fn a_run_that_ends_while_recovery_writes_keeps_its_end_and_the_others_are_recovered() {
    let app = TestApp::spawn().await;
    let (_, team) = team(&app, spec()).await;
    let lost = [in_progress(&team, "run_1", 10), in_progress(&team, "run_2", 20), in_progress(&team, "run_3", 40)];
    store_in_progress(&app, &lost).await;
    let writer = Meanwhile::new(&app);
    // Read as lost, run_2's end is stored before the recovery's batch.
    writer.arm("run_2", RunStatus::Succeeded);

    let recovered = recover_interrupted(&app.state.db, writer.as_ref(), None).await.unwrap();

    assert_eq!(recovered, 2);
    assert_eq!(writer.batches(), 2, "the batch the guard refused, then the one without run_2");
    assert_eq!(status_of(&app, "run_2").await, (RunStatus::Succeeded, None));
    for id in ["run_1", "run_3"] {
        assert_eq!(status_of(&app, id).await, (RunStatus::Failed, Some(ErrorCode::Interrupted)), "{id}");
    }
    assert_eq!(held(&app).await, 20, "run_1 and run_3 gave back their reservations, run_2 did not");
}

#[tokio::test]
async fn cancelling_a_lost_run_whose_end_lands_first_answers_the_end_and_gives_nothing_back() {
    let app = TestApp::spawn().await;
    let (token, team) = team(&app, spec()).await;
    store_in_progress(&app, &[in_progress(&team, "run_lost", 30)]).await;
    let writer = Meanwhile::new(&app);
    let state = &app.state;
    let runner = Runner::new(
        state.db.clone(),
        writer.clone(),
        state.config.runs.clone(),
        state.bus.clone(),
        state.caches.clone(),
        state.metrics.clone(),
    );
    let caller = Caller { principal: state.auth.from_token(&token).await.unwrap(), meta: Default::default() };
    let mut events = state.bus.subscribe();
    writer.arm("run_lost", RunStatus::Succeeded);

    let answered = runner.cancel(&caller, "run_lost").await.unwrap();

    assert_eq!(answered.status, RunStatus::Succeeded, "the end that landed first is the answer");
    assert_eq!(held(&app).await, 30, "a run not cancelled gives nothing back here");
    assert!(events.try_recv().is_err(), "no cancelled event for a run that was not cancelled");

    // Lost and still running: cancelled, and what it held given back.
    store_lost_again(&app, &team).await;
    let cancelled = runner.cancel(&caller, "run_lost_too").await.unwrap();
    assert_eq!((cancelled.status, cancelled.error_code), (RunStatus::Cancelled, Some(ErrorCode::Cancelled)));
    assert_eq!(held(&app).await, 30);
}

/// A second lost run of the same user, holding 5 tokens more on the budget row.
async fn store_lost_again(app: &TestApp, team: &str) {
    let run = in_progress(team, "run_lost_too", 5);
    runs::ActiveModel::from(run).reset_all().insert(&app.state.db).await.unwrap();
    let row = budget_days::Entity::find().one(&app.state.db).await.unwrap().unwrap();
    let mut row = budget_days::ActiveModel::from(row);
    row.reserved_tokens = Set(35);
    row.update(&app.state.db).await.unwrap();
}

/// How a run that ran on `triage` ended: one attempt and its usage.
fn ended(run: &runs::Model) -> RunEnd {
    let now = chrono::Utc::now().trunc_subsecs(6);
    let attempt = run_attempts::Model {
        run_id: run.id.clone(),
        seq: 1,
        agent: "triage".into(),
        model: "local/echo".into(),
        attempt: 1,
        outcome: AttemptOutcome::Ok,
        latency_ms: 5,
        tokens_in: 3,
        tokens_out: 4,
        cost_usd: 0.0,
        backoff_ms: None,
        error: None,
        started_at: now,
    };
    let usage = usage_daily::Model {
        day: run.created_at.format("%Y-%m-%d").to_string(),
        user_id: "user_runner".into(),
        team_id: run.team_id.clone(),
        api_key_id: String::new(),
        model: "local/echo".into(),
        requests: 0,
        runs: 1,
        tokens_in: 3,
        tokens_out: 4,
        cost_usd: 0.0,
    };
    let done = runs::Model {
        status: RunStatus::Succeeded,
        model: Some("local/echo".into()),
        output: Some("done".into()),
        attempts: 1,
        tokens_in: 3,
        tokens_out: 4,
        latency_ms: Some(5),
        finished_at: Some(now),
        ..run.clone()
    };
    let budgets = vec![Settlement {
        day: usage.day.clone(),
        holder: BudgetHolder::User,
        id: "user_runner".into(),
        spent: Amount { tokens: 7, nano_usd: 0 },
        released: Amount::reserved_by(run),
    }];
    RunEnd { run: done, attempts: vec![attempt], answer: None, usage: vec![usage], error: None, budgets }
}

#[tokio::test]
async fn a_cancel_that_lands_after_the_run_writer_read_keeps_its_row_and_the_other_end_is_stored() {
    let app = TestApp::spawn().await;
    let (_, team) = team(&app, spec()).await;
    let (a, b) = (in_progress(&team, "run_a", 10), in_progress(&team, "run_b", 20));
    let writer = Meanwhile::new(&app);
    let run_writer = RunWriter::spawn(app.state.db.clone(), writer.clone());
    for run in [&a, &b] {
        run_writer.start(run.clone(), None).await.unwrap();
    }
    store_budget_row(&app, 30).await;
    // run_a is cancelled on another instance after the writer read it as running.
    writer.arm("run_a", RunStatus::Cancelled);

    let (stored_a, stored_b) = tokio::join!(run_writer.finish(ended(&a)), run_writer.finish(ended(&b)));

    assert_eq!((stored_a.unwrap(), stored_b.unwrap()), (false, true));
    assert!(writer.batches() >= 4, "two starts, the batch the guard refused, the one without run_a");
    assert_eq!(status_of(&app, "run_a").await.0, RunStatus::Cancelled, "the cancel keeps its row");
    assert_eq!(status_of(&app, "run_b").await.0, RunStatus::Succeeded);
    let attempts: Vec<String> =
        run_attempts::Entity::find().all(&app.state.db).await.unwrap().into_iter().map(|a| a.run_id).collect();
    assert_eq!(attempts, ["run_b"]);
    let usage = usage_daily::Entity::find().all(&app.state.db).await.unwrap();
    assert_eq!(usage.iter().map(|row| row.runs).sum::<i64>(), 1, "{usage:?}");
    let row = budget_days::Entity::find().one(&app.state.db).await.unwrap().unwrap();
    assert_eq!((row.reserved_tokens, row.spent_tokens), (10, 7), "only run_b settled");
}

/// The user's budget row with `reserved` tokens held.
async fn store_budget_row(app: &TestApp, reserved: i64) {
    budget_days::ActiveModel::from(budget_days::Model {
        day: chrono::Utc::now().format("%Y-%m-%d").to_string(),
        principal_kind: BudgetHolder::User,
        principal_id: "user_runner".into(),
        spent_tokens: 0,
        spent_nano_usd: 0,
        reserved_tokens: reserved,
        reserved_nano_usd: 0,
    })
    .reset_all()
    .insert(&app.state.db)
    .await
    .unwrap();
}
