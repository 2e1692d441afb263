//! Model providers behind one trait, chosen by the `provider/model` prefix: `local/*` answers
//! offline and deterministically; any other provider speaks the OpenAI-compatible chat
//! completions API at a base URL from the configuration (`config::providers`).

pub mod local;
pub mod openai;

use std::{collections::HashMap, sync::Arc, time::Duration};

use entity::states::{AttemptOutcome, ErrorCode};

use crate::config::ProviderSettings;

/// Why an attempt failed; the names are the spec's `retryOn` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    Timeout,
    RateLimited,
    ServerError,
    ContextLength,
    ContentFilter,
    Auth,
    BadRequest,
    Connection,
}

impl ErrorClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::ContextLength => "context_length",
            Self::ContentFilter => "content_filter",
            Self::Auth => "auth",
            Self::BadRequest => "bad_request",
            Self::Connection => "connection",
        }
    }
}

/// A run that failed on a provider's error stores its class as the run's error code.
impl From<ErrorClass> for ErrorCode {
    fn from(class: ErrorClass) -> Self {
        match class {
            ErrorClass::Timeout => Self::Timeout,
            ErrorClass::RateLimited => Self::RateLimited,
            ErrorClass::ServerError => Self::ServerError,
            ErrorClass::ContextLength => Self::ContextLength,
            ErrorClass::ContentFilter => Self::ContentFilter,
            ErrorClass::Auth => Self::Auth,
            ErrorClass::BadRequest => Self::BadRequest,
            ErrorClass::Connection => Self::Connection,
        }
    }
}

/// A call that failed stores its class as the attempt's outcome.
impl From<ErrorClass> for AttemptOutcome {
    fn from(class: ErrorClass) -> Self {
        match class {
            ErrorClass::Timeout => Self::Timeout,
            ErrorClass::RateLimited => Self::RateLimited,
            ErrorClass::ServerError => Self::ServerError,
            ErrorClass::ContextLength => Self::ContextLength,
            ErrorClass::ContentFilter => Self::ContentFilter,
            ErrorClass::Auth => Self::Auth,
            ErrorClass::BadRequest => Self::BadRequest,
            ErrorClass::Connection => Self::Connection,
        }
    }
}

/// A failed call: its class, a message fit for the run's record (no secrets), and how long the
/// provider asked to wait before the next call.
#[derive(Clone, Debug)]
pub struct ProviderError {
    pub class: ErrorClass,
    pub message: String,
    pub retry_after: Option<Duration>,
}

impl ProviderError {
    pub fn new(class: ErrorClass, message: impl Into<String>) -> Self {
        Self { class, message: message.into(), retry_after: None }
    }
}

/// Who wrote a message: the same set a conversation stores.
pub use entity::states::MessageRole as Role;

#[derive(Clone, Debug)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

/// One call to a model.
#[derive(Clone, Debug)]
pub struct CompletionRequest {
    /// The agent answering (the local provider names it in its answers).
    pub agent: String,
    /// The model after the `provider/` prefix: `echo`, `gpt-4o-mini`, …
    pub model: String,
    /// System prompt first, then the conversation path, then the new user message.
    pub messages: Vec<ChatMessage>,
    pub temperature: Option<f64>,
    pub max_tokens: Option<u32>,
    /// 1 for the agent's first attempt in this run, 2 for its first retry, …
    pub attempt: u32,
    /// Which answer of the agent this is within a workflow run (1 outside one): `local/script`
    /// answers its `turn`-th line.
    pub turn: u32,
}

/// A successful answer and its token counts.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    pub content: String,
    pub tokens_in: u32,
    pub tokens_out: u32,
}

/// Receives streamed text as it arrives.
pub type DeltaSink<'a> = &'a (dyn Fn(&str) + Send + Sync);

#[async_trait::async_trait]
pub trait Provider: Send + Sync {
    /// Answers `request`, passing streamed pieces of the answer to `on_delta` as they arrive.
    async fn complete(&self, request: &CompletionRequest, on_delta: DeltaSink<'_>)
    -> Result<Completion, ProviderError>;
}

/// Every provider the server can reach, by name.
#[derive(Clone)]
pub struct Providers {
    by_name: HashMap<String, Arc<dyn Provider>>,
}

impl Providers {
    /// `local` and the providers `settings` configure (docs/runs.md); `timeout` bounds each
    /// HTTP call. Each provider without an API key is logged as a warning naming the variable
    /// to set.
    pub fn new(settings: &ProviderSettings, timeout: Duration) -> Self {
        let mut by_name: HashMap<String, Arc<dyn Provider>> = HashMap::new();
        by_name.insert("local".into(), Arc::new(local::Local));
        for (name, endpoint) in settings.endpoints().iter().cloned() {
            if endpoint.api_key.is_none() {
                let variable = &endpoint.key_variable;
                tracing::warn!(
                    provider = %name,
                    %variable,
                    "provider \"{name}\" has no API key: set {variable} if it needs one, or runs of its models will fail"
                );
            }
            by_name.insert(name, Arc::new(openai::OpenAiCompatible::new(endpoint, timeout)));
        }
        Self { by_name }
    }

    /// The provider of `provider/model`, and the model name it knows.
    pub fn resolve<'m>(&self, model: &'m str) -> Result<(Arc<dyn Provider>, &'m str), ProviderError> {
        let (provider, name) = model
            .split_once('/')
            .ok_or_else(|| ProviderError::new(ErrorClass::BadRequest, format!("`{model}` is not `provider/model`")))?;
        let found = self.by_name.get(provider).cloned().ok_or_else(|| {
            ProviderError::new(ErrorClass::BadRequest, format!("provider `{provider}` is not configured"))
        })?;
        Ok((found, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_class_is_stored_under_its_retry_on_name() {
        use ErrorClass::*;
        for class in [Timeout, RateLimited, ServerError, ContextLength, ContentFilter, Auth, BadRequest, Connection] {
            assert_eq!(ErrorCode::from(class).to_string(), class.as_str());
            assert_eq!(AttemptOutcome::from(class).to_string(), class.as_str());
        }
    }
}
