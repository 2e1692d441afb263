//! The one place an `AppError` becomes an HTTP answer: the status its code implies, the headers
//! that go with it (`WWW-Authenticate` with 401, `Retry-After` with 429) and the GraphQL error
//! shape, `{"errors":[{"message","extensions":{"code",…}}]}`. An internal cause is logged where
//! the error is extended, inside the request's span (which carries the request id), and answered
//! as a generic message. REST routes answer through it (`rest::RestError`), and `/graphql` for
//! an error before the operation runs; inbound webhooks keep their senders' conventions.

use axum::{
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use crate::error::AppError;

/// The HTTP status of an error's code.
pub fn status(err: &AppError) -> StatusCode {
    match err {
        AppError::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
        AppError::Forbidden(_) => StatusCode::FORBIDDEN,
        AppError::NotFound(_) => StatusCode::NOT_FOUND,
        AppError::BadUserInput { .. } => StatusCode::BAD_REQUEST,
        AppError::Conflict(_) => StatusCode::CONFLICT,
        AppError::RateLimited { .. } | AppError::QuotaExceeded(_) => StatusCode::TOO_MANY_REQUESTS,
        AppError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        AppError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        AppError::TimedOut { .. } => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// The headers an answer with `status` carries: the scheme to authenticate with, and when to
/// try again when the error says (whole seconds).
pub fn headers(status: StatusCode, retry_after_secs: Option<u64>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    if let Some(secs) = retry_after_secs {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    headers
}

/// How long a refused caller should wait, when the error says.
pub fn retry_after(err: &AppError) -> Option<u64> {
    match err {
        AppError::RateLimited { retry_after_secs, .. } => *retry_after_secs,
        _ => None,
    }
}

/// `err` answered in the GraphQL error shape, as `application/json`.
pub fn answer(err: AppError) -> Response {
    let status = status(&err);
    let headers = headers(status, retry_after(&err));
    let body = serde_json::json!({ "errors": [err.request_error()] });
    (status, headers, axum::Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_code_answers_the_status_it_implies() {
        let cases = [
            (AppError::Unauthenticated(String::new()), 401),
            (AppError::Forbidden(String::new()), 403),
            (AppError::NotFound(String::new()), 404),
            (AppError::bad_input(""), 400),
            (AppError::Conflict(String::new()), 409),
            (AppError::RateLimited { message: String::new(), retry_after_secs: Some(3) }, 429),
            (AppError::QuotaExceeded(String::new()), 429),
            (AppError::internal("boom"), 500),
            (AppError::Unavailable("gone".into()), 503),
            (AppError::TimedOut { after_secs: 30 }, 504),
        ];
        for (err, expected) in cases {
            assert_eq!(status(&err).as_u16(), expected, "{}", err.code());
        }
    }

    #[tokio::test]
    async fn an_answer_has_the_graphql_error_shape_and_its_headers() {
        let limited = answer(AppError::RateLimited { message: "Slow down.".into(), retry_after_secs: Some(3) });
        assert_eq!(limited.status(), 429);
        assert_eq!(limited.headers()[header::RETRY_AFTER], "3");
        let body = axum::body::to_bytes(limited.into_body(), 1 << 16).await.unwrap();
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["errors"][0]["message"], "Slow down.");
        assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED");
        assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 3);

        let unsigned = answer(AppError::Unauthenticated("Sign in.".into()));
        assert_eq!(unsigned.status(), 401);
        assert_eq!(unsigned.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }

    #[tokio::test]
    async fn an_internal_cause_is_never_sent() {
        let failed = answer(AppError::internal("connection refused to 10.0.0.5"));
        assert_eq!(failed.status(), 500);
        let body = axum::body::to_bytes(failed.into_body(), 1 << 16).await.unwrap();
        let body = String::from_utf8(body.to_vec()).unwrap();
        assert!(!body.contains("10.0.0.5") && body.contains("INTERNAL"), "{body}");
    }
}
