//! Connections over real sockets: a client that never finishes its request headers is closed
//! after `ENSEMBLE_HEADER_TIMEOUT_SECS`, an idle keep-alive connection after
//! `ENSEMBLE_IDLE_TIMEOUT_SECS`; at `ENSEMBLE_MAX_CONNECTIONS` health checks still answer and
//! everything else is a quick 503; a graceful stop lets a request under way finish.

use crate::common;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use common::TestApp;
use ensemble::{domain::GlobalRole, startup::App};
use entity::runs;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long a test waits for something that should happen well before.
const PATIENCE: Duration = Duration::from_secs(10);

/// Reads until the server closes the connection (or resets it); answers what was read and how
/// long it took. Fails when the connection is still open after `PATIENCE`.
async fn until_closed(stream: &mut TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((started + PATIENCE).into(), stream.read(&mut buf)).await {
            Err(_) => panic!("the connection is still open after {PATIENCE:?}"),
            Ok(Ok(0) | Err(_)) => return (String::from_utf8_lossy(&read).to_string(), started.elapsed()),
            Ok(Ok(n)) => read.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one response (headers and a `Content-Length` body) from a keep-alive connection.
async fn one_response(stream: &mut TcpStream) -> String {
    let mut read = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&read).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(0);
            if read.len() >= end + 4 + length {
                return text;
            }
        }
        let n = tokio::time::timeout(PATIENCE, stream.read(&mut buf)).await.expect("a response in time").unwrap();
        assert!(n > 0, "closed before a whole response: {text:?}");
        read.extend_from_slice(&buf[..n]);
    }
}

/// A request for `path` on a new connection that asks to be closed after it; answers the
/// whole response.
async fn get_once(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    until_closed(&mut stream).await.0
}

/// A connection that has sent half a request head and nothing more.
async fn half_a_head(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nX-Slow: ").await.unwrap();
    stream
}

#[tokio::test]
async fn a_client_that_sends_half_a_header_is_closed_after_the_header_timeout() {
    let app = TestApp::spawn_with(|c| c.connections.header_timeout_secs = 1).await;
    let mut stream = half_a_head(app.addr).await;
    let (answer, after) = until_closed(&mut stream).await;
    assert!(after >= Duration::from_millis(900) && after < Duration::from_secs(4), "closed after {after:?}");
    assert!(!answer.contains("200 OK"), "{answer}");
}

#[tokio::test]
async fn a_client_that_trickles_its_header_is_closed_when_the_time_is_up() {
    let app = TestApp::spawn_with(|c| c.connections.header_timeout_secs = 1).await;
    let mut stream = half_a_head(app.addr).await;
    let started = Instant::now();
    // A byte every 200 ms keeps the socket busy but never finishes the head.
    let closed_after = loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        if stream.write_all(b"x").await.is_err() {
            break started.elapsed();
        }
        let mut buf = [0u8; 64];
        if let Ok(Ok(0) | Err(_)) = tokio::time::timeout(Duration::from_millis(1), stream.read(&mut buf)).await {
            break started.elapsed();
        }
        assert!(started.elapsed() < PATIENCE, "still open after {PATIENCE:?} of trickling");
    };
    assert!(closed_after >= Duration::from_millis(900) && closed_after < Duration::from_secs(4), "{closed_after:?}");
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout_not_the_header_timeout() {
    let app = TestApp::spawn_with(|c| {
        c.connections.header_timeout_secs = 1;
        c.connections.idle_timeout_secs = 3;
    })
    .await;
    let mut stream = TcpStream::connect(app.addr).await.unwrap();
    // Kept alive: a second request on the same connection is served.
    for _ in 0..2 {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await.unwrap();
        assert!(one_response(&mut stream).await.starts_with("HTTP/1.1 200"));
    }
    // Then idle: open past the header timeout (1 s), closed at the idle timeout (3 s).
    let (rest, after) = until_closed(&mut stream).await;
    assert!(rest.is_empty(), "{rest}");
    assert!(after >= Duration::from_millis(2900) && after < Duration::from_secs(6), "closed after {after:?}");
}

#[tokio::test]
async fn at_the_connection_cap_healthz_answers_and_the_rest_get_a_quick_503() {
    let app = TestApp::spawn_with(|c| c.connections.max_connections = 3).await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(half_a_head(app.addr).await);
    }
    // The server takes the three connections as it accepts them; wait until it has.
    let deadline = Instant::now() + PATIENCE;
    let refused = loop {
        let answer = get_once(app.addr, "/graphql?query=%7B__typename%7D").await;
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(Instant::now() < deadline, "never at the cap: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(refused.to_ascii_lowercase().contains("retry-after: 1"), "{refused}");
    assert!(refused.contains("ENSEMBLE_MAX_CONNECTIONS"), "{refused}");
    let health = get_once(app.addr, "/healthz").await;
    assert!(health.starts_with("HTTP/1.1 200") && health.ends_with("ok"), "{health}");
    let ready = get_once(app.addr, "/readyz").await;
    assert!(ready.starts_with("HTTP/1.1 200"), "{ready}");

    // One of the slow clients leaves: the API answers again.
    drop(held.pop());
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = get_once(app.addr, "/graphql?query=%7B__typename%7D").await;
        if answer.starts_with("HTTP/1.1 200") {
            assert!(answer.contains("\"__typename\":\"Query\""), "{answer}");
            break;
        }
        assert!(Instant::now() < deadline, "still refused after a slot was freed: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn past_the_cap_and_its_reserve_a_connection_is_closed_at_once() {
    let app = TestApp::spawn_with(|c| c.connections.max_connections = 1).await;
    let mut held = vec![half_a_head(app.addr).await];
    for _ in 0..ensemble::http::server::RESERVE {
        held.push(half_a_head(app.addr).await);
    }
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut stream = TcpStream::connect(app.addr).await.unwrap();
        let _ = stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n").await;
        let (answer, after) = until_closed(&mut stream).await;
        if answer.is_empty() {
            assert!(after < Duration::from_secs(1), "closed after {after:?}");
            break;
        }
        assert!(Instant::now() < deadline, "never refused: {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Reserve connections have two seconds to send their headers; then health checks pass again.
    let deadline = Instant::now() + PATIENCE;
    loop {
        let answer = get_once(app.addr, "/healthz").await;
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "health checks never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_graceful_stop_lets_a_request_under_way_finish_and_accepts_no_more() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ensemble::config::Config::from_env().unwrap();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = dir.path().join("data");
    config.database_url = format!("sqlite://{}/ensemble.db", dir.path().display());
    common::install_dev_key(&config.data_dir);
    let app = App::build(config).await.unwrap();
    let addr = app.local_addr();
    let db = app.state().db.clone();
    let dev = app.state().auth.dev.as_ref().unwrap();
    let token = dev.sign("user_alice", None, GlobalRole::Member, Duration::from_secs(600)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until(async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let gql = |query: &'static str, variables: serde_json::Value| {
        let request = client.post(format!("http://{addr}/graphql")).bearer_auth(&token);
        request.json(&json!({"query": query, "variables": variables})).send()
    };
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "sloth", "model": "local/slow-1500"}]});
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Slow\", spec: $spec}) { id } }";
    let body: serde_json::Value = gql(create, json!({"spec": spec})).await.unwrap().json().await.unwrap();
    let team = body["data"]["createTeam"]["id"].clone();
    let run = "mutation($team: ID!) { runTeam(teamId: $team, input: {content: \"hi\"}) { status } }";
    let under_way = tokio::spawn(gql(run, json!({"team": team})));
    // The request is under way once its run is stored (its model answers 1.5 s later).
    let started = || async { runs::Entity::find().count(&db).await.unwrap() > 0 };
    common::eventually(PATIENCE, "the run started", started).await;
    stop.send(()).unwrap();

    let answer: serde_json::Value = under_way.await.unwrap().expect("answered").json().await.unwrap();
    assert_eq!(answer["data"]["runTeam"]["status"], "SUCCEEDED", "{answer}");
    tokio::time::timeout(PATIENCE, server).await.expect("the server stops").unwrap().unwrap();
    assert!(TcpStream::connect(addr).await.is_err(), "no connection is accepted once stopped");
}
