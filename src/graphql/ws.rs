//! GraphQL over websockets at `/graphql/ws`: `graphql-transport-ws` by our own loop (the close
//! codes of the protocol, an `error` message for operations that fail validation, keepalive
//! pings), the legacy `graphql-ws` by async-graphql's engine. Both write through one bounded
//! queue (`wire`): a client that stops reading is dropped instead of growing memory.

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_graphql::{Data, Response, http::WsMessage};
use axum::{
    extract::{
        ConnectInfo, State,
        ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response as HttpResponse},
};
use chrono::Utc;
use futures_util::{StreamExt, stream::BoxStream};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamMap;
use tracing::Instrument;

use super::{
    AppSchema,
    loaders::Loaders,
    sharing::{CountedBySocket, Groups, Lull, Membership, Notice, SocketOperation, Subscriber},
    wire::{Outgoing, Wire},
};
use crate::{
    auth::{Authenticator, Principal, bearer},
    metrics::{Metrics, OpenSubscription},
    state::{HttpState, RequestMeta},
};

const TRANSPORT_WS: &str = "graphql-transport-ws";
const LEGACY_WS: &str = "graphql-ws";
const INIT_TIMEOUT: Duration = Duration::from_secs(3);
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
    let legacy = match ws.selected_protocol().and_then(|p| p.to_str().ok()) {
        Some(TRANSPORT_WS) => false,
        Some(LEGACY_WS) => true,
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "Ask for the `graphql-transport-ws` (or legacy `graphql-ws`) websocket subprotocol.",
            )
                .into_response();
        }
    };
    let meta = RequestMeta::from_headers(&headers, Some(peer));
    let span = tracing::info_span!("websocket", request_id = %meta.request_id, protocol = if legacy { LEGACY_WS } else { TRANSPORT_WS });
    let origin_allowed = origin_allowed(&headers, &http.state.config.cors_origins);
    let handshake = Handshake { legacy, origin_allowed, meta };
    ws.on_upgrade(move |socket| serve(socket, http, handshake).instrument(span))
}

/// What the upgrade request said about the connection.
struct Handshake {
    legacy: bool,
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
    let ended = if handshake.legacy {
        serve_legacy(incoming, &outbox, &http, handshake).await
    } else {
        Connection::new(&http, outbox.clone(), handshake).run(incoming).await
    };
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

/// A `next` message, written straight from the response (the hot path of every subscription).
#[derive(serde::Serialize)]
struct Next<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    payload: &'a Response,
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

/// A message from a `graphql-transport-ws` client.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ClientMessage {
    ConnectionInit {
        #[serde(default)]
        payload: Option<Value>,
    },
    Ping {
        #[serde(default)]
        payload: Option<Value>,
    },
    Pong {
        #[serde(default)]
        #[allow(dead_code)]
        payload: Option<Value>,
    },
    Subscribe {
        id: String,
        payload: SubscribePayload,
    },
    Complete {
        id: String,
    },
}

#[derive(Deserialize, Clone)]
#[serde(rename_all = "camelCase")]
struct SubscribePayload {
    query: String,
    #[serde(default)]
    operation_name: Option<String>,
    #[serde(default)]
    variables: Option<Value>,
    #[serde(default)]
    extensions: Option<Value>,
}

/// Why `connection_init` was refused.
enum InitRefusal {
    /// 4400: the payload is not an object, or its credentials are not strings.
    BadPayload,
    /// 4403: a foreign origin, or credentials that do not verify or have expired.
    Forbidden,
}

/// The principal of `connection_init`: `{"authorization": "Bearer …"}` or `{"token": "…"}`;
/// none is anonymous.
async fn authorize_init(
    auth: &Authenticator,
    origin_allowed: bool,
    payload: Option<&Value>,
) -> Result<Principal, InitRefusal> {
    if !origin_allowed {
        return Err(InitRefusal::Forbidden);
    }
    let fields = match payload {
        None | Some(Value::Null) => return Ok(Principal::Anonymous),
        Some(Value::Object(fields)) => fields,
        Some(_) => return Err(InitRefusal::BadPayload),
    };
    let field = |name: &str| fields.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v);
    let token = match (field("authorization"), field("token")) {
        (Some(Value::String(value)), _) => bearer(value).ok_or(InitRefusal::Forbidden)?,
        (None, Some(Value::String(token))) => token.as_str(),
        (None, None) => return Ok(Principal::Anonymous),
        _ => return Err(InitRefusal::BadPayload),
    };
    let principal = auth.from_token(token).await.map_err(|_| InitRefusal::Forbidden)?;
    if principal.expires_at().is_some_and(|at| at <= Utc::now()) {
        return Err(InitRefusal::Forbidden);
    }
    Ok(principal)
}

/// Completes at `at` (never when `None`).
async fn expiry(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Completes when the server begins shutting down.
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stopping| *stopping).await;
}

/// One step of an operation's own stream.
enum Step {
    /// Its `index`th response.
    Response(usize, Box<Response>),
    /// Its resolver declared it shareable (see `sharing`), with the lulls its stream marks.
    Shareable(Lull),
    End,
}

type OperationStream = BoxStream<'static, Step>;

/// An active operation of the socket: its own stream is in `Connection::streams`, unless it
/// streams from a shared one.
struct Operation {
    payload: SubscribePayload,
    shared: Option<Membership>,
    /// Whether a response has been sent (it then keeps its own stream).
    answered: bool,
    _open: OpenSubscription,
}

/// Why the loop ended with a close of its own.
enum Close {
    Code(u16, String),
    Gone,
}

/// One `graphql-transport-ws` connection: a single task selecting over the socket, the init
/// timer, keepalive, shutdown and the active operations.
struct Connection {
    schema: AppSchema,
    outbox: Outbox,
    auth: Arc<Authenticator>,
    db: sea_orm::DatabaseConnection,
    meta: RequestMeta,
    /// What operations see: the request id and, once initialised, the principal.
    session: Arc<Data>,
    /// When the principal's token expires; the socket closes then.
    expires: Option<tokio::time::Instant>,
    keepalive: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    origin_allowed: bool,
    init_received: bool,
    acked: bool,
    operations: HashMap<String, Operation>,
    streams: StreamMap<String, OperationStream>,
    groups: Arc<Groups>,
    notices: mpsc::UnboundedReceiver<Notice>,
    notify: mpsc::UnboundedSender<Notice>,
    metrics: Arc<Metrics>,
}

impl Connection {
    fn new(http: &HttpState, outbox: Outbox, handshake: Handshake) -> Self {
        let (notify, notices) = mpsc::unbounded_channel();
        Self {
            schema: http.schema.clone(),
            outbox,
            auth: http.state.auth.clone(),
            db: http.state.db.clone(),
            meta: handshake.meta,
            session: Arc::default(),
            expires: None,
            keepalive: Duration::from_secs(http.state.config.ws_keepalive_secs.max(1)),
            shutdown: http.state.shutdown.clone(),
            origin_allowed: handshake.origin_allowed,
            init_received: false,
            acked: false,
            operations: HashMap::new(),
            streams: StreamMap::new(),
            groups: http.shared.clone(),
            notices,
            notify,
            metrics: http.state.metrics.clone(),
        }
    }

    async fn run(mut self, mut incoming: futures_util::stream::SplitStream<WebSocket>) -> Result<(), SlowClient> {
        let init_timer = tokio::time::sleep(INIT_TIMEOUT);
        tokio::pin!(init_timer);
        let mut keepalive = tokio::time::interval(self.keepalive);
        keepalive.tick().await;
        let mut shutdown = self.shutdown.clone();
        let close = loop {
            tokio::select! {
                _ = &mut init_timer, if !self.init_received => {
                    break Close::Code(4408, "Connection initialisation timeout".into());
                }
                _ = stopping(&mut shutdown) => {
                    break Close::Code(1001, "Server shutting down".into());
                }
                _ = expiry(self.expires), if self.expires.is_some() => {
                    break Close::Code(4403, "Forbidden: the token has expired".into());
                }
                _ = keepalive.tick() => self.outbox.json(json!({"type": "ping"})).await?,
                Some((id, step)) = self.streams.next(), if !self.streams.is_empty() => match step {
                    Step::Response(index, response) => self.forward(id, index, response).await?,
                    Step::Shareable(lull) => self.share(id, lull),
                    Step::End => self.complete(id).await?,
                },
                Some(notice) = self.notices.recv() => self.shared(notice).await?,
                message = incoming.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        if let Some(close) = self.handle(text.as_str()).await? {
                            break close;
                        }
                    }
                    Some(Ok(Message::Binary(_))) => break Close::Code(4400, "Binary messages are not supported".into()),
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break Close::Gone,
                },
            }
        };
        if let Close::Code(code, reason) = close {
            self.outbox.close(code, &reason).await?;
        }
        Ok(())
    }

    /// Handles one client message; `Some` closes the connection.
    async fn handle(&mut self, text: &str) -> Result<Option<Close>, SlowClient> {
        let Ok(message) = serde_json::from_str::<ClientMessage>(text) else {
            return Ok(Some(Close::Code(4400, "Invalid message received".into())));
        };
        match message {
            ClientMessage::ConnectionInit { payload } => {
                if self.init_received {
                    return Ok(Some(Close::Code(4429, "Too many initialisation requests".into())));
                }
                self.init_received = true;
                let principal = match authorize_init(&self.auth, self.origin_allowed, payload.as_ref()).await {
                    Ok(principal) => principal,
                    Err(InitRefusal::BadPayload) => {
                        return Ok(Some(Close::Code(4400, "connection_init payload must be an object".into())));
                    }
                    Err(InitRefusal::Forbidden) => {
                        return Ok(Some(Close::Code(4403, "Forbidden".into())));
                    }
                };
                self.expires = principal.expires_at().map(|at| {
                    let left = (at - Utc::now()).to_std().unwrap_or_default();
                    tokio::time::Instant::now() + left
                });
                let mut data = Data::default();
                data.insert(self.meta.clone());
                data.insert(principal);
                data.insert(CountedBySocket);
                self.session = Arc::new(data);
                self.acked = true;
                self.outbox.json(json!({"type": "connection_ack"})).await?;
            }
            ClientMessage::Ping { payload } => {
                let mut pong = json!({"type": "pong"});
                if let Some(payload) = payload {
                    pong["payload"] = payload;
                }
                self.outbox.json(pong).await?;
            }
            ClientMessage::Pong { .. } => {}
            ClientMessage::Subscribe { id, payload } => {
                if !self.acked {
                    return Ok(Some(Close::Code(4401, "Unauthorized".into())));
                }
                if id.is_empty() {
                    return Ok(Some(Close::Code(4400, "Invalid message received: empty id".into())));
                }
                if self.operations.contains_key(&id) {
                    return Ok(Some(Close::Code(4409, format!("Subscriber for {id} already exists"))));
                }
                self.streams.insert(id.clone(), self.start(&payload, true));
                let operation =
                    Operation { payload, shared: None, answered: false, _open: self.metrics.subscription_opened() };
                self.operations.insert(id, operation);
            }
            ClientMessage::Complete { id } => {
                self.operations.remove(&id);
                self.streams.remove(&id);
            }
        }
        Ok(None)
    }

    /// Runs an operation's own stream; with `share`, one that asks no extensions may later join a
    /// shared stream.
    fn start(&self, payload: &SubscribePayload, share: bool) -> OperationStream {
        let mut request = async_graphql::Request::new(payload.query.clone());
        request.operation_name = payload.operation_name.clone();
        if let Some(variables) = &payload.variables {
            request.variables = async_graphql::Variables::from_json(variables.clone());
        }
        let extensions = payload.extensions.clone().and_then(|e| serde_json::from_value(e).ok());
        let (operation, shareable) = match extensions {
            Some(extensions) => {
                request.extensions = extensions;
                (SocketOperation::alone(), None)
            }
            None if share => {
                let (operation, shareable) = SocketOperation::shareable();
                (operation, Some(shareable))
            }
            None => (SocketOperation::alone(), None),
        };
        let request = request.data(Loaders::new(&self.db)).data(operation);
        let responses = self.schema.execute_stream_with_session_data(request, self.session.clone());
        let steps = responses
            .enumerate()
            .map(|(index, response)| Step::Response(index, Box::new(response)))
            .chain(futures_util::stream::once(async { Step::End }));
        match shareable {
            Some(shareable) => {
                let shareable = futures_util::stream::once(shareable)
                    .filter_map(|declared| async move { declared.ok().map(Step::Shareable) });
                futures_util::stream::select(steps, shareable).boxed()
            }
            None => steps.boxed(),
        }
    }

    /// Moves an operation whose resolver declared it shareable, and that has not answered yet,
    /// from its own stream to the one shared under its key.
    fn share(&mut self, id: String, lull: Lull) {
        let Some(operation) = self.operations.get_mut(&id).filter(|o| !o.answered) else {
            return;
        };
        let Some(own) = self.streams.remove(&id) else {
            return;
        };
        let payload = &operation.payload;
        let key = Groups::key(&payload.query, payload.operation_name.as_deref(), payload.variables.as_ref());
        let responses = own
            .filter_map(|step| async move {
                match step {
                    Step::Response(_, response) => Some(*response),
                    Step::Shareable(_) | Step::End => None,
                }
            })
            .boxed();
        let subscriber = Subscriber { id, wire: self.outbox.wire.clone(), notices: self.notify.clone() };
        operation.shared = Some(self.groups.join(key, subscriber, responses, lull));
    }

    /// What a shared stream says of one of this socket's operations; stale notices (of an
    /// operation completed since) are ignored.
    async fn shared(&mut self, notice: Notice) -> Result<(), SlowClient> {
        let member = match &notice {
            Notice::Events { member, .. } | Notice::Ended { member, .. } => *member,
        };
        let Some(id) = self
            .operations
            .iter()
            .find(|(_, o)| o.shared.as_ref().is_some_and(|m| m.number == member))
            .map(|(id, _)| id.clone())
        else {
            return Ok(());
        };
        match notice {
            Notice::Events { events, .. } => self.outbox.queue(events).await,
            Notice::Ended { late: true, .. } => {
                let Some(operation) = self.operations.get(&id) else {
                    return Ok(());
                };
                let own = self.start(&operation.payload, false);
                self.streams.insert(id.clone(), own);
                if let Some(operation) = self.operations.get_mut(&id) {
                    operation.shared = None;
                }
                Ok(())
            }
            Notice::Ended { late: false, .. } => self.complete(id).await,
        }
    }

    /// The operation's stream ended: `complete`.
    async fn complete(&mut self, id: String) -> Result<(), SlowClient> {
        self.operations.remove(&id);
        self.streams.remove(&id);
        self.outbox.json(json!({"type": "complete", "id": id})).await
    }

    /// Sends one response: an operation refused before it ran is an `error` message (and no
    /// `complete`); anything else is `next`.
    async fn forward(&mut self, id: String, index: usize, response: Box<Response>) -> Result<(), SlowClient> {
        let refused = index == 0
            && response.data == async_graphql::Value::Null
            && !response.errors.is_empty()
            && response.errors.iter().all(|e| e.path.is_empty());
        if refused {
            self.operations.remove(&id);
            self.streams.remove(&id);
            let errors = serde_json::to_value(&response.errors).unwrap_or_default();
            return self.outbox.json(json!({"type": "error", "id": id, "payload": errors})).await;
        }
        if let Some(operation) = self.operations.get_mut(&id) {
            operation.answered = true;
        }
        let next = Next { kind: "next", id: &id, payload: &response };
        let text = serde_json::to_string(&next).unwrap_or_default();
        self.outbox.send(Message::Text(text.into())).await
    }
}

/// The legacy `graphql-ws` (subscriptions-transport-ws) protocol, run by async-graphql's engine
/// and written through the same bounded queue.
async fn serve_legacy(
    incoming: futures_util::stream::SplitStream<WebSocket>,
    outbox: &Outbox,
    http: &HttpState,
    handshake: Handshake,
) -> Result<(), SlowClient> {
    let input = incoming
        .take_while(|m| {
            futures_util::future::ready(matches!(
                m,
                Ok(Message::Text(_) | Message::Binary(_) | Message::Ping(_) | Message::Pong(_))
            ))
        })
        .filter_map(|m| {
            futures_util::future::ready(match m {
                Ok(Message::Text(text)) => Some(text.as_str().as_bytes().to_vec()),
                Ok(Message::Binary(bytes)) => Some(bytes.to_vec()),
                _ => None,
            })
        });
    let mut session = Data::default();
    session.insert(handshake.meta);
    let (auth, origin_allowed, db) = (http.state.auth.clone(), handshake.origin_allowed, http.state.db.clone());
    let mut engine = async_graphql::http::WebSocket::new(
        http.schema.clone(),
        input,
        async_graphql::http::WebSocketProtocols::SubscriptionsTransportWS,
    )
    .connection_data(session)
    .on_connection_init(move |payload| async move {
        let principal = authorize_init(&auth, origin_allowed, Some(&payload)).await.map_err(|_| "Forbidden")?;
        let mut data = Data::default();
        data.insert(principal);
        data.insert(Loaders::new(&db));
        Ok(data)
    });
    let mut shutdown = http.state.shutdown.clone();
    loop {
        tokio::select! {
            _ = stopping(&mut shutdown) => return outbox.close(1001, "Server shutting down").await,
            message = engine.next() => match message {
                Some(WsMessage::Text(text)) => outbox.send(Message::Text(text.into())).await?,
                Some(WsMessage::Close(code, reason)) => return outbox.close(code, &reason).await,
                None => return Ok(()),
            },
        }
    }
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
