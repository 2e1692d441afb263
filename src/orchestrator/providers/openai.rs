//! The OpenAI-compatible chat completions client: OpenAI itself, and any server speaking its API
//! (Ollama, vLLM, LiteLLM, …) at a base URL from the configuration (`config::providers`).

mod sse;
#[cfg(test)]
mod tests;

use std::{error::Error, time::Duration};

use futures_util::StreamExt;
use reqwest::{
    StatusCode,
    header::{CONTENT_TYPE, HeaderMap, RETRY_AFTER},
};
use serde::Deserialize;
use serde_json::json;

use super::{Completion, CompletionRequest, DeltaSink, ErrorClass, Provider, ProviderError};
pub use crate::config::providers::Endpoint;
use crate::{config::providers::OPENAI_BASE_URL, orchestrator::tokens};

/// Connecting should take far less than answering; past this the host is unreachable.
const MAX_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How much of a provider's error message is kept in the run's record.
const MAX_ERROR_CHARS: usize = 300;

/// One OpenAI-compatible endpoint, with a connection pool shared by every call to it.
pub struct OpenAiCompatible {
    endpoint: Endpoint,
    timeout: Duration,
    /// `Err` only if the TLS backend failed to start; every call then reports why.
    client: Result<reqwest::Client, String>,
}

impl OpenAiCompatible {
    /// `timeout` bounds each whole call, streaming included.
    pub fn new(endpoint: Endpoint, timeout: Duration) -> Self {
        let client = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(timeout.min(MAX_CONNECT_TIMEOUT))
            .build()
            .map_err(|error| describe(&error));
        Self { endpoint, timeout, client }
    }

    async fn call(&self, request: &CompletionRequest, on_delta: DeltaSink<'_>) -> Result<Completion, ProviderError> {
        if self.endpoint.api_key.is_none() && self.endpoint.base_url == OPENAI_BASE_URL {
            // OpenAI itself answers nothing without a key: no call is made.
            return Err(ProviderError::new(ErrorClass::Auth, "OpenAI's API needs an API key"));
        }
        let client = self.client.as_ref().map_err(|error| {
            ProviderError::new(ErrorClass::Connection, format!("the HTTP client could not start: {error}"))
        })?;
        let url = format!("{}/chat/completions", self.endpoint.base_url.trim_end_matches('/'));
        let mut http = client.post(url).json(&request_body(request));
        if let Some(key) = &self.endpoint.api_key {
            http = http.bearer_auth(key);
        }
        let response = http.send().await.map_err(send_error)?;
        let status = response.status();
        if !status.is_success() {
            let retry_after = retry_after(response.headers());
            let body = response.text().await.unwrap_or_default();
            return Err(status_error(status, retry_after, &body));
        }
        let is_json = response.headers().get(CONTENT_TYPE).and_then(|value| value.to_str().ok());
        if is_json.is_some_and(|value| value.starts_with("application/json")) {
            whole_answer(response, request, on_delta).await
        } else {
            streamed_answer(response, request, on_delta).await
        }
    }

    /// Removes the API key from `error`, in case a provider echoed it back.
    fn redact(&self, mut error: ProviderError) -> ProviderError {
        if let Some(key) = self.endpoint.api_key.as_deref().filter(|key| !key.is_empty()) {
            error.message = error.message.replace(key, "<redacted>");
        }
        error
    }

    /// Says which variable holds the key when the provider refused the call as unauthenticated.
    fn explain(&self, mut error: ProviderError) -> ProviderError {
        if error.class == ErrorClass::Auth {
            let variable = &self.endpoint.key_variable;
            let hint = match self.endpoint.api_key {
                None => format!("no API key is configured: set {variable}"),
                Some(_) => format!("the provider refused the API key in {variable}"),
            };
            error.message = format!("{} ({hint})", error.message);
        }
        error
    }
}

#[async_trait::async_trait]
impl Provider for OpenAiCompatible {
    async fn complete(
        &self,
        request: &CompletionRequest,
        on_delta: DeltaSink<'_>,
    ) -> Result<Completion, ProviderError> {
        let result = tokio::time::timeout(self.timeout, self.call(request, on_delta)).await.unwrap_or_else(|_| {
            let message = format!("the provider did not finish answering within {:?}", self.timeout);
            Err(ProviderError::new(ErrorClass::Timeout, message))
        });
        result.map_err(|error| self.explain(self.redact(error)))
    }
}

fn request_body(request: &CompletionRequest) -> serde_json::Value {
    let messages: Vec<_> = request
        .messages
        .iter()
        .map(|message| json!({"role": message.role.to_string(), "content": message.content}))
        .collect();
    let mut body = json!({
        "model": request.model,
        "messages": messages,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(temperature);
    }
    if let Some(max_tokens) = request.max_tokens {
        body["max_tokens"] = json!(max_tokens);
    }
    body
}

/// A streamed chunk or a whole answer: the two share a shape.
#[derive(Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Vec<Choice>,
    usage: Option<Usage>,
    error: Option<ApiError>,
}

#[derive(Deserialize)]
struct Choice {
    /// Set in streamed chunks.
    delta: Option<Text>,
    /// Set in whole answers.
    message: Option<Text>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Text {
    content: Option<String>,
}

#[derive(Deserialize, Clone, Copy)]
struct Usage {
    prompt_tokens: u32,
    completion_tokens: u32,
}

/// OpenAI's `{"error": {...}}`; other servers fill it partly or not at all.
#[derive(Deserialize, Default)]
struct ApiError {
    message: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: ApiError,
}

/// The answer so far.
#[derive(Default)]
struct Answer {
    content: String,
    usage: Option<Usage>,
}

impl Answer {
    /// Takes one chunk's text, usage and finish reason.
    fn apply(&mut self, chunk: Chunk, on_delta: DeltaSink<'_>) -> Result<(), ProviderError> {
        if let Some(error) = chunk.error {
            let message =
                format!("the provider failed mid-answer: {}", error.message.as_deref().unwrap_or("no reason given"));
            return Err(ProviderError::new(ErrorClass::ServerError, short(&message)));
        }
        self.usage = chunk.usage.or(self.usage);
        let Some(choice) = chunk.choices.into_iter().next() else { return Ok(()) };
        let text = choice.delta.or(choice.message).and_then(|text| text.content).unwrap_or_default();
        if !text.is_empty() {
            on_delta(&text);
            self.content.push_str(&text);
        }
        if choice.finish_reason.as_deref() == Some("content_filter") {
            return Err(ProviderError::new(
                ErrorClass::ContentFilter,
                "the provider's content filter stopped the answer",
            ));
        }
        Ok(())
    }

    /// The provider's token counts when it sent them, else our own.
    fn finish(self, request: &CompletionRequest) -> Completion {
        let (tokens_in, tokens_out) = match self.usage {
            Some(usage) => (usage.prompt_tokens, usage.completion_tokens),
            None => (tokens::count_messages(&request.messages), tokens::count(&self.content)),
        };
        Completion { content: self.content, tokens_in, tokens_out }
    }
}

fn parse_chunk(data: &str) -> Result<Chunk, ProviderError> {
    serde_json::from_str(data).map_err(|error| {
        ProviderError::new(
            ErrorClass::ServerError,
            format!("the provider sent an answer that is not valid JSON: {error}"),
        )
    })
}

/// Reads `data:` chunks until `[DONE]`, passing each piece of text to `on_delta`.
async fn streamed_answer(
    response: reqwest::Response,
    request: &CompletionRequest,
    on_delta: DeltaSink<'_>,
) -> Result<Completion, ProviderError> {
    let mut answer = Answer::default();
    let mut decoder = sse::Decoder::default();
    let mut body = response.bytes_stream();
    while let Some(bytes) = body.next().await {
        for data in decoder.feed(&bytes.map_err(body_error)?) {
            if data == "[DONE]" {
                return Ok(answer.finish(request));
            }
            answer.apply(parse_chunk(&data)?, on_delta)?;
        }
    }
    match decoder.finish() {
        Some(data) if data == "[DONE]" => Ok(answer.finish(request)),
        _ => Err(ProviderError::new(ErrorClass::Connection, "the provider closed the stream before it finished")),
    }
}

/// A server that ignored `"stream": true` and sent the whole answer as one JSON object.
async fn whole_answer(
    response: reqwest::Response,
    request: &CompletionRequest,
    on_delta: DeltaSink<'_>,
) -> Result<Completion, ProviderError> {
    let body = response.text().await.map_err(body_error)?;
    let mut answer = Answer::default();
    answer.apply(parse_chunk(&body)?, on_delta)?;
    Ok(answer.finish(request))
}

/// Classifies a failure to send the request or read the response head.
fn send_error(error: reqwest::Error) -> ProviderError {
    let (class, what) = if error.is_timeout() {
        (ErrorClass::Timeout, "the provider did not answer in time")
    } else if error.is_builder() {
        (ErrorClass::BadRequest, "the request could not be built (check the base URL)")
    } else {
        (ErrorClass::Connection, "could not reach the provider")
    };
    ProviderError::new(class, format!("{what}: {}", describe(&error.without_url())))
}

/// Classifies a failure while reading the response body.
fn body_error(error: reqwest::Error) -> ProviderError {
    let (class, what) = if error.is_timeout() {
        (ErrorClass::Timeout, "the provider did not finish answering in time")
    } else {
        (ErrorClass::Connection, "the provider closed the stream before it finished")
    };
    ProviderError::new(class, format!("{what}: {}", describe(&error.without_url())))
}

/// Classifies an HTTP error status by the status and the provider's error body.
fn status_error(status: StatusCode, retry_after: Option<Duration>, body: &str) -> ProviderError {
    let error = serde_json::from_str::<ErrorBody>(body).map(|body| body.error).unwrap_or_default();
    let code = error.code.as_ref().map(|code| code.as_str().map_or_else(|| code.to_string(), str::to_owned));
    let tags = [error.kind.as_deref(), code.as_deref()];
    let said = error.message.as_deref().unwrap_or(body).trim();
    let says = |needle: &str| tags.iter().flatten().chain([&said]).any(|text| text.to_lowercase().contains(needle));
    let class = match status.as_u16() {
        429 => ErrorClass::RateLimited,
        401 | 403 => ErrorClass::Auth,
        400 | 413 | 422 if says("context_length_exceeded") || says("maximum context length") => {
            ErrorClass::ContextLength
        }
        400..=499 if tags.iter().flatten().any(|tag| matches!(*tag, "content_filter" | "content_policy_violation")) => {
            ErrorClass::ContentFilter
        }
        400..=499 => ErrorClass::BadRequest,
        _ => ErrorClass::ServerError,
    };
    let message = if said.is_empty() { format!("HTTP {status}") } else { format!("HTTP {status}: {}", short(said)) };
    ProviderError { class, message, retry_after }
}

/// `Retry-After` as seconds or as an HTTP date.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    Some((at.to_utc() - chrono::Utc::now()).to_std().unwrap_or(Duration::ZERO))
}

/// At most [`MAX_ERROR_CHARS`] characters of `text`.
fn short(text: &str) -> String {
    match text.char_indices().nth(MAX_ERROR_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// An error and its causes, which is where reqwest keeps the useful part ("connection refused").
fn describe(error: &dyn Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
