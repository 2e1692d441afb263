//! The client against stub servers on 127.0.0.1 that speak plain HTTP/1.1 over a raw socket, so
//! tests can split, stall and cut responses at will.

use std::{
    net::SocketAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

use super::*;
use crate::orchestrator::providers::{ChatMessage, Role};

const KEY: &str = "sk-test-123";
const SSE_HEAD: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nconnection: close\r\n\r\n";

fn request() -> CompletionRequest {
    CompletionRequest {
        agent: "triage".into(),
        model: "gpt-test".into(),
        messages: vec![ChatMessage { role: Role::User, content: "hello world".into() }],
        temperature: Some(0.2),
        max_tokens: Some(50),
        attempt: 1,
        turn: 1,
    }
}

/// Serves one connection: reads the request, writes `parts` with a pause between them (so the
/// client sees separate reads), then holds the socket for `linger` and closes it. Yields the
/// request as received, lowercased.
async fn stub(parts: Vec<String>, linger: Duration) -> (String, JoinHandle<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let received = read_request(&mut socket).await;
        for part in parts {
            socket.write_all(part.as_bytes()).await.unwrap();
            socket.flush().await.unwrap();
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(linger).await;
        received.to_lowercase()
    });
    (url, server)
}

async fn read_request(socket: &mut TcpStream) -> String {
    let mut received = Vec::new();
    let mut buffer = [0; 4096];
    loop {
        let read = socket.read(&mut buffer).await.unwrap();
        received.extend_from_slice(&buffer[..read]);
        if read == 0 {
            return String::from_utf8(received).unwrap();
        }
        let text = String::from_utf8_lossy(&received).to_lowercase();
        let Some(head_end) = text.find("\r\n\r\n") else { continue };
        let length = text[..head_end].lines().find_map(|line| line.strip_prefix("content-length:"));
        let length: usize = length.map_or(0, |value| value.trim().parse().unwrap());
        if received.len() >= head_end + 4 + length {
            return String::from_utf8(received).unwrap();
        }
    }
}

fn json_response(status: &str, headers: &str, body: &str) -> String {
    let length = body.len();
    format!("HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {length}\r\n{headers}\r\n{body}")
}

fn client(url: &str, timeout: Duration) -> OpenAiCompatible {
    let key_variable = "ENSEMBLE_PROVIDER_STUB_API_KEY".to_owned();
    OpenAiCompatible::new(Endpoint { base_url: url.into(), api_key: Some(KEY.into()), key_variable }, timeout)
}

/// Calls the provider at `url` and returns the result with the deltas it streamed.
async fn call(url: &str, timeout: Duration) -> (Result<Completion, ProviderError>, Vec<String>) {
    let deltas = Mutex::new(Vec::new());
    let sink = |delta: &str| deltas.lock().unwrap().push(delta.to_owned());
    let result = client(url, timeout).complete(&request(), &sink).await;
    (result, deltas.into_inner().unwrap())
}

/// The error of one call to a server that answers `response`.
async fn error_for(response: String) -> ProviderError {
    let (url, _server) = stub(vec![response], Duration::ZERO).await;
    call(&url, Duration::from_secs(5)).await.0.unwrap_err()
}

#[tokio::test]
async fn a_streamed_answer_is_forwarded_delta_by_delta_with_the_providers_usage() {
    let parts = [
        SSE_HEAD,
        ": keep-alive\n\ndata: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\ndata: {\"cho",
        "ices\":[{\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\r\n\r\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":2}}\n\ndata: [DONE]\n\n",
    ];
    let (url, server) = stub(parts.map(String::from).to_vec(), Duration::ZERO).await;

    let (result, deltas) = call(&url, Duration::from_secs(5)).await;

    assert_eq!(result.unwrap(), Completion { content: "Hello".into(), tokens_in: 12, tokens_out: 2 });
    assert_eq!(deltas, ["Hel", "lo"]);
    let received = server.await.unwrap();
    assert!(received.starts_with("post /v1/chat/completions "), "{received}");
    assert!(received.contains(&format!("authorization: bearer {KEY}")));
    for field in [r#""stream":true"#, r#""include_usage":true"#, r#""max_tokens":50"#, r#""role":"user""#] {
        assert!(received.contains(field), "{field} missing from {received}");
    }
}

#[tokio::test]
async fn a_whole_json_answer_is_accepted_and_counted_locally_without_usage() {
    let body = r#"{"choices":[{"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}]}"#;
    let (url, _server) = stub(vec![json_response("200 OK", "", body)], Duration::ZERO).await;

    let (result, deltas) = call(&url, Duration::from_secs(5)).await;

    let expected = Completion {
        content: "Hi there".into(),
        tokens_in: tokens::count_messages(&request().messages),
        tokens_out: tokens::count("Hi there"),
    };
    assert_eq!(result.unwrap(), expected);
    assert_eq!(deltas, ["Hi there"]);
}

#[tokio::test]
async fn a_rate_limit_carries_the_retry_after_delay() {
    let body = r#"{"error":{"message":"Rate limit reached","type":"requests","code":"rate_limit_exceeded"}}"#;
    let error = error_for(json_response("429 Too Many Requests", "retry-after: 1\r\n", body)).await;
    assert_eq!(error.class, ErrorClass::RateLimited);
    assert_eq!(error.retry_after, Some(Duration::from_secs(1)));
    assert_eq!(error.message, "HTTP 429 Too Many Requests: Rate limit reached");
}

#[tokio::test]
async fn http_errors_are_classified_by_status_and_body() {
    let cases = [
        ("500 Internal Server Error", r#"{"error":{"message":"boom"}}"#, ErrorClass::ServerError),
        ("503 Service Unavailable", "upstream overloaded", ErrorClass::ServerError),
        ("401 Unauthorized", r#"{"error":{"message":"Incorrect API key","code":"invalid_api_key"}}"#, ErrorClass::Auth),
        ("403 Forbidden", "{}", ErrorClass::Auth),
        (
            "400 Bad Request",
            r#"{"error":{"message":"This model's maximum context length is 8192 tokens","code":"context_length_exceeded"}}"#,
            ErrorClass::ContextLength,
        ),
        ("413 Payload Too Large", "maximum context length exceeded", ErrorClass::ContextLength),
        (
            "400 Bad Request",
            r#"{"error":{"message":"flagged","code":"content_policy_violation"}}"#,
            ErrorClass::ContentFilter,
        ),
        ("422 Unprocessable Entity", r#"{"error":{"message":"temperature too high"}}"#, ErrorClass::BadRequest),
        ("404 Not Found", r#"{"error":{"message":"model not found"}}"#, ErrorClass::BadRequest),
    ];
    for (status, body, class) in cases {
        let error = error_for(json_response(status, "", body)).await;
        assert_eq!(error.class, class, "{status} {body}: {}", error.message);
        assert!(error.message.starts_with(&format!("HTTP {status}")), "{}", error.message);
    }
}

#[tokio::test]
async fn error_messages_are_truncated_and_never_show_the_api_key() {
    let said = format!("Incorrect API key provided: {KEY}. {}", "x".repeat(1000));
    let body = json!({"error": {"message": said}}).to_string();
    let error = error_for(json_response("401 Unauthorized", "", &body)).await;
    assert!(!error.message.contains(KEY) && error.message.contains("<redacted>"), "{}", error.message);
    assert!(error.message.chars().count() < 400);
}

#[tokio::test]
async fn an_unauthorised_call_names_the_key_variable_and_never_the_key() {
    let body = json!({"error": {"message": format!("Incorrect API key provided: {KEY}")}}).to_string();
    let refused = error_for(json_response("401 Unauthorized", "", &body)).await;
    assert_eq!(
        refused.message,
        "HTTP 401 Unauthorized: Incorrect API key provided: <redacted> \
         (the provider refused the API key in ENSEMBLE_PROVIDER_STUB_API_KEY)"
    );

    let body = r#"{"error":{"message":"You didn't provide an API key.","type":"invalid_request_error"}}"#;
    let (url, _server) = stub(vec![json_response("401 Unauthorized", "", body)], Duration::ZERO).await;
    let endpoint = Endpoint { base_url: url, api_key: None, key_variable: "OPENAI_API_KEY".into() };
    let keyless = OpenAiCompatible::new(endpoint, Duration::from_secs(5));
    let error = keyless.complete(&request(), &|_| {}).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Auth);
    assert_eq!(
        error.message,
        "HTTP 401 Unauthorized: You didn't provide an API key. (no API key is configured: set OPENAI_API_KEY)"
    );
}

#[tokio::test]
async fn openai_without_a_key_is_not_called_and_names_the_variable() {
    let endpoint = Endpoint { base_url: OPENAI_BASE_URL.into(), api_key: None, key_variable: "OPENAI_API_KEY".into() };
    let error =
        OpenAiCompatible::new(endpoint, Duration::from_secs(5)).complete(&request(), &|_| {}).await.unwrap_err();
    assert_eq!(error.class, ErrorClass::Auth, "not a connection error: {}", error.message);
    assert_eq!(error.message, "OpenAI's API needs an API key (no API key is configured: set OPENAI_API_KEY)");
}

#[tokio::test]
async fn a_content_filter_finish_is_a_content_filter_error() {
    let chunk = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"content_filter\"}]}\n\ndata: [DONE]\n\n";
    assert_eq!(error_for(format!("{SSE_HEAD}{chunk}")).await.class, ErrorClass::ContentFilter);
}

#[tokio::test]
async fn a_stream_cut_off_before_done_is_a_connection_error() {
    let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
    let event = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    let parts = vec![head.to_owned(), format!("{:x}\r\n{event}\r\n", event.len())];
    let (url, _server) = stub(parts, Duration::ZERO).await;

    let (result, deltas) = call(&url, Duration::from_secs(5)).await;

    let error = result.unwrap_err();
    assert_eq!(error.class, ErrorClass::Connection);
    assert!(error.message.contains("closed the stream before it finished"), "{}", error.message);
    assert_eq!(deltas, ["Hel"]);
}

#[tokio::test]
async fn a_stream_ending_cleanly_without_done_is_a_connection_error() {
    let event = "data: {\"choices\":[{\"delta\":{\"content\":\"Hel\"}}]}\n\n";
    assert_eq!(error_for(format!("{SSE_HEAD}{event}")).await.class, ErrorClass::Connection);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (url, _server) = stub(vec![], Duration::from_secs(30)).await;
    let started = Instant::now();

    let error = call(&url, Duration::from_millis(200)).await.0.unwrap_err();

    assert_eq!(error.class, ErrorClass::Timeout);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn a_refused_connection_is_a_connection_error() {
    let address: SocketAddr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    let error = call(&format!("http://{address}/v1"), Duration::from_secs(5)).await.0.unwrap_err();
    assert_eq!(error.class, ErrorClass::Connection, "{}", error.message);
}

#[test]
fn retry_after_reads_seconds_and_http_dates() {
    let headers = |value: &str| HeaderMap::from_iter([(RETRY_AFTER, value.parse().unwrap())]);
    assert_eq!(retry_after(&headers("2")), Some(Duration::from_secs(2)));
    let soon = (chrono::Utc::now() + chrono::Duration::seconds(30)).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let wait = retry_after(&headers(&soon)).unwrap();
    assert!(wait > Duration::from_secs(25) && wait <= Duration::from_secs(30), "{wait:?}");
    assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")), Some(Duration::ZERO));
    assert_eq!(retry_after(&headers("soon")), None);
}
