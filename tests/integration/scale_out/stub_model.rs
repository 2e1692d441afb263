//! A model provider on loopback speaking the OpenAI chat-completions wire format (SSE): each
//! call waits a while, then streams a short answer and reports its usage; it counts the calls.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::header, response::IntoResponse, routing::post};
use serde_json::{Value, json};

/// Prompt tokens every call reports.
pub const PROMPT_TOKENS: u64 = 10;

#[derive(Clone)]
pub struct StubModel {
    calls: Arc<AtomicUsize>,
    latency: Duration,
    pub base_url: String,
}

impl StubModel {
    /// Serves on a free loopback port; every answer takes `latency`.
    pub async fn start(latency: Duration) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        let stub = Self { calls: Arc::default(), latency, base_url };
        let router = Router::new().route("/v1/chat/completions", post(complete)).with_state(stub.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        stub
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Answers with as many output tokens as `max_tokens` allows (5 without it).
async fn complete(State(stub): State<StubModel>, Json(request): Json<Value>) -> impl IntoResponse {
    stub.calls.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(stub.latency).await;
    let completion = request["max_tokens"].as_u64().unwrap_or(5);
    let events = [
        json!({"choices": [{"index": 0, "delta": {"content": "Your parcel is on its way."}}]}),
        json!({"choices": [], "usage": {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion}}),
    ];
    let mut body: String = events.iter().map(|event| format!("data: {event}\n\n")).collect();
    body.push_str("data: [DONE]\n\n");
    ([(header::CONTENT_TYPE, "text/event-stream")], body)
}
