//! The legacy `graphql-ws` protocol keeps the rules of `graphql-transport-ws`: the init
//! timeout, the token-expiry close, the protocol's close codes, the size limit, the per-socket
//! cap on operations, and fresh DataLoaders for each operation.

use std::time::Duration;

use ensemble::domain::GlobalRole;
use serde_json::json;

use super::{HEARTBEAT, LEGACY, add_member, create_team, signed_in, signed_in_users, start};
use crate::common::{TestApp, WsClient};

/// Waits (at most 10 s, whatever arrives meanwhile) for the close frame.
async fn closed_within_10_s(ws: &mut WsClient) -> (u16, String) {
    tokio::time::timeout(Duration::from_secs(10), ws.closed()).await.expect("closed within 10 s")
}

#[tokio::test]
async fn sockets_that_never_send_connection_init_are_closed_with_4408() {
    let app = TestApp::spawn().await;
    let mut sockets = Vec::new();
    for _ in 0..20 {
        sockets.push(app.ws(LEGACY).await);
    }
    for ws in &mut sockets {
        assert_eq!(ws.closed().await, (4408, "Connection initialisation timeout".to_string()));
    }
}

#[tokio::test]
async fn a_legacy_socket_closes_with_4403_when_its_token_expires() {
    let app = TestApp::spawn().await;
    let dev = app.state.auth.dev.as_ref().unwrap();
    let token = dev.sign("user_brief", None, GlobalRole::Member, Duration::from_secs(3)).unwrap();
    let mut ws = signed_in(&app, LEGACY, &token).await;
    ws.send(start(LEGACY, "1", HEARTBEAT, json!({}))).await;
    assert_eq!(ws.next_json().await["type"], "data", "the subscription runs until then");
    let (code, reason) = closed_within_10_s(&mut ws).await;
    assert_eq!(code, 4403);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn the_legacy_protocol_closes_with_the_same_codes() {
    let app = TestApp::spawn().await;
    let mut ws = app.ws(LEGACY).await;
    ws.send(start(LEGACY, "1", HEARTBEAT, json!({}))).await;
    assert_eq!(ws.closed().await, (4401, "Unauthorized".to_string()), "start before init");

    for bad in [
        "not json",
        r#"{"type": "subscribe", "id": "1", "payload": {"query": "{ a }"}}"#,
        r#"{"type": "start", "id": "1"}"#,
    ] {
        let mut ws = signed_in(&app, LEGACY, &app.token("user_a", GlobalRole::Member)).await;
        ws.send_text(bad).await;
        assert_eq!(ws.closed().await.0, 4400, "{bad}");
    }

    let mut ws = signed_in(&app, LEGACY, &app.token("user_a", GlobalRole::Member)).await;
    ws.send(start(LEGACY, "dup", HEARTBEAT, json!({}))).await;
    assert_eq!(ws.next_json().await["type"], "data");
    ws.send(start(LEGACY, "dup", HEARTBEAT, json!({}))).await;
    assert_eq!(ws.closed().await.0, 4409, "an active id again");

    let mut ws = signed_in(&app, LEGACY, &app.token("user_a", GlobalRole::Member)).await;
    ws.send(json!({"type": "connection_init", "payload": {}})).await;
    assert_eq!(ws.closed().await.0, 4429, "a second init");

    let mut ws = app.ws(LEGACY).await;
    ws.send(json!({"type": "connection_init", "payload": {"token": "forged"}})).await;
    let refused = ws.next_json().await;
    assert_eq!(refused, json!({"type": "connection_error", "payload": {"message": "Forbidden"}}));
    assert_eq!(ws.closed().await, (4403, "Forbidden".to_string()));
}

#[tokio::test]
async fn a_legacy_message_over_the_body_limit_closes_with_1009() {
    let app = TestApp::spawn_with(|c| c.limits.body_bytes = 64 * 1024).await;
    let mut ws = signed_in(&app, LEGACY, &app.token("user_a", GlobalRole::Member)).await;
    let padding = "#".repeat(128 * 1024);
    ws.send(start(LEGACY, "big", &format!("{{ __typename }} {padding}"), json!({}))).await;
    assert_eq!(ws.closed().await.0, 1009);
}

#[tokio::test]
async fn a_legacy_start_beyond_the_socket_cap_answers_error_and_the_others_go_on() {
    let app = TestApp::spawn_with(|c| c.ws_max_subscriptions = 1).await;
    let mut ws = signed_in(&app, LEGACY, &app.token("user_a", GlobalRole::Member)).await;
    ws.send(start(LEGACY, "1", HEARTBEAT, json!({}))).await;
    assert_eq!(ws.next_json().await["id"], "1");
    ws.send(start(LEGACY, "2", HEARTBEAT, json!({}))).await;
    let refused = loop {
        let message = ws.next_json().await;
        if message["id"] != "1" {
            break message;
        }
    };
    assert_eq!((refused["type"].as_str(), refused["id"].as_str()), (Some("error"), Some("2")), "{refused}");
    assert_eq!(refused["payload"][0]["extensions"]["code"], "RATE_LIMITED");
    let beat = ws.next_json().await;
    assert_eq!((beat["type"].as_str(), beat["id"].as_str()), (Some("data"), Some("1")), "1 goes on: {beat}");
    ws.send(json!({"type": "stop", "id": "1"})).await;
    loop {
        let message = ws.next_json().await;
        if message["type"] == "complete" {
            assert_eq!(message["id"], "1");
            break;
        }
    }
    ws.send(start(LEGACY, "2", HEARTBEAT, json!({}))).await;
    assert_eq!(ws.next_json().await["id"], "2", "room again");
}

#[tokio::test]
async fn each_legacy_operation_loads_afresh() {
    let app = TestApp::spawn().await;
    let [alice, _] = signed_in_users(&app, ["user_alice", "user_bob"]).await;
    let team = create_team(&app, &alice).await;
    let mut ws = signed_in(&app, LEGACY, &alice).await;
    let members = "query($t: ID!) { team(id: $t) { members { userId } } }";
    let count = |message: serde_json::Value| message["payload"]["data"]["team"]["members"].as_array().map(Vec::len);

    ws.send(start(LEGACY, "before", members, json!({"t": team}))).await;
    assert_eq!(count(ws.next_json().await), Some(1));
    assert_eq!(ws.next_json().await["type"], "complete");
    add_member(&app, &alice, &team, "user_bob", "VIEWER").await;
    ws.send(start(LEGACY, "after", members, json!({"t": team}))).await;
    assert_eq!(count(ws.next_json().await), Some(2), "not what an earlier operation loaded");
}
