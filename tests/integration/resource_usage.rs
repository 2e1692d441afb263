//! `resourceUsage`: each of the caller's principals against its daily budgets; the server's
//! resources for admins only; cache hits and misses in the API and at `/metrics`.

use crate::common;

use common::{TestApp, WsClient, first_code};
use ensemble::domain::GlobalRole;
use serde_json::{Value, json};

const USAGE: &str = "{ resourceUsage {
    principals { kind id name today { requests runs tokens costUsd } thisMonth { runs tokens }
        dailyTokenBudget dailyCostBudgetUsd remainingTodayTokens remainingTodayCostUsd }
    server { databaseBytes uptimeSeconds processMemoryBytes openWebsockets openSubscriptions
        caches { name hits misses entries hitRate } } } }";

/// The run's tokens, in and out together.
async fn run(app: &TestApp, token: &str, team: &Value) -> i64 {
    let run =
        "mutation($team: ID!) { runTeam(teamId: $team, input: {content: \"hello there\"}) { tokensIn tokensOut } }";
    let data = app.must(token, run, json!({"team": team})).await;
    data["runTeam"]["tokensIn"].as_i64().unwrap() + data["runTeam"]["tokensOut"].as_i64().unwrap()
}

#[tokio::test]
async fn each_principal_shows_todays_usage_against_its_budget() {
    let app = TestApp::spawn_with(|c| c.runs.daily_token_budget = Some(100_000)).await;
    let alice = app.token("user_alice", GlobalRole::Member);
    // Answers of at most 64 tokens: the key's runs reserve their worst case against its budget.
    let spec =
        json!({"format": "ensemble.team/v1", "agents": [{"name": "echo", "model": "local/echo", "maxTokens": 64}]});
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Support\", spec: $spec}) { id } }";
    let team = app.must(&alice, create, json!({"spec": spec})).await["createTeam"]["id"].clone();
    let create_key = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id } } }";
    let input = json!({"name": "bot", "scopes": ["RUNS_EXECUTE", "TEAMS_READ"], "dailyTokenBudget": 1000});
    let made = app.must(&alice, create_key, json!({"input": input})).await["createApiKey"].clone();
    let (bot, bot_id) = (made["secret"].as_str().unwrap().to_string(), made["apiKey"]["id"].clone());
    let revoked = app.must(&alice, create_key, json!({"input": {"name": "old", "scopes": ["TEAMS_READ"]}})).await;
    let revoke = "mutation($id: ID!) { revokeApiKey(id: $id) { id } }";
    app.must(&alice, revoke, json!({"id": revoked["createApiKey"]["apiKey"]["id"]})).await;
    let mine = run(&app, &alice, &team).await;
    let bots = run(&app, &bot, &team).await;
    app.state.usage.flush().await.unwrap();

    let principals = app.must(&bot, USAGE, json!({})).await["resourceUsage"]["principals"].clone();
    let kinds: Vec<&str> = principals.as_array().unwrap().iter().map(|p| p["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["USER", "API_KEY", "TEAM"], "the revoked key is left out: {principals}");
    let (user, key, team_usage) = (&principals[0], &principals[1], &principals[2]);
    assert_eq!((&user["id"], &user["name"]), (&json!("user_alice"), &json!("user_alice@example.com")));
    assert_eq!(user["today"]["runs"], 2);
    assert_eq!(user["today"]["tokens"].as_i64(), Some(mine + bots));
    assert!(user["today"]["requests"].as_i64().unwrap() >= 6, "{user}");
    assert_eq!(user["thisMonth"]["tokens"].as_i64(), Some(mine + bots));
    assert_eq!(user["dailyTokenBudget"], 100_000);
    assert_eq!(user["remainingTodayTokens"].as_i64(), Some(100_000 - mine - bots));
    assert_eq!((&user["dailyCostBudgetUsd"], &user["remainingTodayCostUsd"]), (&Value::Null, &Value::Null));
    assert_eq!((&key["id"], &key["name"]), (&bot_id, &json!("bot")));
    assert_eq!((key["today"]["runs"].as_i64(), key["today"]["tokens"].as_i64()), (Some(1), Some(bots)));
    assert_eq!(key["remainingTodayTokens"].as_i64(), Some(1000 - bots));
    assert_eq!((&team_usage["id"], &team_usage["name"]), (&team, &json!("Support")));
    assert_eq!(team_usage["today"]["tokens"].as_i64(), Some(mine + bots));
    assert_eq!((&team_usage["dailyTokenBudget"], &team_usage["remainingTodayTokens"]), (&Value::Null, &Value::Null));
}

#[tokio::test]
async fn only_signed_in_admins_see_the_server() {
    let app = TestApp::spawn().await;
    let member = app.token("user_member", GlobalRole::Member);
    let usage = app.must(&member, USAGE, json!({})).await;
    assert_eq!(usage["resourceUsage"]["server"], Value::Null, "{usage}");

    let admin = app.token("user_admin", GlobalRole::Admin);
    let mut ws = WsClient::acked(app.addr).await;
    ws.send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { heartbeat(intervalSeconds: 1) { seq } }"}}))
        .await;
    assert_eq!(ws.next_json().await["type"], "next");
    let server = app.must(&admin, USAGE, json!({})).await["resourceUsage"]["server"].clone();
    if common::on_d1() {
        assert_eq!(server["databaseBytes"], Value::Null, "D1 does not tell its size to a Worker: {server}");
    } else {
        assert!(server["databaseBytes"].as_i64().unwrap() > 0, "{server}");
    }
    assert!(server["uptimeSeconds"].as_i64().unwrap() >= 0, "{server}");
    assert!(server["processMemoryBytes"].as_i64().unwrap() > 0, "Linux tells the resident memory: {server}");
    assert_eq!((&server["openWebsockets"], &server["openSubscriptions"]), (&json!(1), &json!(1)), "{server}");
    let names: Vec<&str> = server["caches"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    for name in ["session_tokens", "user_standings", "api_keys", "team_specs", "model_prices"] {
        assert!(names.contains(&name), "{name}: {server}");
    }

    ws.send(json!({"id": "1", "type": "complete"})).await;
    drop(ws);
    let mut closed = json!(null);
    for _ in 0..50 {
        closed = app.must(&admin, USAGE, json!({})).await["resourceUsage"]["server"].clone();
        if closed["openWebsockets"] == 0 && closed["openSubscriptions"] == 0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((&closed["openWebsockets"], &closed["openSubscriptions"]), (&json!(0), &json!(0)), "{closed}");
}

#[tokio::test]
async fn a_team_restricted_key_and_anonymous_callers_are_refused() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let team = app.must(&alice, "mutation { createTeam(input: {name: \"Support\"}) { id } }", json!({})).await;
    let create = "mutation($team: ID!) { createApiKey(input: {name: \"scoped\", scopes: [TEAMS_READ], teamId: $team}) { secret } }";
    let made = app.must(&alice, create, json!({"team": team["createTeam"]["id"]})).await;
    let (_, body) = app.gql_as(made["createApiKey"]["secret"].as_str().unwrap(), USAGE, json!({})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "{body}");
    let (_, body) = app.post_json(&json!({"query": USAGE})).await;
    assert_eq!(first_code(&body), "UNAUTHENTICATED", "{body}");
}

/// The session-token cache's counts, from the admin's view of the server.
fn session_tokens(usage: &Value) -> (i64, i64) {
    let caches = usage["resourceUsage"]["server"]["caches"].as_array().unwrap();
    let cache = caches.iter().find(|c| c["name"] == "session_tokens").unwrap();
    (cache["hits"].as_i64().unwrap(), cache["misses"].as_i64().unwrap())
}

#[tokio::test]
async fn a_repeated_request_is_a_session_token_cache_hit_in_the_api_and_at_metrics() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let first = session_tokens(&app.must(&admin, USAGE, json!({})).await);
    let second = session_tokens(&app.must(&admin, USAGE, json!({})).await);
    assert_eq!(first.1, 1, "the first request verified the token");
    assert_eq!((second.0, second.1), (first.0 + 1, 1), "the second found it");

    let metrics = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    // `/metrics` itself sends no token.
    let hits = format!("ensemble_cache_hits_total{{cache=\"session_tokens\"}} {}", second.0);
    assert!(metrics.contains(&hits), "{metrics}");
    assert!(metrics.contains("ensemble_cache_misses_total{cache=\"session_tokens\"} 1"), "{metrics}");
    assert!(metrics.contains("ensemble_cache_misses_total{cache=\"user_standings\"}"), "{metrics}");
}
