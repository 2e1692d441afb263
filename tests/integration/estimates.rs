//! Cost estimates: the prompt tokens counted as the run sends them (checked against cl100k
//! directly), routing as the run then records it, expected and worst-case figures worked out by
//! hand, the estimate stored on the run, and the bad inputs a client will send.

use crate::common;

use common::{
    TestApp, first_code,
    meanwhile::{Meanwhile, sql},
};
use ensemble::{
    domain::{Caller, GlobalRole},
    service::prices::NewPrice,
};
use entity::{audit_logs, conversations, messages, model_prices, runs};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryTrait, Set};
use serde_json::{Value, json};

const ESTIMATE: &str = "query($team: ID!, $input: String!, $variables: JSON, $version: Int, $conversation: ID, $parent: ID) {
    estimateCost(teamId: $team, input: $input, variables: $variables, version: $version, conversationId: $conversation, parentMessageId: $parent) {
        agent rule ruleReason model inputTokens outputTokens expectedCostUsd worstCaseCostUsd worstCaseAttempts cappedByLimit
        steps { agent model attempts inputTokens outputTokens costUsd } unpricedModels } }";
const RUN: &str = "mutation($team: ID!, $input: RunInput!, $wait: Boolean = true) { runTeam(teamId: $team, input: $input, wait: $wait) {
    id status messageId output routedAgent rule ruleReason tokensIn tokensOut costUsd estimatedCostUsd estimatedMaxCostUsd } }";

async fn team(app: &TestApp, token: &str, spec: Value) -> String {
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Support\", spec: $spec}) { id } }";
    let (_, body) = app.gql_as(token, create, json!({"spec": spec})).await;
    body["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string()
}

async fn estimate(app: &TestApp, token: &str, variables: Value) -> Value {
    let (_, body) = app.gql_as(token, ESTIMATE, variables).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["estimateCost"].clone()
}

async fn run(app: &TestApp, token: &str, team: &str, input: Value) -> Value {
    let (_, body) = app.gql_as(token, RUN, json!({"team": team, "input": input})).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["runTeam"].clone()
}

/// Prompt tokens of a chat, counted the way OpenAI's cookbook counts them for cl100k models:
/// each message is its content plus 4 (start, role, end), and the reply is primed with 3.
fn chat(contents: &[&str]) -> i64 {
    let bpe = tiktoken_rs::cl100k_base().expect("cl100k loads");
    3 + contents.iter().map(|text| 4 + bpe.encode_ordinary(text).len() as i64).sum::<i64>()
}

fn close(actual: &Value, expected: f64) -> bool {
    actual.as_f64().is_some_and(|actual| (actual - expected).abs() < 1e-12)
}

#[tokio::test]
async fn the_estimate_counts_the_rendered_prompt_and_the_conversation_as_the_run_sends_them() {
    let app = TestApp::spawn().await;
    let token = app.token("user_builder", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [
        {"name": "helper", "model": "local/echo", "systemPrompt": "You help {{ customer }} on the {{ plan }} plan.", "maxTokens": 256}
    ]});
    let team = team(&app, &token, spec).await;
    let start = "mutation($team: ID!) { startConversation(teamId: $team, title: \"Parcel\") { id } }";
    let (_, body) = app.gql_as(&token, start, json!({"team": team})).await;
    let conversation = body["data"]["startConversation"]["id"].as_str().unwrap().to_string();
    let variables = json!({"customer": "Ada", "plan": "gold"});
    let asked = "My order 1234 has not arrived.";
    let first =
        run(&app, &token, &team, json!({"content": asked, "variables": variables, "conversationId": conversation}))
            .await;
    let answered = first["output"].as_str().unwrap().to_string();
    let system = "You help Ada on the gold plan.";
    let follow_up = "And where is it now?";

    let next = json!({"team": team, "input": follow_up, "variables": variables, "conversation": conversation});
    let latest = estimate(&app, &token, next.clone()).await;
    assert_eq!(latest["inputTokens"], chat(&[system, asked, &answered, follow_up]), "{latest}");
    assert_eq!(latest["outputTokens"], 256);

    // From the question itself, the answer is another branch and not part of the prompt.
    let mut branch = next.clone();
    branch["parent"] = first["messageId"].clone();
    let branched = estimate(&app, &token, branch).await;
    assert_eq!(branched["inputTokens"], chat(&[system, asked, follow_up]), "{branched}");

    let sent =
        run(&app, &token, &team, json!({"content": follow_up, "variables": variables, "conversationId": conversation}))
            .await;
    assert_eq!(sent["tokensIn"], latest["inputTokens"], "{sent}");
}

#[tokio::test]
async fn routing_picks_the_agent_and_rule_the_run_then_records() {
    let app = TestApp::spawn().await;
    let token = app.token("user_builder", GlobalRole::Member);
    let spec = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "triage", "model": "local/echo"}, {"name": "billing", "model": "local/echo"},
                   {"name": "vip", "model": "local/echo"}],
        "routing": {"rules": [
            {"name": "gold", "when": {"variable": {"name": "tier", "equals": "gold"}}, "routeTo": "vip"},
            {"name": "money", "when": {"any": [{"contains": ["invoice", "refund"]}, {"regex": "(?i)charge"}]}, "routeTo": "billing"}
        ], "default": "triage"}
    });
    let team = team(&app, &token, spec).await;
    let cases = [
        (json!({"content": "Where is my REFUND?"}), "billing"),
        (json!({"content": "Why this charge?", "variables": {"tier": "gold"}}), "vip"),
        (json!({"content": "Hello there"}), "triage"),
    ];
    for (input, agent) in cases {
        let predicted =
            estimate(&app, &token, json!({"team": team, "input": input["content"], "variables": input["variables"]}))
                .await;
        let ran = run(&app, &token, &team, input).await;
        assert_eq!(predicted["agent"], agent, "{predicted}");
        assert_eq!(
            (&predicted["agent"], &predicted["rule"], &predicted["ruleReason"]),
            (&ran["routedAgent"], &ran["rule"], &ran["ruleReason"]),
            "{predicted} {ran}"
        );
    }
}

/// A team routed to `lead` (3 attempts each), falling back to `backup` and then to `outside`,
/// whose model has no price; `never` takes no error class, so the run never calls it.
fn priced_spec() -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [
            {"name": "lead", "model": "local/echo", "systemPrompt": "Answer orders.", "maxTokens": 100},
            {"name": "backup", "model": "local/summarize", "maxTokens": 50},
            {"name": "outside", "model": "openai/house-model", "systemPrompt": "Last resort."},
            {"name": "never", "model": "local/down"}
        ],
        "routing": {"rules": [{"name": "orders", "when": {"contains": "order"}, "routeTo": "lead"}], "default": "backup"},
        "fallbacks": {"lead": ["backup", {"agent": "never", "on": []}], "backup": ["outside"]},
        "retry": {"maxAttempts": 3, "initialBackoffMs": 1, "maxBackoffMs": 1, "retryOn": ["server_error"]}
    })
}

/// Prices `local/echo` at $1 / $2 and `local/summarize` at $0.50 / $1.50 per million tokens in
/// and out, and makes the team of `priced_spec`.
async fn priced_team(app: &TestApp) -> (String, String) {
    let admin = app.token("user_admin", GlobalRole::Admin);
    let upsert = "mutation($model: String!, $i: Float!, $o: Float!) {
        upsertModelPrice(input: {model: $model, inputUsdPerMtok: $i, outputUsdPerMtok: $o}) { model } }";
    for (model, i, o) in [("local/echo", 1.0, 2.0), ("local/summarize", 0.5, 1.5)] {
        let (_, body) = app.gql_as(&admin, upsert, json!({"model": model, "i": i, "o": o})).await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    let token = app.token("user_builder", GlobalRole::Member);
    let team = team(app, &token, priced_spec()).await;
    (token, team)
}

const ASK: &str = "Where is my order?";

/// What one call of each agent costs for `ASK`, by hand: (lead, backup).
fn call_costs() -> (f64, f64) {
    let lead_in = chat(&["Answer orders.", ASK]) as f64;
    let backup_in = chat(&[ASK]) as f64;
    ((lead_in * 1.0 + 100.0 * 2.0) / 1e6, (backup_in * 0.5 + 50.0 * 1.5) / 1e6)
}

#[tokio::test]
async fn expected_and_worst_case_follow_the_retry_policy_and_the_fallback_chain() {
    let app = TestApp::spawn().await;
    let (token, team) = priced_team(&app).await;
    let (lead, backup) = call_costs();

    let out = estimate(&app, &token, json!({"team": team, "input": ASK})).await;
    assert_eq!(
        (out["agent"].as_str(), out["rule"].as_str(), out["model"].as_str()),
        (Some("lead"), Some("orders"), Some("local/echo"))
    );
    assert!(close(&out["expectedCostUsd"], lead), "{out}");
    assert!(close(&out["worstCaseCostUsd"], 3.0 * lead + 3.0 * backup), "{out}");
    assert_eq!((out["worstCaseAttempts"].as_i64(), out["cappedByLimit"].as_bool()), (Some(9), Some(false)));
    let steps: Vec<(&str, i64, i64, i64)> = out["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let n = |field: &str| s[field].as_i64().unwrap();
            (s["agent"].as_str().unwrap(), n("attempts"), n("inputTokens"), n("outputTokens"))
        })
        .collect();
    assert_eq!(
        steps,
        [
            ("lead", 3, chat(&["Answer orders.", ASK]), 100),
            ("backup", 3, chat(&[ASK]), 50),
            ("outside", 3, chat(&["Last resort.", ASK]), 0)
        ]
    );
    assert!(close(&out["steps"][1]["costUsd"], 3.0 * backup), "{out}");
    assert_eq!(out["steps"][2]["costUsd"], 0.0);
    assert_eq!(out["unpricedModels"], json!(["openai/house-model"]));

    // Version 2 caps each run at $0.0005: the worst case says so; version 1 still does not.
    let mut capped = priced_spec();
    capped["limits"] = json!({"maxCostUsd": 0.0005});
    let update = "mutation($id: ID!, $spec: JSON) { updateTeam(id: $id, input: {spec: $spec}) { version } }";
    let (_, body) = app.gql_as(&token, update, json!({"id": team, "spec": capped})).await;
    assert_eq!(body["data"]["updateTeam"]["version"], 2, "{body}");
    let now = estimate(&app, &token, json!({"team": team, "input": ASK})).await;
    assert!(close(&now["expectedCostUsd"], lead), "{now}");
    assert_eq!((now["worstCaseCostUsd"].as_f64(), now["cappedByLimit"].as_bool()), (Some(0.0005), Some(true)));
    let before = estimate(&app, &token, json!({"team": team, "input": ASK, "version": 1})).await;
    assert_eq!(before["cappedByLimit"], false, "{before}");
}

#[tokio::test]
async fn a_run_keeps_its_estimate_beside_what_it_cost() {
    let app = TestApp::spawn().await;
    let (token, team) = priced_team(&app).await;
    let (lead, backup) = call_costs();
    let done = run(&app, &token, &team, json!({"content": ASK})).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let read = "query($id: ID!) { run(id: $id) { tokensIn tokensOut costUsd estimatedCostUsd estimatedMaxCostUsd } }";
    let (_, body) = app.gql_as(&token, read, json!({"id": done["id"]})).await;
    let stored = &body["data"]["run"];
    assert!(close(&stored["estimatedCostUsd"], lead), "{stored}");
    assert!(close(&stored["estimatedMaxCostUsd"], 3.0 * lead + 3.0 * backup), "{stored}");
    assert_eq!(stored["tokensIn"], chat(&["Answer orders.", ASK]), "{stored}");
    let tokens_out = stored["tokensOut"].as_i64().unwrap();
    assert!((1..=100).contains(&tokens_out), "{stored}");
    let cost = (chat(&["Answer orders.", ASK]) as f64 * 1.0 + tokens_out as f64 * 2.0) / 1e6;
    assert!(close(&stored["costUsd"], cost), "{stored}");
    assert!(cost <= lead, "the answer stayed within maxTokens");

    let (_, body) = app.gql_as(&token, RUN, json!({"team": team, "input": {"content": ASK}, "wait": false})).await;
    let started = &body["data"]["runTeam"];
    assert!(close(&started["estimatedCostUsd"], lead), "an estimate from the start: {body}");
}

/// Rows an estimate must never write.
async fn rows(app: &TestApp) -> (u64, u64, u64) {
    let db = &app.state.db;
    (
        runs::Entity::find().count(db).await.unwrap(),
        messages::Entity::find().count(db).await.unwrap(),
        conversations::Entity::find().count(db).await.unwrap(),
    )
}

#[tokio::test]
async fn bad_inputs_are_refused_with_the_path_to_fix() {
    let app = TestApp::spawn().await;
    let token = app.token("user_builder", GlobalRole::Member);
    let templated = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "a", "model": "local/echo", "systemPrompt": "You help {{ customer }} on the {{ plan }} plan."}]
    });
    let team = team(&app, &token, templated).await;
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let theirs = self::team(
        &app,
        &stranger,
        json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": "local/echo"}]}),
    )
    .await;
    let vars = json!({"customer": "Ada", "plan": "gold"});
    let start = "mutation($team: ID!) { startConversation(teamId: $team, title: \"Chat\") { id } }";
    let mut chats = Vec::new();
    for _ in 0..2 {
        let (_, body) = app.gql_as(&token, start, json!({"team": team})).await;
        chats.push(body["data"]["startConversation"]["id"].as_str().unwrap().to_string());
    }
    let elsewhere =
        run(&app, &token, &team, json!({"content": "hi", "variables": vars, "conversationId": chats[1]})).await;
    let before = rows(&app).await;

    let cases = [
        (json!({"team": theirs, "input": "hi"}), "NOT_FOUND", None, "No such team."),
        (json!({"team": team, "input": "  ", "variables": vars}), "BAD_USER_INPUT", Some("input"), "must not be empty"),
        (
            json!({"team": team, "input": "hi", "variables": [1]}),
            "BAD_USER_INPUT",
            Some("variables"),
            "must be a JSON object",
        ),
        (
            json!({"team": team, "input": "hi", "variables": {"plan": "gold"}}),
            "BAD_USER_INPUT",
            Some("variables.customer"),
            "is required by the system prompt of agent `a`",
        ),
        (
            json!({"team": team, "input": "hi", "variables": vars, "version": 9}),
            "BAD_USER_INPUT",
            Some("version"),
            "between 1 and 1",
        ),
        (
            json!({"team": team, "input": "hi", "variables": vars, "conversation": chats[0], "parent": elsewhere["messageId"]}),
            "BAD_USER_INPUT",
            Some("parentMessageId"),
            "The message is not part of this conversation.",
        ),
    ];
    for (variables, code, path, message) in cases {
        let (_, body) = app.gql_as(&token, ESTIMATE, variables.clone()).await;
        assert_eq!(first_code(&body), code, "{variables}: {body}");
        let error = &body["errors"][0];
        match path {
            None => assert_eq!(error["message"], message, "{body}"),
            Some(path) => {
                let problems = error["extensions"]["problems"].as_array().unwrap();
                assert!(problems.iter().any(|p| p["path"] == path && p["message"] == message), "{variables}: {body}");
            }
        }
    }
    assert_eq!(rows(&app).await, before, "an estimate writes nothing");
}

#[tokio::test]
async fn a_price_set_meanwhile_is_read_again_and_recorded_as_replaced() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    app.gql_as(&admin, "{ me { id } }", json!({})).await;
    // Another admin prices the new model on another instance after this call found none.
    let made = model_prices::ActiveModel {
        model: Set("local/new".into()),
        input_usd_per_mtok: Set(7.0),
        output_usd_per_mtok: Set(8.0),
        context_window: Set(None),
        updated_at: Set(chrono::Utc::now()),
    };
    let made = model_prices::Entity::insert(made).into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &made)]);
    let caller = Caller { principal: app.state.auth.from_token(&admin).await.unwrap(), meta: Default::default() };
    let price = NewPrice {
        model: "local/new".into(),
        input_usd_per_mtok: 1.0,
        output_usd_per_mtok: 2.0,
        context_window: Some(4096),
    };

    let saved = app.state.runner.prices.upsert(&chain, &caller, price).await.unwrap();

    assert_eq!((saved.input_usd_per_mtok, saved.output_usd_per_mtok, saved.context_window), (1.0, 2.0, Some(4096)));
    let audited = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("model_price.upsert"));
    let changes: Vec<_> = audited.all(&app.state.db).await.unwrap().into_iter().map(|row| row.changes).collect();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].as_ref().unwrap()["inputUsdPerMtok"], json!({"from": 7.0, "to": 1.0}), "{changes:?}");
}
