//! The OpenAI-compatible provider against a stub chat-completions server on loopback, speaking
//! the real wire format (SSE): a 429 with `Retry-After`, then a 500, then a streamed answer;
//! and a stream cut off halfway, which falls back. One test in its own binary, because the
//! provider is configured by environment variables.

mod common;

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::State,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::post,
};
use common::TestApp;
use ensemble::domain::GlobalRole;
use serde_json::{Value, json};

#[derive(Clone, Default)]
struct Stub {
    calls: Arc<Mutex<Vec<(Instant, Value)>>>,
}

fn sse(events: &[Value]) -> String {
    let mut body: String = events.iter().map(|e| format!("data: {e}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    body
}

async fn completions(State(stub): State<Stub>, Json(request): Json<Value>) -> Response {
    let call = {
        let mut calls = stub.calls.lock().unwrap();
        calls.push((Instant::now(), request.clone()));
        calls.iter().filter(|(_, r)| r["model"] == request["model"]).count()
    };
    let chunk = |text: &str| json!({"choices": [{"index": 0, "delta": {"content": text}}]});
    match (request["model"].as_str().unwrap_or_default(), call) {
        ("steady", 1) => (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, "1")],
            Json(json!({"error": {"message": "slow down"}})),
        )
            .into_response(),
        ("steady", 2) => {
            (StatusCode::INTERNAL_SERVER_ERROR, Json(json!({"error": {"message": "oops"}}))).into_response()
        }
        ("steady", _) => {
            let usage = json!({"choices": [], "usage": {"prompt_tokens": 1000, "completion_tokens": 500}});
            let body = sse(&[chunk("Hello"), chunk(", "), chunk("world"), usage]);
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }
        _ => {
            // Half an answer, then the connection drops.
            let first = Ok::<_, std::io::Error>(Bytes::from(format!("data: {}\n\n", chunk("Half"))));
            let cut = Err(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "gone"));
            let body = Body::from_stream(futures_util::stream::iter([first, cut]));
            ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
        }
    }
}

#[tokio::test]
async fn retries_honour_retry_after_and_a_cut_stream_falls_back() {
    let stub = Stub::default();
    let router = Router::new().route("/v1/chat/completions", post(completions)).with_state(stub.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    // SAFETY: the only test in this binary, before any server reads the environment.
    unsafe {
        std::env::set_var("ENSEMBLE_PROVIDER_STUB_BASE_URL", &base);
        std::env::set_var("ENSEMBLE_PROVIDER_STUB_API_KEY", "sk-test");
    }
    let app = TestApp::spawn().await;
    let token = app.token("user_llm", GlobalRole::Member);
    let admin = app.token("user_admin", GlobalRole::Admin);
    let price = "mutation { upsertModelPrice(input: {model: \"stub/*\", inputUsdPerMtok: 2.0, outputUsdPerMtok: 8.0}) { model } }";
    assert!(app.gql_as(&admin, price, json!({})).await.1.get("errors").is_none());
    let spec = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "remote", "model": "stub/steady", "systemPrompt": "Be brief."},
                   {"name": "fragile", "model": "stub/cut"}, {"name": "local", "model": "local/echo"}],
        "routing": {"rules": [{"name": "cut", "when": {"contains": "cut"}, "routeTo": "fragile"}], "default": "remote"},
        "fallbacks": {"fragile": ["local"]},
        "retry": {"maxAttempts": 3, "initialBackoffMs": 10, "maxBackoffMs": 50, "retryOn": ["rate_limited", "server_error"]}
    });
    let (_, body) = app
        .gql_as(
            &token,
            "mutation($s: JSON) { createTeam(input: {name: \"Remote\", spec: $s}) { id } }",
            json!({"s": spec}),
        )
        .await;
    let team = body["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string();
    let run = "mutation($t: ID!, $c: String!) { runTeam(teamId: $t, input: {content: $c}) {
        status output agent tokensIn tokensOut costUsd attempts { outcome backoffMs error tokensIn } } }";

    let (_, body) = app.gql_as(&token, run, json!({"t": team, "c": "hi"})).await;
    let done = &body["data"]["runTeam"];
    assert_eq!(done["status"], "SUCCEEDED", "{body}");
    assert_eq!(done["output"], "Hello, world");
    let outcomes: Vec<&str> =
        done["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["rate_limited", "server_error", "ok"]);
    assert!(done["attempts"][0]["backoffMs"].as_i64().unwrap() >= 1000, "Retry-After: 1 is honoured: {body}");
    assert!(done["attempts"][0]["error"].as_str().unwrap().contains("429"), "{body}");
    assert_eq!((done["tokensIn"].as_i64(), done["tokensOut"].as_i64()), (Some(1000), Some(500)));
    assert!((done["costUsd"].as_f64().unwrap() - 0.006).abs() < 1e-9, "1000 × $2/M + 500 × $8/M: {body}");
    let calls = stub.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3);
    assert!(calls[1].0 - calls[0].0 >= Duration::from_secs(1), "the second call waited out Retry-After");
    assert_eq!(calls[0].1["messages"][0], json!({"role": "system", "content": "Be brief."}));
    assert_eq!(calls[0].1["stream"], true);

    let (_, body) = app.gql_as(&token, run, json!({"t": team, "c": "cut me off"})).await;
    let done = &body["data"]["runTeam"];
    assert_eq!(done["status"], "SUCCEEDED", "{body}");
    assert_eq!(done["agent"], "local");
    let outcomes: Vec<&str> =
        done["attempts"].as_array().unwrap().iter().map(|a| a["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["connection", "ok"], "a cut stream is a connection error, not retried: {body}");
}
