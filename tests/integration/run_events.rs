//! Live run events over `graphql-transport-ws`: a team's activity as it happens (routing,
//! attempts, backoffs, fallbacks, streamed text, the end), one run's events until it ends, the
//! final event for a late subscriber, and permissions checked at subscribe time.

use crate::common;

use std::time::Duration;

use common::{TestApp, WsClient, live};
use ensemble::domain::GlobalRole;
use serde_json::{Value, json};

const EVENT_FIELDS: &str = "runId kind agent rule reason attempt errorClass backoffMs delta";

async fn team(app: &TestApp, token: &str) -> String {
    let spec = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "triage", "model": "local/echo"}, {"name": "billing", "model": "local/flaky-1"},
                   {"name": "outage", "model": "local/down"}, {"name": "sloth", "model": "local/slow-1500"}],
        "routing": {"rules": [{"name": "money", "when": {"contains": "refund"}, "routeTo": "billing"},
                              {"name": "status", "when": {"contains": "status"}, "routeTo": "outage"},
                              {"name": "slow", "when": {"contains": "slowly"}, "routeTo": "sloth"}], "default": "triage"},
        "fallbacks": {"outage": ["triage"]},
        "retry": {"maxAttempts": 2, "initialBackoffMs": 50, "maxBackoffMs": 50, "jitter": false}
    });
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Live\", spec: $spec}) { id } }";
    let (_, body) = app.gql_as(token, create, json!({"spec": spec})).await;
    body["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string()
}

async fn signed_in(app: &TestApp, token: &str) -> WsClient {
    let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"token": token}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws
}

async fn subscribe(ws: &mut WsClient, id: &str, query: String, variables: Value) {
    ws.send(json!({"type": "subscribe", "id": id, "payload": {"query": query, "variables": variables}})).await;
}

/// Events of subscription `id` until a terminal one (or `complete`).
async fn until_end(ws: &mut WsClient, field: &str) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let message = ws.next_json().await;
        if message["type"] == "complete" {
            return events;
        }
        assert_eq!(message["type"], "next", "{message}");
        let event = message["payload"]["data"][field].clone();
        let kind = event["kind"].as_str().unwrap_or_else(|| panic!("{message}")).to_string();
        events.push(event);
        if ["COMPLETED", "FAILED", "CANCELLED"].contains(&kind.as_str()) {
            return events;
        }
    }
}

fn kinds(events: &[Value]) -> Vec<&str> {
    let mut kinds: Vec<&str> = events.iter().map(|e| e["kind"].as_str().unwrap()).collect();
    kinds.dedup();
    kinds
}

async fn start_run(app: &TestApp, token: &str, team: &str, content: &str, wait: bool) -> Value {
    let run = "mutation($t: ID!, $c: String!, $w: Boolean!) { runTeam(teamId: $t, input: {content: $c}, wait: $w) { id status } }";
    let (_, body) = app.gql_as(token, run, json!({"t": team, "c": content, "w": wait})).await;
    body["data"]["runTeam"].clone()
}

#[tokio::test]
async fn team_activity_shows_routing_retries_fallbacks_and_streamed_text() {
    let app = TestApp::spawn().await;
    let token = app.token("user_live", GlobalRole::Member);
    let team = team(&app, &token).await;
    let mut ws = signed_in(&app, &token).await;
    let query = format!("subscription($t: ID!) {{ teamActivity(teamId: $t) {{ {EVENT_FIELDS} }} }}");
    subscribe(&mut ws, "1", query, json!({"t": team})).await;
    live::team_activity_live(&app, &token, &team, &mut [(&mut ws, "1")]).await;

    let run = start_run(&app, &token, &team, "a refund please", true).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let events = until_end(&mut ws, "teamActivity").await;
    assert!(events.iter().all(|e| e["runId"] == run["id"]), "{events:?}");
    assert_eq!(
        kinds(&events),
        ["QUEUED", "ROUTED", "ATTEMPT_STARTED", "ATTEMPT_FAILED", "ATTEMPT_STARTED", "DELTA", "COMPLETED"]
    );
    assert_eq!(
        (events[1]["rule"].as_str(), events[1]["reason"].as_str()),
        (Some("money"), Some("contains \"refund\""))
    );
    let failed = events.iter().find(|e| e["kind"] == "ATTEMPT_FAILED").unwrap();
    assert_eq!((failed["errorClass"].as_str(), failed["backoffMs"].as_i64()), (Some("server_error"), Some(50)));
    let streamed: String =
        events.iter().filter(|e| e["kind"] == "DELTA").map(|e| e["delta"].as_str().unwrap()).collect();
    assert!(streamed.starts_with("[billing]"), "{streamed}");

    start_run(&app, &token, &team, "what is the status", true).await;
    let events = until_end(&mut ws, "teamActivity").await;
    let fallback = events.iter().find(|e| e["kind"] == "FALLBACK").unwrap_or_else(|| panic!("{events:?}"));
    assert_eq!((fallback["agent"].as_str(), fallback["errorClass"].as_str()), (Some("triage"), Some("server_error")));
}

#[tokio::test]
async fn run_events_follow_one_run_to_its_end_then_complete() {
    let app = TestApp::spawn().await;
    let token = app.token("user_live", GlobalRole::Member);
    let team = team(&app, &token).await;
    let run = start_run(&app, &token, &team, "go slowly", false).await;
    assert_eq!(run["status"], "RUNNING");
    let mut ws = signed_in(&app, &token).await;
    let query = format!("subscription($r: ID!) {{ runEvents(runId: $r) {{ {EVENT_FIELDS} }} }}");
    subscribe(&mut ws, "r", query.clone(), json!({"r": run["id"]})).await;
    let events = until_end(&mut ws, "runEvents").await;
    assert_eq!(events.last().unwrap()["kind"], "COMPLETED", "{events:?}");
    assert!(events.iter().any(|e| e["kind"] == "DELTA"), "{events:?}");
    assert_eq!(ws.next_json().await, json!({"type": "complete", "id": "r"}));

    // A late subscriber gets the final event, then the subscription completes.
    subscribe(&mut ws, "late", query, json!({"r": run["id"]})).await;
    let late = until_end(&mut ws, "runEvents").await;
    assert_eq!(kinds(&late), ["COMPLETED"]);
    assert_eq!(late[0]["agent"], "sloth");
    assert_eq!(ws.next_json().await, json!({"type": "complete", "id": "late"}));
}

#[tokio::test]
async fn subscribing_needs_access_to_the_run_or_team() {
    let app = TestApp::spawn().await;
    let token = app.token("user_live", GlobalRole::Member);
    let team = team(&app, &token).await;
    let run = start_run(&app, &token, &team, "hello", true).await;
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let mut ws = signed_in(&app, &stranger).await;
    for (id, query, variables) in [
        ("a", "subscription($r: ID!) { runEvents(runId: $r) { kind } }".to_string(), json!({"r": run["id"]})),
        ("b", "subscription($t: ID!) { teamActivity(teamId: $t) { kind } }".to_string(), json!({"t": team})),
    ] {
        subscribe(&mut ws, id, query, variables).await;
        let message = ws.next_json().await;
        let errors = if message["type"] == "error" { &message["payload"] } else { &message["payload"]["errors"] };
        assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{message}");
        if message["type"] == "next" {
            assert_eq!(ws.next_json().await["type"], "complete");
        }
    }
}

async fn metrics(app: &TestApp) -> String {
    app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap()
}

/// Waits until `/metrics` counts `count` open subscriptions (a socket counts an operation off
/// once it has dealt with its end).
async fn open_subscriptions(app: &TestApp, count: usize) {
    let line = format!("ensemble_subscriptions {count}\n");
    let what = format!("{count} open subscriptions");
    common::eventually(Duration::from_secs(5), &what, || async { metrics(app).await.contains(&line) }).await;
}

/// Subscribes and reads the answer to a refused subscription: its first error's code.
async fn refused(ws: &mut WsClient, id: &str, query: String, variables: Value) -> String {
    subscribe(ws, id, query, variables).await;
    let message = ws.next_json().await;
    let errors = if message["type"] == "error" { &message["payload"] } else { &message["payload"]["errors"] };
    errors[0]["extensions"]["code"].as_str().unwrap_or_else(|| panic!("not refused: {message}")).to_string()
}

#[tokio::test]
async fn sockets_watching_one_team_share_its_stream_yet_each_is_checked() {
    let app = TestApp::spawn().await;
    let owner = app.token("user_live", GlobalRole::Member);
    let viewer = app.token("user_viewer", GlobalRole::Member);
    let team = team(&app, &owner).await;
    let (_, me) = app.gql_as(&viewer, "{ me { id } }", json!({})).await;
    assert!(me.get("errors").is_none(), "{me}");
    let add =
        "mutation($t: ID!) { addTeamMember(teamId: $t, input: {userId: \"user_viewer\", role: VIEWER}) { userId } }";
    let (_, added) = app.gql_as(&owner, add, json!({"t": team})).await;
    assert!(added.get("errors").is_none(), "{added}");

    // The same document and variables from two callers, on two sockets.
    let query = "subscription($t: ID!) { teamActivity(teamId: $t) { runId kind } }".to_string();
    let mut watching = signed_in(&app, &owner).await;
    let mut also = signed_in(&app, &viewer).await;
    subscribe(&mut watching, "mine", query.clone(), json!({"t": team})).await;
    subscribe(&mut also, "theirs", query.clone(), json!({"t": team})).await;
    // A stranger asking for the very same stream is refused while it runs.
    let mut stranger = signed_in(&app, &app.token("user_stranger", GlobalRole::Member)).await;
    assert_eq!(refused(&mut stranger, "s", query.clone(), json!({"t": team})).await, "NOT_FOUND");
    live::team_activity_live(&app, &owner, &team, &mut [(&mut watching, "mine"), (&mut also, "theirs")]).await;
    open_subscriptions(&app, 2).await;

    let run = start_run(&app, &owner, &team, "hello", true).await;
    let (mine, theirs) = (until_end(&mut watching, "teamActivity").await, until_end(&mut also, "teamActivity").await);
    assert_eq!(kinds(&mine), ["QUEUED", "ROUTED", "ATTEMPT_STARTED", "DELTA", "COMPLETED"]);
    assert_eq!(mine, theirs);
    assert!(mine.iter().all(|e| e["runId"] == run["id"]), "{mine:?}");

    // One leaving does not end the other's.
    also.send(json!({"type": "complete", "id": "theirs"})).await;
    open_subscriptions(&app, 1).await;
    start_run(&app, &owner, &team, "again", true).await;
    assert_eq!(until_end(&mut watching, "teamActivity").await.last().unwrap()["kind"], "COMPLETED");

    // Removed from the team, the viewer cannot rejoin the stream the owner still has open.
    let remove = "mutation($t: ID!) { removeTeamMember(teamId: $t, userId: \"user_viewer\") { userId } }";
    let (_, removed) = app.gql_as(&owner, remove, json!({"t": team})).await;
    assert!(removed.get("errors").is_none(), "{removed}");
    assert_eq!(refused(&mut also, "again", query, json!({"t": team})).await, "NOT_FOUND");
    start_run(&app, &owner, &team, "once more", true).await;
    assert_eq!(until_end(&mut watching, "teamActivity").await.last().unwrap()["kind"], "COMPLETED");
}

#[tokio::test]
async fn every_socket_sharing_a_runs_events_gets_its_end() {
    let app = TestApp::spawn().await;
    let token = app.token("user_live", GlobalRole::Member);
    let team = team(&app, &token).await;
    let run = start_run(&app, &token, &team, "go slowly", false).await;
    let query = "subscription($r: ID!) { runEvents(runId: $r) { kind agent } }".to_string();
    let mut sockets = Vec::new();
    for id in ["a", "b", "c"] {
        let mut ws = signed_in(&app, &token).await;
        subscribe(&mut ws, id, query.clone(), json!({"r": run["id"]})).await;
        sockets.push((id, ws));
    }
    for (id, ws) in &mut sockets {
        let events = until_end(ws, "runEvents").await;
        assert_eq!(events.last().unwrap()["kind"], "COMPLETED", "{events:?}");
        assert_eq!(ws.next_json().await, json!({"type": "complete", "id": id}));
    }
    open_subscriptions(&app, 0).await;
}
