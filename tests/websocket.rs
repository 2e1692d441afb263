//! GraphQL over websockets: `graphql-transport-ws` with every close code of the protocol, the
//! legacy `graphql-ws`, keepalive, and dropping a client that stops reading.

mod common;

use std::time::Duration;

use common::{TestApp, WsClient};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::protocol::Message;

const HEARTBEAT: &str = "subscription { heartbeat(intervalSeconds: 1) { seq time } }";

fn subscribe(id: &str, query: &str) -> serde_json::Value {
    json!({"id": id, "type": "subscribe", "payload": {"query": query}})
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
    assert!(ended.is_none_or(|code| code == 1009), "closed with {ended:?}");
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
