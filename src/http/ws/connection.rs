//! One websocket connection, either protocol: a single task selecting over the socket, the init
//! timer, the token's expiry, keepalive, shutdown, the active operations, what shared streams
//! say of them, and the word that access may have changed (`access`).

mod access;
mod shared;

use std::{collections::HashMap, sync::Arc, time::Duration};

use async_graphql::{Data, Response, ServerError};
use axum::extract::ws::{Message, WebSocket};
use chrono::Utc;
use futures_util::{StreamExt, stream::BoxStream};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::StreamMap;

use super::{
    Handshake, InitRefusal, Outbox, SlowClient, authorize_init,
    protocol::{Incoming, Protocol, SubscribePayload},
    too_big,
};
use crate::{
    domain::{Principal, RequestMeta},
    error::AppError,
    events::{Recheck as AccessRecheck, Watching},
    graphql::{
        AppSchema,
        loaders::Loaders,
        rechecks::RecheckSlot,
        shareable::{CountedBySocket, Lull, SocketOperation},
    },
    http::{
        HttpState,
        sharing::{Groups, Membership, StreamNotice},
    },
    metrics::{Metrics, OpenSubscription},
    state::AppState,
};

const INIT_TIMEOUT: Duration = Duration::from_secs(3);

/// A response message, written straight from the response (the hot path of every subscription).
#[derive(serde::Serialize)]
struct Next<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    id: &'a str,
    payload: &'a Response,
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
    /// How to check its access again, once its resolver has said.
    recheck: RecheckSlot,
    _open: OpenSubscription,
}

/// Why the loop ended with a close of its own.
enum Close {
    Code(u16, String),
    Gone,
}

impl Close {
    fn new(code: u16, reason: &str) -> Option<Self> {
        Some(Self::Code(code, reason.to_string()))
    }
}

pub(super) struct Connection {
    protocol: Protocol,
    schema: AppSchema,
    state: AppState,
    outbox: Outbox,
    meta: RequestMeta,
    /// Who the socket is signed in as (anonymous until `connection_init`).
    principal: Principal,
    /// The token or API key of `connection_init`, to sign in again with when the account or key
    /// changes. Never logged.
    credential: Option<String>,
    /// What operations see: the request id and, once initialised, the principal.
    session: Arc<Data>,
    /// When the principal's token expires; the socket closes then.
    expires: Option<tokio::time::Instant>,
    keepalive: Duration,
    shutdown: tokio::sync::watch::Receiver<bool>,
    origin_allowed: bool,
    init_received: bool,
    acked: bool,
    /// `ENSEMBLE_WS_MAX_SUBSCRIPTIONS`: operations active at once.
    most_operations: usize,
    operations: HashMap<String, Operation>,
    streams: StreamMap<String, OperationStream>,
    groups: Arc<Groups>,
    notices: mpsc::UnboundedReceiver<StreamNotice>,
    notify: mpsc::UnboundedSender<StreamNotice>,
    /// Word that access may have changed, once signed in (`watching`).
    rechecks: mpsc::UnboundedReceiver<AccessRecheck>,
    recheck_sender: mpsc::UnboundedSender<AccessRecheck>,
    watching: Option<Watching>,
    metrics: Arc<Metrics>,
}

impl Connection {
    pub(super) fn new(http: &HttpState, outbox: Outbox, handshake: Handshake) -> Self {
        let (notify, notices) = mpsc::unbounded_channel();
        let (recheck_sender, rechecks) = mpsc::unbounded_channel();
        let config = &http.state.config;
        Self {
            protocol: handshake.protocol,
            schema: http.schema.clone(),
            state: http.state.clone(),
            outbox,
            meta: handshake.meta,
            principal: Principal::Anonymous,
            credential: None,
            session: Arc::default(),
            expires: None,
            keepalive: Duration::from_secs(config.ws_keepalive_secs.max(1)),
            shutdown: http.state.shutdown.clone(),
            origin_allowed: handshake.origin_allowed,
            init_received: false,
            acked: false,
            most_operations: config.ws_max_subscriptions,
            operations: HashMap::new(),
            streams: StreamMap::new(),
            groups: http.shared.clone(),
            notices,
            notify,
            rechecks,
            recheck_sender,
            watching: None,
            metrics: http.state.metrics.clone(),
        }
    }

    pub(super) async fn run(
        mut self,
        mut incoming: futures_util::stream::SplitStream<WebSocket>,
    ) -> Result<(), SlowClient> {
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
                _ = keepalive.tick() => self.keep_alive().await?,
                Some(recheck) = self.rechecks.recv() => {
                    if let Some(close) = self.reconsider(&recheck.change).await? {
                        break close;
                    }
                }
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
                    Some(Err(error)) if too_big(&error) => break Close::Code(1009, "Message too big".into()),
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break Close::Gone,
                },
            }
        };
        if let Close::Code(code, reason) = close {
            self.outbox.close(code, &reason).await?;
        }
        Ok(())
    }

    /// A `graphql-transport-ws` ping at any time; the legacy `ka` once acknowledged.
    async fn keep_alive(&mut self) -> Result<(), SlowClient> {
        if self.protocol == Protocol::Legacy && !self.acked {
            return Ok(());
        }
        self.outbox.json(self.protocol.keepalive()).await
    }

    /// Handles one client message; `Some` closes the connection.
    async fn handle(&mut self, text: &str) -> Result<Option<Close>, SlowClient> {
        let Some(message) = self.protocol.read(text) else {
            return Ok(Close::new(4400, "Invalid message received"));
        };
        match message {
            Incoming::Init(payload) => return self.init(payload).await,
            Incoming::Ping(payload) => {
                let mut pong = json!({"type": "pong"});
                if let Some(payload) = payload {
                    pong["payload"] = payload;
                }
                self.outbox.json(pong).await?;
            }
            Incoming::Pong => {}
            Incoming::Subscribe { id, payload } => return self.subscribe(id, payload).await,
            Incoming::Complete { id } => {
                self.streams.remove(&id);
                // The legacy protocol confirms a `stop`.
                if self.operations.remove(&id).is_some() && self.protocol == Protocol::Legacy {
                    self.outbox.json(json!({"type": "complete", "id": id})).await?;
                }
            }
            Incoming::Terminate => return Ok(Close::new(1000, "Normal closure")),
        }
        Ok(None)
    }

    /// `connection_init`: signs the socket in and acknowledges, or closes it.
    async fn init(&mut self, payload: Option<Value>) -> Result<Option<Close>, SlowClient> {
        if self.init_received {
            return Ok(Close::new(4429, "Too many initialisation requests"));
        }
        self.init_received = true;
        let (principal, credential) =
            match authorize_init(&self.state.auth, self.origin_allowed, payload.as_ref()).await {
                Ok(signed_in) => signed_in,
                Err(InitRefusal::BadPayload) => {
                    return self.refuse_init(4400, "connection_init payload must be an object").await;
                }
                Err(InitRefusal::Forbidden) => return self.refuse_init(4403, "Forbidden").await,
                Err(InitRefusal::Internal(cause)) => {
                    // The surrounding span carries the request id.
                    tracing::error!(error = %cause, "connection_init could not sign in");
                    return self.refuse_init(1011, "Internal server error").await;
                }
            };
        let key_prefix = match &principal {
            Principal::ApiKey(key) => Some(key.prefix.clone()),
            _ => None,
        };
        let user_id = principal.user_id().map(str::to_string);
        self.watching = Some(self.state.bus.access().watch(user_id, key_prefix, self.recheck_sender.clone()));
        self.credential = credential;
        self.signed_in_as(principal);
        self.acked = true;
        self.outbox.json(json!({"type": "connection_ack"})).await?;
        if self.protocol == Protocol::Legacy {
            self.outbox.json(self.protocol.keepalive()).await?;
        }
        Ok(None)
    }

    /// Closes with `code`; the legacy protocol first says why in a `connection_error`.
    async fn refuse_init(&mut self, code: u16, reason: &str) -> Result<Option<Close>, SlowClient> {
        if self.protocol == Protocol::Legacy {
            self.outbox.json(json!({"type": "connection_error", "payload": {"message": reason}})).await?;
        }
        Ok(Close::new(code, reason))
    }

    /// What operations started from now on see, and when the socket closes.
    fn signed_in_as(&mut self, principal: Principal) {
        self.expires = principal.expires_at().map(|at| {
            let left = (at - Utc::now()).to_std().unwrap_or_default();
            tokio::time::Instant::now() + left
        });
        let mut data = Data::default();
        data.insert(self.meta.clone());
        data.insert(principal.clone());
        data.insert(CountedBySocket);
        self.session = Arc::new(data);
        self.principal = principal;
    }

    /// `subscribe` (the legacy `start`): runs the operation, unless the socket already runs as
    /// many as it may (an `error` for this one; the others go on).
    async fn subscribe(&mut self, id: String, payload: SubscribePayload) -> Result<Option<Close>, SlowClient> {
        if !self.acked {
            return Ok(Close::new(4401, "Unauthorized"));
        }
        if id.is_empty() {
            return Ok(Close::new(4400, "Invalid message received: empty id"));
        }
        if self.operations.contains_key(&id) {
            return Ok(Some(Close::Code(4409, format!("Subscriber for {id} already exists"))));
        }
        if self.operations.len() >= self.most_operations {
            let most = self.most_operations;
            let refused = AppError::RateLimited {
                message: format!(
                    "This connection already runs {most} operations, the most ENSEMBLE_WS_MAX_SUBSCRIPTIONS allows: complete one first."
                ),
                retry_after_secs: None,
            };
            self.outbox.json(json!({"type": "error", "id": id, "payload": [error_json(refused)]})).await?;
            return Ok(None);
        }
        let (stream, recheck) = self.start(&payload, true);
        self.streams.insert(id.clone(), stream);
        let open = self.metrics.subscription_opened();
        let operation = Operation { payload, shared: None, answered: false, recheck, _open: open };
        self.operations.insert(id, operation);
        Ok(None)
    }

    /// Runs an operation's own stream; with `share`, one that asks no extensions may later join a
    /// shared stream. Answers where its resolver leaves how to check its access again.
    fn start(&self, payload: &SubscribePayload, share: bool) -> (OperationStream, RecheckSlot) {
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
        let recheck = RecheckSlot::default();
        // DataLoaders cache what they load: one set per operation, never per socket.
        let request = request.data(Loaders::new(&self.state.db)).data(operation).data(recheck.clone());
        let responses = self.schema.execute_stream_with_session_data(request, self.session.clone());
        let steps = responses
            .enumerate()
            .map(|(index, response)| Step::Response(index, Box::new(response)))
            .chain(futures_util::stream::once(async { Step::End }));
        let stream = match shareable {
            Some(shareable) => {
                let shareable = futures_util::stream::once(shareable)
                    .filter_map(|declared| async move { declared.ok().map(Step::Shareable) });
                futures_util::stream::select(steps, shareable).boxed()
            }
            None => steps.boxed(),
        };
        (stream, recheck)
    }

    /// The operation's stream ended: `complete`.
    async fn complete(&mut self, id: String) -> Result<(), SlowClient> {
        self.operations.remove(&id);
        self.streams.remove(&id);
        self.outbox.json(json!({"type": "complete", "id": id})).await
    }

    /// Sends one response. On `graphql-transport-ws`, an operation refused before it ran, or a
    /// subscription whose stream failed after its first result, is an `error` message (and no
    /// `complete`); anything else is `next` (the legacy `data`).
    async fn forward(&mut self, id: String, index: usize, response: Box<Response>) -> Result<(), SlowClient> {
        let failed = response.data == async_graphql::Value::Null && !response.errors.is_empty();
        let refused = self.protocol == Protocol::Transport
            && failed
            && (index > 0 || response.errors.iter().all(|e| e.path.is_empty()));
        if refused {
            self.operations.remove(&id);
            self.streams.remove(&id);
            let errors = serde_json::to_value(&response.errors).unwrap_or_default();
            return self.outbox.json(json!({"type": "error", "id": id, "payload": errors})).await;
        }
        if let Some(operation) = self.operations.get_mut(&id) {
            operation.answered = true;
        }
        let next = Next { kind: self.protocol.result_type(), id: &id, payload: &response };
        let text = serde_json::to_string(&next).unwrap_or_default();
        self.outbox.send(Message::Text(text.into())).await
    }
}

/// An error as a GraphQL error object: its message and `extensions.code`, no location.
fn error_json(error: AppError) -> Value {
    use async_graphql::ErrorExtensions;
    let error = error.extend();
    let mut server_error = ServerError::new(error.message, None);
    server_error.extensions = error.extensions;
    serde_json::to_value(server_error).unwrap_or_default()
}
