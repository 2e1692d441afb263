//! GraphQL over websockets: `graphql-transport-ws` with every close code of the protocol, the
//! legacy `graphql-ws` under the same rules (`legacy`), keepalive, the per-socket cap on
//! operations, the size limit, dropping a client that stops reading, and subscriptions that end
//! when access is taken away (`access`).

mod access;
use crate::common;
mod legacy;

use std::time::Duration;

use common::{TestApp, WsClient};
use ensemble::domain::GlobalRole;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::Message;

const HEARTBEAT: &str = "subscription { heartbeat(intervalSeconds: 1) { seq time } }";
const TRANSPORT: &str = "graphql-transport-ws";
const LEGACY: &str = "graphql-ws";
const ACTIVITY: &str = "subscription($t: ID!) { teamActivity(teamId: $t) { runId kind delta } }";

fn subscribe(id: &str, query: &str) -> serde_json::Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": query}})
}

/// The message that starts `query` as `id`, in `protocol`'s words.
fn start(protocol: &str, id: &str, query: &str, variables: Value) -> Value {
    let kind = if protocol == LEGACY { "start" } else { "subscribe" };
    json!({"id": id, "type": kind, "payload": {"query": query, "variables": variables}})
}

/// Tokens of users who have each made a request (so that they may be added to teams).
async fn signed_in_users<const N: usize>(app: &TestApp, users: [&str; N]) -> [String; N] {
    let tokens = users.map(|user| app.token(user, GlobalRole::Member));
    for token in &tokens {
        app.gql_as(token, "{ me { id } }", json!({})).await;
    }
    tokens
}

/// A socket of `protocol` signed in with `credential` (a session token or an API key).
async fn signed_in(app: &TestApp, protocol: &str, credential: &str) -> WsClient {
    let mut ws = app.ws(protocol).await;
    ws.send(json!({"type": "connection_init", "payload": {"token": credential}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws
}

/// A private team of `owner` whose agent answers at once; its id.
async fn create_team(app: &TestApp, owner: &str) -> String {
    create_team_with(app, owner, Value::Null).await
}

/// A private team of `owner` with `spec` (the default one when null); its id.
async fn create_team_with(app: &TestApp, owner: &str, spec: Value) -> String {
    let create = "mutation($s: JSON) { createTeam(input: {name: \"Support\", spec: $s}) { id } }";
    let (_, made) = app.gql_as(owner, create, json!({"s": spec})).await;
    made["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("{made}")).to_string()
}

async fn add_member(app: &TestApp, owner: &str, team: &str, user: &str, role: &str) {
    let add = "mutation($t: ID!, $u: ID!, $r: TeamRole!) { addTeamMember(teamId: $t, input: {userId: $u, role: $r}) { role } }";
    let (_, answer) = app.gql_as(owner, add, json!({"t": team, "u": user, "r": role})).await;
    assert!(answer.get("errors").is_none(), "{answer}");
}

/// Runs `team` on `content` to its end; answers `{id status}`.
async fn run(app: &TestApp, token: &str, team: &str, content: &str) -> Value {
    let run = "mutation($t: ID!, $c: String!) { runTeam(teamId: $t, input: {content: $c}) { id status } }";
    let (_, answer) = app.gql_as(token, run, json!({"t": team, "c": content})).await;
    assert_eq!(answer["data"]["runTeam"]["status"], "SUCCEEDED", "{answer}");
    answer["data"]["runTeam"].clone()
}

fn is_terminal(event: &Value) -> bool {
    matches!(event["kind"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED"))
}

/// The `teamActivity` events operation `id` of `ws` receives until the end of `run` (messages of
/// other operations are skipped).
async fn events_until_end(ws: &mut WsClient, id: &str, run: &Value) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let message = ws.next_json().await;
        if message["id"] != id {
            continue;
        }
        assert!(matches!(message["type"].as_str(), Some("next" | "data")), "{message}");
        let event = message["payload"]["data"]["teamActivity"].clone();
        assert_eq!(event["runId"], run["id"], "an event of another run: {message}");
        let ended = is_terminal(&event);
        events.push(event);
        if ended {
            return events;
        }
    }
}

/// Subscribes every socket (of `protocol`) to `teamActivity` of `team` as `id`, and waits until
/// each is live: runs of the team are started by `runner` until one's end reaches every socket.
async fn live_activity(
    app: &TestApp,
    protocol: &str,
    sockets: &mut [&mut WsClient],
    id: &str,
    team: &str,
    runner: &str,
) {
    for ws in sockets.iter_mut() {
        ws.send(start(protocol, id, ACTIVITY, json!({"t": team}))).await;
    }
    let mut sockets: Vec<(&mut WsClient, &str)> = sockets.iter_mut().map(|ws| (&mut **ws, id)).collect();
    common::live::team_activity_live(app, runner, team, &mut sockets).await;
}

/// Subscribes every socket (`graphql-transport-ws`) to `auditLogAdded` of `team` as `audit`,
/// and waits until each is live: `actor` changes the team until the change's row reaches every
/// socket.
async fn audit_rows_live(app: &TestApp, sockets: &mut [&mut WsClient], team: &str, actor: &str) {
    let follow = "subscription($t: ID!) { auditLogAdded(teamId: $t) { seq action changes } }";
    for ws in sockets.iter_mut() {
        ws.send(start(TRANSPORT, "audit", follow, json!({"t": team}))).await;
    }
    let mut sockets: Vec<(&mut WsClient, &str)> = sockets.iter_mut().map(|ws| (&mut **ws, "audit")).collect();
    common::live::audit_rows_live(app, actor, team, &mut sockets).await;
}

/// Nothing more reaches `ws`: a round trip made now comes back before anything else.
async fn no_more_for(ws: &mut WsClient, protocol: &str) {
    if protocol == LEGACY {
        ws.send(start(LEGACY, "after", "{ __typename }", json!({}))).await;
        let message = ws.next_json().await;
        assert_eq!((message["type"].as_str(), message["id"].as_str()), (Some("data"), Some("after")), "{message}");
    } else {
        ws.send(json!({"type": "ping", "payload": {"after": true}})).await;
        assert_eq!(ws.next_json().await, json!({"type": "pong", "payload": {"after": true}}));
    }
}

#[tokio::test]
async fn heartbeat_streams_beats_with_growing_sequence_numbers() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::acked(app.addr).await;
    ws.send(subscribe("1", HEARTBEAT)).await;
    for expected in 1..=2 {
        let message = ws.next_json().await;
        assert_eq!(message["type"], "next");
        assert_eq!(message["id"], "1");
        assert_eq!(message["payload"]["data"]["heartbeat"]["seq"], expected);
        let time = message["payload"]["data"]["heartbeat"]["time"].as_str().unwrap();
        assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    }
    ws.send(json!({"id": "1", "type": "complete"})).await;
    // The id is free again once the client completed it.
    ws.send(subscribe("1", "{ serverInfo { version } }")).await;
    let message = ws.next_json().await;
    assert_eq!(message["payload"]["data"]["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(ws.next_json().await, json!({"id": "1", "type": "complete"}));
}

#[tokio::test]
async fn heartbeat_outside_one_to_sixty_seconds_is_bad_user_input() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::acked(app.addr).await;
    for (id, seconds) in [("a", 0), ("b", 61)] {
        let query = format!("subscription {{ heartbeat(intervalSeconds: {seconds}) {{ seq }} }}");
        ws.send(subscribe(id, &query)).await;
        let message = ws.next_json().await;
        assert_eq!(message["type"], "next", "an execution error: {message}");
        assert_eq!(message["payload"]["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{message}");
        assert!(message.to_string().contains("between 1 and 60"), "{message}");
        assert_eq!(ws.next_json().await, json!({"id": id, "type": "complete"}));
    }
}

#[tokio::test]
async fn an_operation_that_fails_validation_answers_error_not_next() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::acked(app.addr).await;
    ws.send(subscribe("v", "subscription { nope }")).await;
    let message = ws.next_json().await;
    assert_eq!(message["type"], "error");
    assert_eq!(message["id"], "v");
    assert_eq!(message["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
    // No `complete` follows an `error`; the connection stays usable.
    ws.send(json!({"type": "ping", "payload": {"n": 1}})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong", "payload": {"n": 1}}));
}

#[tokio::test]
async fn ping_is_answered_with_pong_even_before_init() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws("graphql-transport-ws").await;
    ws.send(json!({"type": "ping"})).await;
    assert_eq!(ws.next_json().await, json!({"type": "pong"}));
}

#[tokio::test]
async fn the_server_pings_to_keep_the_connection_alive() {
    let app = TestApp::spawn_with(|c| c.ws_keepalive_secs = 1).await;
    let mut ws = WsClient::acked(app.addr).await;
    assert_eq!(ws.next_raw_json().await, json!({"type": "ping"}));
}

#[tokio::test]
async fn bad_messages_close_with_4400() {
    let app = TestApp::spawn().await;
    let cases = [
        "not json",
        r#"{"type": "unknown"}"#,
        r#"{"type": "next", "id": "1", "payload": {}}"#,
        r#"{"id": "1", "type": "subscribe", "payload": {"variables": {}}}"#,
        r#"{"id": "", "type": "subscribe", "payload": {"query": "{ serverInfo { version } }"}}"#,
    ];
    for case in cases {
        let mut ws = WsClient::acked(app.addr).await;
        ws.send_text(case).await;
        assert_eq!(ws.closed().await.0, 4400, "{case}");
    }
    let mut ws = WsClient::acked(app.addr).await;
    ws.stream.send(Message::Binary(vec![1, 2, 3].into())).await.unwrap();
    assert_eq!(ws.closed().await.0, 4400, "binary frame");
}

#[tokio::test]
async fn a_message_over_the_body_limit_ends_the_connection() {
    let app = TestApp::spawn_with(|c| c.limits.body_bytes = 64 * 1024).await;
    let mut ws = WsClient::acked(app.addr).await;
    let padding = "#".repeat(128 * 1024);
    ws.send(subscribe("big", &format!("{{ serverInfo {{ version }} }} {padding}"))).await;
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.stream.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(Message::Text(text))) => {
                    assert!(!text.contains("serverInfo"), "answered: {text}")
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the connection ends");
    assert_eq!(ended, Some(1009), "the size limit's own close code");
}

#[tokio::test]
async fn subscribe_before_ack_closes_with_4401() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws("graphql-transport-ws").await;
    ws.send(subscribe("1", HEARTBEAT)).await;
    assert_eq!(ws.closed().await, (4401, "Unauthorized".to_string()));
}

#[tokio::test]
async fn no_connection_init_within_three_seconds_closes_with_4408() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws("graphql-transport-ws").await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4408);
    assert_eq!(reason, "Connection initialisation timeout");
}

#[tokio::test]
async fn a_duplicate_active_id_closes_with_4409() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::acked(app.addr).await;
    ws.send(subscribe("dup", HEARTBEAT)).await;
    assert_eq!(ws.next_json().await["payload"]["data"]["heartbeat"]["seq"], 1);
    ws.send(subscribe("dup", HEARTBEAT)).await;
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4409);
    assert_eq!(reason, "Subscriber for dup already exists");
}

#[tokio::test]
async fn a_second_connection_init_closes_with_4429() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::acked(app.addr).await;
    ws.send(json!({"type": "connection_init"})).await;
    assert_eq!(ws.closed().await.0, 4429);
}

#[tokio::test]
async fn an_init_payload_that_is_not_an_object_closes_with_4400() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws("graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": "token"})).await;
    assert_eq!(ws.closed().await.0, 4400);
}

#[tokio::test]
async fn a_page_of_a_foreign_origin_is_refused_with_4403() {
    let app = TestApp::spawn_with(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let mut ws = WsClient::connect_from(app.addr, "graphql-transport-ws", Some("https://evil.example")).await;
    ws.send(json!({"type": "connection_init"})).await;
    assert_eq!(ws.closed().await, (4403, "Forbidden".to_string()));

    for origin in ["https://app.example".to_string(), format!("http://{}", app.addr)] {
        let mut ws = WsClient::connect_from(app.addr, "graphql-transport-ws", Some(&origin)).await;
        ws.send(json!({"type": "connection_init"})).await;
        assert_eq!(ws.next_json().await["type"], "connection_ack", "{origin}");
    }
}

#[tokio::test]
async fn the_legacy_protocol_refuses_a_foreign_origin_too() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::connect_from(app.addr, "graphql-ws", Some("https://evil.example")).await;
    ws.send(json!({"type": "connection_init", "payload": {}})).await;
    let message = ws.next_json().await;
    assert_eq!(message["type"], "connection_error", "{message}");
}

#[tokio::test]
async fn no_known_subprotocol_is_refused_with_400() {
    let app = TestApp::spawn().await;
    let request = http_upgrade(&app, Some("mqtt"));
    let response = app.client.execute(request).await.unwrap();
    assert_eq!(response.status(), 400);
    let request = http_upgrade(&app, None);
    assert_eq!(app.client.execute(request).await.unwrap().status(), 400);
}

fn http_upgrade(app: &TestApp, protocol: Option<&str>) -> reqwest::Request {
    let mut builder = app
        .client
        .get(app.url("/graphql/ws"))
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    if let Some(protocol) = protocol {
        builder = builder.header("sec-websocket-protocol", protocol);
    }
    builder.build().unwrap()
}

#[tokio::test]
async fn the_legacy_graphql_ws_protocol_streams_too() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws("graphql-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({"id": "1", "type": "start", "payload": {"query": HEARTBEAT}})).await;
    let message = ws.next_json().await;
    assert_eq!(message["type"], "data");
    assert_eq!(message["payload"]["data"]["heartbeat"]["seq"], 1);
    ws.send(json!({"id": "1", "type": "stop"})).await;
    assert_eq!(ws.next_json().await, json!({"id": "1", "type": "complete"}));
}

#[tokio::test]
async fn a_client_that_stops_reading_is_dropped() {
    let app = TestApp::spawn_with(|c| {
        c.ws_send_buffer = 8;
        c.rate_limit_per_minute = 0;
        c.ws_send_timeout_ms = 300;
        c.ws_max_subscriptions = 1000;
    })
    .await;
    let mut slow = WsClient::acked(app.addr).await;
    // Each answer (the whole schema) is many kilobytes and needs no database: a thousand of
    // them overflow the socket buffers and then the queue.
    let query =
        "{ __schema { types { name description fields { name description args { name } type { name kind } } } } }";
    for id in 0..1000 {
        slow.send(subscribe(&id.to_string(), query)).await;
    }
    let metrics = || async { app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap() };
    let mut dropped = false;
    for _ in 0..100 {
        if metrics().await.contains("ensemble_websocket_connections 0") {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(dropped, "the slow client was not dropped:\n{}", metrics().await);

    // Others are unaffected.
    let mut ws = WsClient::acked(app.addr).await;
    ws.send(subscribe("1", "{ serverInfo { version } }")).await;
    assert_eq!(ws.next_json().await["type"], "next");
}

#[tokio::test]
async fn a_subscribe_beyond_the_socket_cap_answers_error_and_the_others_go_on() {
    let app = TestApp::spawn_with(|c| c.ws_max_subscriptions = 2).await;
    let mut ws = WsClient::acked(app.addr).await;
    for id in ["1", "2"] {
        ws.send(subscribe(id, HEARTBEAT)).await;
        assert_eq!(ws.next_json().await["id"], id, "its first beat");
    }
    ws.send(subscribe("3", HEARTBEAT)).await;
    let mut beats = 0;
    let answer = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let message = ws.next_json().await;
            if message["type"] != "next" || message["id"] == "3" {
                return message;
            }
            beats += 1;
        }
    });
    let refused = answer.await.expect("an answer for the third within 5 s");
    assert_eq!((refused["type"].as_str(), refused["id"].as_str()), (Some("error"), Some("3")), "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED", "{refused}");
    let words = refused["payload"][0]["message"].as_str().unwrap();
    assert!(words.contains("ENSEMBLE_WS_MAX_SUBSCRIPTIONS") && words.contains('2'), "{words}");
    assert!(beats <= 2, "the others beat on meanwhile");

    // The others go on; completing one makes room.
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        let message = ws.next_json().await;
        assert_eq!(message["type"], "next", "{message}");
        seen.insert(message["id"].as_str().unwrap().to_string());
    }
    ws.send(json!({"id": "1", "type": "complete"})).await;
    ws.send(subscribe("3", HEARTBEAT)).await;
    loop {
        let message = ws.next_json().await;
        assert_eq!(message["type"], "next", "{message}");
        if message["id"] == "3" {
            break;
        }
    }
}

#[tokio::test]
async fn a_socket_runs_at_most_a_hundred_operations_by_default() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    assert_eq!(app.state.config.ws_max_subscriptions, 100);
    let mut ws = WsClient::acked(app.addr).await;
    let slow = "subscription { heartbeat(intervalSeconds: 60) { seq } }";
    for id in 0..100 {
        ws.send(subscribe(&id.to_string(), slow)).await;
    }
    for _ in 0..100 {
        assert_eq!(ws.next_json().await["type"], "next");
    }
    ws.send(subscribe("101st", slow)).await;
    let refused = ws.next_json().await;
    assert_eq!((refused["type"].as_str(), refused["id"].as_str()), (Some("error"), Some("101st")), "{refused}");
}

#[tokio::test]
async fn each_operation_on_a_long_lived_socket_loads_afresh() {
    let app = TestApp::spawn().await;
    let [alice, _] = signed_in_users(&app, ["user_alice", "user_bob"]).await;
    let team = create_team(&app, &alice).await;
    let mut ws = signed_in(&app, TRANSPORT, &alice).await;
    let members = "query($t: ID!) { team(id: $t) { members { userId } } }";
    let count = |message: Value| message["payload"]["data"]["team"]["members"].as_array().map(Vec::len);

    ws.send(start(TRANSPORT, "before", members, json!({"t": team}))).await;
    assert_eq!(count(ws.next_json().await), Some(1));
    assert_eq!(ws.next_json().await["type"], "complete");
    add_member(&app, &alice, &team, "user_bob", "VIEWER").await;
    ws.send(start(TRANSPORT, "after", members, json!({"t": team}))).await;
    assert_eq!(count(ws.next_json().await), Some(2), "not what an earlier operation loaded");
}

#[tokio::test]
async fn a_database_outage_at_connection_init_closes_with_1011_not_4403() {
    use sea_orm::ConnectionTrait;
    let app = TestApp::spawn().await;
    // Signing in a user never seen before writes their row: the table is gone.
    app.state.db.execute_unprepared("ALTER TABLE users RENAME TO users_gone").await.expect("users renamed");
    for protocol in [TRANSPORT, LEGACY] {
        let token = app.token(&format!("user_new_{}", protocol.len()), GlobalRole::Member);
        let mut ws = app.ws(protocol).await;
        ws.send(json!({"type": "connection_init", "payload": {"token": token}})).await;
        assert_eq!(ws.closed().await, (1011, "Internal server error".to_string()), "{protocol}");
    }
}
