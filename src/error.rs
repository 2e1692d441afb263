//! One error type for the whole service, and the one place it becomes a GraphQL error
//! with `extensions.code` (DESIGN §5). Internal causes are logged, never sent.

use async_graphql::ErrorExtensions;
use serde::Serialize;

/// One problem in a piece of input: where it is and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub path: String,
    pub message: String,
    /// Where in a template's text the problem is (1-based), for template syntax errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<u32>,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self { path: path.into(), message: message.into(), line: None, column: None }
    }

    /// The same problem, placed at `line` and `column` of the text at its path.
    pub fn at(self, line: u32, column: u32) -> Self {
        Self { line: Some(line), column: Some(column), ..self }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    BadUserInput { message: String, problems: Vec<Problem> },
    #[error("{0}")]
    Conflict(String),
    #[error("{message}")]
    RateLimited { message: String, retry_after_secs: Option<u64> },
    #[error("{0}")]
    QuotaExceeded(String),
    /// Anything the caller cannot fix. The cause is logged; the caller sees a generic message.
    #[error("internal error: {0}")]
    Internal(String),
}

impl AppError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadUserInput { message: message.into(), problems: Vec::new() }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    /// The `extensions.code` clients switch on.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated(_) => "UNAUTHENTICATED",
            Self::Forbidden(_) => "FORBIDDEN",
            Self::NotFound(_) => "NOT_FOUND",
            Self::BadUserInput { .. } => "BAD_USER_INPUT",
            Self::Conflict(_) => "CONFLICT",
            Self::RateLimited { .. } => "RATE_LIMITED",
            Self::QuotaExceeded(_) => "QUOTA_EXCEEDED",
            Self::Internal(_) => "INTERNAL",
        }
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::internal(err)
    }
}

/// The message an internal error is answered with.
pub const INTERNAL_MESSAGE: &str = "Internal server error. The request id identifies it in the server log.";

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        let message = match self {
            Self::Internal(cause) => {
                // The surrounding span carries the request id.
                tracing::error!(error = %cause, "internal error");
                INTERNAL_MESSAGE.to_string()
            }
            other => other.to_string(),
        };
        async_graphql::Error::new(message).extend_with(|_, ext| {
            ext.set("code", self.code());
            match self {
                Self::BadUserInput { problems, .. } if !problems.is_empty() => {
                    let list = problems
                        .iter()
                        .map(|p| {
                            let mut map = async_graphql::indexmap::IndexMap::new();
                            map.insert(async_graphql::Name::new("path"), p.path.clone().into());
                            map.insert(async_graphql::Name::new("message"), p.message.clone().into());
                            if let (Some(line), Some(column)) = (p.line, p.column) {
                                map.insert(async_graphql::Name::new("line"), line.into());
                                map.insert(async_graphql::Name::new("column"), column.into());
                            }
                            async_graphql::Value::Object(map)
                        })
                        .collect::<Vec<_>>();
                    ext.set("problems", list);
                }
                Self::RateLimited { retry_after_secs: Some(secs), .. } => ext.set("retryAfter", *secs),
                _ => {}
            }
        })
    }
}

/// `result.gql()?` in a resolver: the error keeps its `extensions.code`.
pub trait GqlResultExt<T> {
    fn gql(self) -> async_graphql::Result<T>;
}

impl<T> GqlResultExt<T> for Result<T, AppError> {
    fn gql(self) -> async_graphql::Result<T> {
        self.map_err(|e| e.extend())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_errors_hide_their_cause() {
        let err = AppError::internal("connection refused to 10.0.0.3:5432").extend();
        assert_eq!(err.message, INTERNAL_MESSAGE);
        let ext = format!("{:?}", err.extensions);
        assert!(ext.contains("INTERNAL") && !ext.contains("10.0.0.3"), "{ext}");
    }

    #[test]
    fn bad_input_lists_every_problem() {
        let err = AppError::BadUserInput {
            message: "2 problems".into(),
            problems: vec![Problem::new("a", "x"), Problem::new("b", "y")],
        }
        .extend();
        let value = async_graphql::Response::from_errors(vec![err.into_server_error(async_graphql::Pos::default())]);
        let json = serde_json::to_value(&value).unwrap();
        let ext = &json["errors"][0]["extensions"];
        assert_eq!(ext["code"], "BAD_USER_INPUT");
        assert_eq!(ext["problems"][1]["path"], "b");
    }
}
