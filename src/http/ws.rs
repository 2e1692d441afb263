//! GraphQL over websockets at `/graphql/ws`: `graphql-transport-ws` and the legacy `graphql-ws`,
//! both run by our own loop (`connection`) under the same rules (the close codes, the init
//! timeout, the token-expiry close, keepalive, the subscription cap, access checked again while
//! subscriptions run), worded per protocol (`protocol`). Everything goes out through one bounded
//! queue (`wire`): a client that stops reading is dropped instead of growing memory.

mod connection;
mod protocol;

use std::time::Duration;

use axum::{
    extract::{
        ConnectInfo, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response as HttpResponse},
};
use chrono::Utc;
use futures_util::StreamExt;
use serde_json::Value;
use tracing::Instrument;

use self::{
    connection::Connection,
    protocol::{LEGACY_WS, Protocol, TRANSPORT_WS},
};
use super::wire::{Outgoing, Wire};
use crate::{
    auth::{Authenticator, bearer},
    domain::{Principal, RequestMeta},
    error::AppError,
    http::HttpState,
};

/// Close reasons longer than this are cut by clients into a 1006.
const MAX_CLOSE_REASON: usize = 123;
/// Bytes read from a socket at a time.
const READ_BUFFER_BYTES: usize = 4096;

/// `GET /graphql/ws`: negotiates the subprotocol and hands the socket to its loop.
pub async fn upgrade(
    State(http): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    headers: HeaderMap,
    ws: WebSocketUpgrade,
) -> HttpResponse {
    // A message is held to the same limit as an HTTP body.
    let limit = http.state.config.limits.body_bytes;
    // Clients send little after subscribing: a small read buffer (it grows for a large
    // message) keeps an idle subscription cheap.
    let ws = ws
        .protocols([TRANSPORT_WS, LEGACY_WS])
        .max_message_size(limit)
        .max_frame_size(limit)
        .read_buffer_size(READ_BUFFER_BYTES);
    let Some(protocol) = ws.selected_protocol().and_then(|p| p.to_str().ok()).and_then(Protocol::named) else {
        return (
            StatusCode::BAD_REQUEST,
            "Ask for the `graphql-transport-ws` (or legacy `graphql-ws`) websocket subprotocol.",
        )
            .into_response();
    };
    let meta = RequestMeta::from_headers(&headers, Some(peer));
    let span = tracing::info_span!("websocket", request_id = %meta.request_id, protocol = protocol.name());
    let origin_allowed = origin_allowed(&headers, &http.state.config.cors_origins);
    let handshake = Handshake { protocol, origin_allowed, meta };
    ws.on_upgrade(move |socket| serve(socket, http, handshake).instrument(span))
}

/// What the upgrade request said about the connection.
struct Handshake {
    protocol: Protocol,
    /// False for a browser page of a foreign origin: its `connection_init` is refused (4403), so
    /// no other site can drive a signed-in user's socket.
    origin_allowed: bool,
    meta: RequestMeta,
}

/// A socket without `Origin` (not a browser), from the server's own origin, or from an origin
/// in `ENSEMBLE_CORS_ORIGINS`.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let own = headers.get(header::HOST).and_then(|v| v.to_str().ok()).is_some_and(|host| {
        let authority = origin.split_once("://").map_or(origin, |(_, rest)| rest);
        authority.eq_ignore_ascii_case(host)
    });
    own || allowed.iter().any(|a| a.trim().eq_ignore_ascii_case(origin))
}

async fn serve(socket: WebSocket, http: HttpState, handshake: Handshake) {
    let config = &http.state.config;
    let metrics = http.state.metrics.clone();
    metrics.websocket_opened();
    let (sink, incoming) = socket.split();
    let (wire, writer) = Wire::new(Box::pin(sink), config.ws_send_buffer);
    let mut writer = tokio::spawn(writer.run());
    let outbox = Outbox { wire, timeout: Duration::from_millis(config.ws_send_timeout_ms) };
    let ended = Connection::new(&http, outbox.clone(), handshake).run(incoming).await;
    if ended.is_err() {
        tracing::warn!("websocket client stopped reading; dropped");
    }
    drop(outbox);
    // A client that stopped reading may never take the last frames: give up after a moment.
    if tokio::time::timeout(Duration::from_secs(1), &mut writer).await.is_err() {
        writer.abort();
    }
    metrics.websocket_closed();
}

/// The client is not reading fast enough and has been dropped.
#[derive(Debug)]
struct SlowClient;

/// The bounded queue to the writer.
#[derive(Clone)]
struct Outbox {
    wire: Wire,
    timeout: Duration,
}

impl Outbox {
    async fn send(&self, message: Message) -> Result<(), SlowClient> {
        self.queue(Outgoing::Message(message)).await
    }

    async fn queue(&self, item: Outgoing) -> Result<(), SlowClient> {
        self.wire.queue(item, self.timeout).await.map_err(|_| SlowClient)
    }

    async fn json(&self, value: Value) -> Result<(), SlowClient> {
        self.send(Message::Text(value.to_string().into())).await
    }

    async fn close(&self, code: u16, reason: &str) -> Result<(), SlowClient> {
        let frame = CloseFrame { code, reason: truncate(reason, MAX_CLOSE_REASON).into() };
        self.send(Message::Close(Some(frame))).await
    }
}

fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Why `connection_init` was refused.
enum InitRefusal {
    /// 4400: the payload is not an object, or its credentials are not strings.
    BadPayload,
    /// 4403: a foreign origin, or credentials that do not verify or have expired.
    Forbidden,
    /// 1011: the credentials could not be checked (e.g. the database is down); the cause is
    /// logged, never sent.
    Internal(String),
}

/// Who `connection_init` signs in as: `{"authorization": "Bearer …"}` or `{"token": "…"}`;
/// none is anonymous. Answers the principal and the credential, to sign in again with when the
/// account or key changes.
async fn authorize_init(
    auth: &Authenticator,
    origin_allowed: bool,
    payload: Option<&Value>,
) -> Result<(Principal, Option<String>), InitRefusal> {
    if !origin_allowed {
        return Err(InitRefusal::Forbidden);
    }
    let fields = match payload {
        None | Some(Value::Null) => return Ok((Principal::Anonymous, None)),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(InitRefusal::BadPayload),
    };
    let field = |name: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let token = match (field("authorization"), field("token")) {
        (Some(Value::String(value)), _) => bearer(value).ok_or(InitRefusal::Forbidden)?,
        (None, Some(Value::String(token))) => token.as_str(),
        (None, None) => return Ok((Principal::Anonymous, None)),
        _ => return Err(InitRefusal::BadPayload),
    };
    let principal = auth.from_token(token).await.map_err(|refused| match refused {
        AppError::Internal(cause) | AppError::Unavailable(cause) => InitRefusal::Internal(cause),
        _ => InitRefusal::Forbidden,
    })?;
    if principal.expires_at().is_some_and(|at| at <= Utc::now()) {
        return Err(InitRefusal::Forbidden);
    }
    Ok((principal, Some(token.to_string())))
}

/// Whether a read failed because the message is over the size limit (closed with 1009).
fn too_big(error: &axum::Error) -> bool {
    use std::error::Error;
    let cause = error.source().and_then(|cause| cause.downcast_ref::<tungstenite::Error>());
    matches!(cause, Some(tungstenite::Error::Capacity(_)))
}

#[cfg(test)]
mod tests {
    use super::truncate;

    #[test]
    fn close_reasons_are_cut_at_a_char_boundary() {
        let reason = "é".repeat(100);
        let cut = truncate(&reason, 123);
        assert!(cut.len() <= 123 && cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short", 123), "short");
    }
}
