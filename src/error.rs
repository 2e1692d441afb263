//! One error type for the whole service, and the one place it becomes a GraphQL error
//! with `extensions.code` (docs/transport.md). Internal causes are logged, never sent.

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

/// The problem in words: `spec.agents[0].model: unknown provider "mistral" — …`, with the line
/// and column when it has them.
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.path, self.message)?;
        if let (Some(line), Some(column)) = (self.line, self.column) {
            write!(f, " (line {line}, column {column})")?;
        }
        Ok(())
    }
}

/// What a `BAD_USER_INPUT` error says: its own sentence when it has one, else its first
/// problem in words and how many more there are (client libraries show only the message).
fn bad_input_message(message: &str, problems: &[Problem]) -> String {
    match problems {
        [first, ..] if message.is_empty() => match problems.len() - 1 {
            0 => first.to_string(),
            1 => format!("{first} (and 1 more problem)"),
            more => format!("{first} (and {more} more problems)"),
        },
        _ => message.to_string(),
    }
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    /// Input the caller must fix. With an empty `message` the answer's message is the first
    /// problem in words (see [`AppError::invalid`]).
    #[error("{}", bad_input_message(message, problems))]
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
    /// The database could not be reached (down, its bridge away, every connection busy): INTERNAL
    /// too, with a message saying so, since trying again later may work. The cause is logged.
    #[error("the database cannot be reached: {0}")]
    Unavailable(String),
    /// The request ran past `ENSEMBLE_REQUEST_TIMEOUT` and was stopped (docs/transport.md).
    #[error(
        "The request took longer than {after_secs} s, the server's limit, and was stopped. What it saved \
         before then is kept, and runs it started go on: find them with `runs`."
    )]
    TimedOut { after_secs: u64 },
}

impl AppError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadUserInput { message: message.into(), problems: Vec::new() }
    }

    /// Input refused for `problems` (at least one): the message is the first of them in words,
    /// even after their paths are moved under another (`input.…`); all are in
    /// `extensions.problems`.
    pub fn invalid(problems: Vec<Problem>) -> Self {
        Self::BadUserInput { message: String::new(), problems }
    }

    /// [`AppError::invalid`] when there are problems, `Ok` otherwise.
    pub fn refuse(problems: Vec<Problem>) -> Result<(), Self> {
        if problems.is_empty() { Ok(()) } else { Err(Self::invalid(problems)) }
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
            Self::Internal(_) | Self::Unavailable(_) => "INTERNAL",
            Self::TimedOut { .. } => "REQUEST_TIMEOUT",
        }
    }
}

impl From<sea_orm::DbErr> for AppError {
    fn from(err: sea_orm::DbErr) -> Self {
        match err {
            sea_orm::DbErr::Conn(_) | sea_orm::DbErr::ConnectionAcquire(_) => Self::Unavailable(err.to_string()),
            _ => Self::internal(err),
        }
    }
}

/// The message an internal error is answered with.
pub const INTERNAL_MESSAGE: &str = "Internal server error. The request id identifies it in the server log.";

/// The message an [`AppError::Unavailable`] is answered with.
pub const UNAVAILABLE_MESSAGE: &str =
    "The database cannot be reached right now; try again in a moment. The request id identifies it in the server log.";

impl ErrorExtensions for AppError {
    fn extend(&self) -> async_graphql::Error {
        let message = match self {
            Self::Internal(cause) => {
                // The surrounding span carries the request id.
                tracing::error!(error = %cause, "internal error");
                INTERNAL_MESSAGE.to_string()
            }
            Self::Unavailable(cause) => {
                tracing::error!(error = %cause, "the database cannot be reached");
                UNAVAILABLE_MESSAGE.to_string()
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

impl AppError {
    /// The error for a person at a terminal (a command's or the server start's failure), never
    /// a client: an internal error's cause as it is, any other error's message.
    pub fn into_cause(self) -> String {
        match self {
            Self::Internal(cause) => cause,
            other => other.to_string(),
        }
    }

    /// This error as one of the request as a whole: no `path`, and no `locations` (an error
    /// that is about no place in the document has none, rather than line 0).
    pub fn request_error(&self) -> async_graphql::ServerError {
        let error = self.extend();
        let mut server_error = async_graphql::ServerError::new(error.message, None);
        server_error.extensions = error.extensions;
        server_error
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
    fn a_request_error_has_no_locations() {
        let error = AppError::Unauthenticated("The token has expired.".into()).request_error();
        let json = serde_json::to_value(&error).unwrap();
        assert!(json.get("locations").is_none(), "{json}");
        assert_eq!(json["extensions"]["code"], "UNAUTHENTICATED");
    }

    #[test]
    fn bad_input_says_its_first_problem_in_words() {
        let one = AppError::invalid(vec![Problem::new("spec.agents[0].model", "unknown provider \"mistral\"")]);
        assert_eq!(one.extend().message, "spec.agents[0].model: unknown provider \"mistral\"");
        let three = AppError::invalid(vec![
            Problem::new("name", "must be 1 to 100 characters").at(1, 2),
            Problem::new("b", "y"),
            Problem::new("c", "z"),
        ]);
        assert_eq!(
            three.extend().message,
            "name: must be 1 to 100 characters (line 1, column 2) (and 2 more problems)"
        );
        let own =
            AppError::BadUserInput { message: "Version 3 is current.".into(), problems: vec![Problem::new("a", "x")] };
        assert_eq!(own.extend().message, "Version 3 is current.", "a sentence of its own is kept");
    }

    #[test]
    fn bad_input_lists_every_problem() {
        let err = AppError::invalid(vec![Problem::new("a", "x"), Problem::new("b", "y")]).extend();
        let value = async_graphql::Response::from_errors(vec![
            err.into_server_error(async_graphql::Pos { line: 1, column: 1 }),
        ]);
        let json = serde_json::to_value(&value).unwrap();
        let ext = &json["errors"][0]["extensions"];
        assert_eq!(ext["code"], "BAD_USER_INPUT");
        assert_eq!(ext["problems"][1]["path"], "b");
    }
}
