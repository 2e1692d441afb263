//! GraphQL over HTTP (docs/transport.md): POST with a JSON body, GET for queries only, GraphiQL for a
//! browser. Transport failures answer with a GraphQL error body and a fitting status.

use async_graphql::{BatchRequest, BatchResponse, ServerError, parser::types::OperationType};
use axum::{
    body::{Body, Bytes},
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use std::net::SocketAddr;

use serde::Deserialize;

use crate::{
    domain::RequestMeta,
    error::AppError,
    graphql::{
        limits::{self, PARSE_FAILED, VALIDATION_FAILED},
        loaders::Loaders,
    },
    http::HttpState,
};

const GRAPHQL_RESPONSE: &str = "application/graphql-response+json";
const JSON: &str = "application/json";

/// `POST /graphql`: one operation, or a batch when batching is configured.
pub async fn post(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let state = &http.state;
    let media = ResponseMedia::from_accept(&headers);
    if !is_json(&headers) {
        return media.failure(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            PARSE_FAILED,
            "Send GraphQL requests with `Content-Type: application/json`.",
        );
    }
    let limit = state.config.limits.body_bytes;
    let too_large = || {
        media.failure(
            StatusCode::PAYLOAD_TOO_LARGE,
            VALIDATION_FAILED,
            &format!("The request body is larger than the {limit}-byte limit."),
        )
    };
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|len| len > limit) {
        return too_large();
    }
    let Ok(bytes) = axum::body::to_bytes(body, limit).await else {
        return too_large();
    };
    let batch = match parse_body(&bytes, state.config.limits.batch) {
        Ok(batch) => batch,
        Err((code, message)) => return media.failure(StatusCode::BAD_REQUEST, code, &message),
    };
    execute(&http, &headers, peer, media, batch).await
}

/// The query string of `GET /graphql`.
#[derive(Deserialize)]
pub struct GetParams {
    query: Option<String>,
    #[serde(rename = "operationName")]
    operation_name: Option<String>,
    variables: Option<String>,
    extensions: Option<String>,
}

/// `GET /graphql`: GraphiQL for a browser, or a query (never a mutation) from `?query=`.
pub async fn get(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(params): Query<GetParams>,
) -> Response {
    let state = &http.state;
    let media = ResponseMedia::from_accept(&headers);
    let Some(query) = params.query else {
        if accepts(&headers, "text/html") {
            return crate::http::graphiql::page(state.auth.dev.is_some());
        }
        return media.failure(StatusCode::BAD_REQUEST, PARSE_FAILED, "Pass the operation in the `query` parameter.");
    };
    let mut request = async_graphql::Request::new(query);
    request.operation_name = params.operation_name;
    for (name, raw) in [("variables", &params.variables), ("extensions", &params.extensions)] {
        let Some(raw) = raw else { continue };
        let Ok(value) = serde_json::from_str::<serde_json::Value>(raw) else {
            return media.failure(StatusCode::BAD_REQUEST, PARSE_FAILED, &format!("`{name}` is not valid JSON."));
        };
        if !value.is_object() && !value.is_null() {
            return media.failure(StatusCode::BAD_REQUEST, PARSE_FAILED, &format!("`{name}` must be a JSON object."));
        }
        if name == "variables" {
            request.variables = async_graphql::Variables::from_json(value);
        } else if let Ok(ext) = serde_json::from_value(value) {
            request.extensions = ext;
        }
    }
    if selects_mutation(&mut request, state.config.limits.recursion) {
        let mut response = media.failure(
            StatusCode::METHOD_NOT_ALLOWED,
            VALIDATION_FAILED,
            "Mutations cannot be sent with GET; use POST.",
        );
        response.headers_mut().insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    execute(&http, &headers, peer, media, BatchRequest::Single(request)).await
}

/// Whether the operation the request would run is a mutation. A document that does not parse
/// is left for execution to report.
fn selects_mutation(request: &mut async_graphql::Request, recursion: usize) -> bool {
    if limits::check_nesting(&request.query, recursion).is_err() {
        return false;
    }
    let name = request.operation_name.clone();
    let Ok(doc) = request.parsed_query() else {
        return false;
    };
    doc.operations.iter().any(|(op_name, op)| {
        op.node.ty == OperationType::Mutation
            && match (&name, op_name) {
                (Some(wanted), Some(op_name)) => wanted == op_name.as_str(),
                _ => true,
            }
    })
}

/// Runs the batch as the caller the headers name; bad credentials are a 401 at once.
async fn execute(
    http: &HttpState,
    headers: &HeaderMap,
    peer: SocketAddr,
    media: ResponseMedia,
    batch: BatchRequest,
) -> Response {
    let principal = match http.state.auth.from_headers(headers).await {
        Ok(principal) => principal,
        Err(err) => return media.app_error(err),
    };
    let batch =
        batch.data(RequestMeta::from_headers(headers, Some(peer))).data(principal).data(Loaders::new(&http.state.db));
    media.respond(http.schema.execute_batch(batch).await)
}

/// Reads the body as one request or, when `max_batch` > 0, a batch of at most that many.
fn parse_body(bytes: &Bytes, max_batch: usize) -> Result<BatchRequest, (&'static str, String)> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| {
        (PARSE_FAILED, format!("The request body is not valid JSON (line {}, column {}).", e.line(), e.column()))
    })?;
    let one = |value: serde_json::Value| {
        let has_query = value.get("query").is_some_and(serde_json::Value::is_string);
        has_query.then_some(value).and_then(|v| serde_json::from_value::<async_graphql::Request>(v).ok()).ok_or_else(
            || {
                (
                    PARSE_FAILED,
                    "A GraphQL request is a JSON object with a `query` string and optional `operationName` \
                 (string), `variables` (object) and `extensions` (object)."
                        .to_string(),
                )
            },
        )
    };
    match value {
        serde_json::Value::Array(items) => {
            if max_batch == 0 {
                return Err((
                    VALIDATION_FAILED,
                    "Batched requests are turned off; send one operation per request.".into(),
                ));
            }
            if items.len() > max_batch {
                return Err((
                    VALIDATION_FAILED,
                    format!("A batch may hold at most {max_batch} operations; this one holds {}.", items.len()),
                ));
            }
            if items.is_empty() {
                return Err((PARSE_FAILED, "The batch is empty.".into()));
            }
            Ok(BatchRequest::Batch(items.into_iter().map(one).collect::<Result<_, _>>()?))
        }
        value => Ok(BatchRequest::Single(one(value)?)),
    }
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case(JSON))
}

fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.split(',').any(|part| part.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case(media))))
}

/// The media type of the answer: `application/graphql-response+json` when the client asks for
/// it (then a request that fails before execution is a 400), `application/json` otherwise
/// (always 200 once the request is read, as legacy clients expect).
#[derive(Clone, Copy)]
struct ResponseMedia {
    graphql_response: bool,
}

impl ResponseMedia {
    fn from_accept(headers: &HeaderMap) -> Self {
        Self { graphql_response: accepts(headers, GRAPHQL_RESPONSE) }
    }

    fn content_type(self) -> HeaderValue {
        HeaderValue::from_static(if self.graphql_response { GRAPHQL_RESPONSE } else { JSON })
    }

    /// The answer: 429 with `Retry-After` for a rate-limited operation, 400 for a request that
    /// failed before execution when the client speaks graphql-response+json, 200 otherwise.
    fn respond(self, response: BatchResponse) -> Response {
        let mut extra = HeaderMap::new();
        let mut status = StatusCode::OK;
        if let BatchResponse::Single(r) = &response {
            extra.extend(r.http_headers.clone());
            let extensions = r.errors.first().and_then(|e| e.extensions.as_ref());
            let code = extensions.and_then(|e| e.get("code"));
            if code == Some(&async_graphql::Value::from("RATE_LIMITED")) {
                status = StatusCode::TOO_MANY_REQUESTS;
                let retry =
                    extensions.and_then(|e| e.get("retryAfter")).map(|v| v.to_string()).unwrap_or_else(|| "1".into());
                if let Ok(value) = HeaderValue::from_str(&retry) {
                    extra.insert(header::RETRY_AFTER, value);
                }
            } else if self.graphql_response && failed_before_execution(r) {
                status = StatusCode::BAD_REQUEST;
            }
        }
        let mut res = (status, [(header::CONTENT_TYPE, self.content_type())], self.body(&response)).into_response();
        res.headers_mut().extend(extra);
        res
    }

    /// An error of the service before the operation runs (signing in): the status and headers
    /// its code implies (`http::error`), in this request's media type.
    fn app_error(self, err: AppError) -> Response {
        let status = super::error::status(&err);
        let headers = super::error::headers(status, super::error::retry_after(&err));
        let body = self.body(&BatchResponse::Single(async_graphql::Response::from_errors(vec![err.request_error()])));
        (status, headers, [(header::CONTENT_TYPE, self.content_type())], body).into_response()
    }

    fn failure(self, status: StatusCode, code: &str, message: &str) -> Response {
        let error = limits::with_code(ServerError::new(message, None), code);
        let body = self.body(&BatchResponse::Single(async_graphql::Response::from_errors(vec![error])));
        (status, [(header::CONTENT_TYPE, self.content_type())], body).into_response()
    }

    /// The answer's JSON. A graphql-response+json answer to a request that failed before
    /// execution has no `data` entry, as the GraphQL-over-HTTP spec asks; `application/json`
    /// clients get `"data": null` as before.
    fn body(self, response: &BatchResponse) -> Vec<u8> {
        let item = |r| {
            if self.graphql_response && failed_before_execution(r) {
                Item::Refused(r.into())
            } else {
                Item::Executed(r)
            }
        };
        let written = match response {
            BatchResponse::Single(r) => serde_json::to_vec(&item(r)),
            BatchResponse::Batch(list) => serde_json::to_vec(&list.iter().map(item).collect::<Vec<_>>()),
        };
        written.unwrap_or_default()
    }
}

/// Whether a response answers a request that failed before execution: no data, and only errors
/// of the request as a whole (an execution error has a path).
fn failed_before_execution(response: &async_graphql::Response) -> bool {
    response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty())
}

/// One response as written.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Item<'a> {
    Executed(&'a async_graphql::Response),
    Refused(Refused<'a>),
}

/// A response to a request that failed before execution: no `data` entry.
#[derive(serde::Serialize)]
struct Refused<'a> {
    errors: &'a [ServerError],
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    extensions: &'a std::collections::BTreeMap<String, async_graphql::Value>,
}

impl<'a> From<&'a async_graphql::Response> for Refused<'a> {
    fn from(response: &'a async_graphql::Response) -> Self {
        Self { errors: &response.errors, extensions: &response.extensions }
    }
}
