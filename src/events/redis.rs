//! The bus over Redis: one pub/sub channel per namespace (`<namespace>:bus`). Each instance
//! publishes what happens on it and delivers what the others publish. A supervisor task
//! connects, pings every second, and after an outage reconnects on its own (waiting 100 ms,
//! doubling to 2 s, between tries); meanwhile the bus is local, `/readyz` says `degraded`,
//! and messages published here reach this instance only. Back in touch, the instance drops
//! its caches, since it may have missed invalidations.

use std::{
    sync::{Arc, Weak},
    time::Duration,
};

use futures_util::StreamExt;
use redis::aio::{MultiplexedConnection, PubSub};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use super::{EventBus, Message, Notice, Reach};

/// Longest wait for Redis to accept a connection or answer a command.
const TIMEOUT: Duration = Duration::from_secs(1);
const PING_EVERY: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);
/// Messages waiting to be published; past it, new ones reach this instance only.
const OUTBOX: usize = 16_384;
/// Messages sent to Redis in one round trip.
const BATCH: usize = 256;

#[derive(Clone)]
enum State {
    Connecting,
    Up(MultiplexedConnection),
    Down(String),
}

/// What goes over the wire: a message and the instance that sent it (which ignores its own).
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    message: Message,
}

/// This instance's connection to the others through Redis.
pub struct Link {
    client: redis::Client,
    /// `host:port` of the server, for messages (the URL may hold a password).
    server: String,
    namespace: String,
    channel: String,
    instance: String,
    outbox: mpsc::Sender<Vec<u8>>,
    pending: std::sync::Mutex<Option<mpsc::Receiver<Vec<u8>>>>,
    state: watch::Sender<State>,
}

impl Link {
    pub(super) fn new(url: &str, namespace: &str) -> Result<Arc<Self>, String> {
        let client = redis::Client::open(url).map_err(|e| format!("REDIS_URL is not a Redis URL: {e}"))?;
        let info = client.get_connection_info();
        let server = info.addr().to_string();
        let (outbox, pending) = mpsc::channel(OUTBOX);
        Ok(Arc::new(Self {
            client,
            server,
            namespace: namespace.to_string(),
            channel: format!("{namespace}:bus"),
            instance: uuid::Uuid::new_v4().to_string(),
            outbox,
            pending: std::sync::Mutex::new(Some(pending)),
            state: watch::channel(State::Connecting).0,
        }))
    }

    /// Starts the supervisor; it stops once the bus is dropped.
    pub(super) fn start(self: &Arc<Self>, bus: Weak<EventBus>) {
        let Some(outbox) = self.pending.lock().ok().and_then(|mut p| p.take()) else {
            return;
        };
        tokio::spawn(self.clone().supervise(bus, outbox));
    }

    /// The prefix of every channel and key of this deployment.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// A connection for commands, while Redis is up.
    pub fn connection(&self) -> Option<MultiplexedConnection> {
        match &*self.state.borrow() {
            State::Up(connection) => Some(connection.clone()),
            _ => None,
        }
    }

    pub(super) fn reach(&self) -> Reach {
        match &*self.state.borrow() {
            State::Up(_) => Reach::Shared,
            State::Connecting => Reach::Degraded(format!("connecting to Redis at {}", self.server)),
            State::Down(reason) => Reach::Degraded(reason.clone()),
        }
    }

    /// Waits (at most `limit`) for the first attempt to connect to end either way.
    pub async fn settled(&self, limit: Duration) {
        let mut state = self.state.subscribe();
        let _ = tokio::time::timeout(limit, state.wait_for(|s| !matches!(s, State::Connecting))).await;
    }

    /// How many other instances listen on the bus; none when Redis cannot tell.
    pub async fn others_listening(&self) -> Option<u64> {
        let mut connection = self.connection()?;
        let mut numsub = redis::cmd("PUBSUB");
        numsub.arg("NUMSUB").arg(&self.channel);
        let answer = tokio::time::timeout(TIMEOUT, numsub.query_async(&mut connection)).await;
        let (_, listening): (String, u64) = answer.ok()?.ok()?;
        Some(listening.saturating_sub(1))
    }

    /// Queues `message` for the other instances; dropped while Redis is down.
    pub(super) fn send(&self, message: &Message) {
        if !matches!(*self.state.borrow(), State::Up(_)) {
            return;
        }
        let envelope = Envelope { from: self.instance.clone(), message: message.clone() };
        match serde_json::to_vec(&envelope) {
            Ok(bytes) => {
                if self.outbox.try_send(bytes).is_err() {
                    tracing::warn!("the Redis outbox is full: a message reaches this instance only");
                }
            }
            Err(error) => tracing::error!(%error, "cannot encode a bus message"),
        }
    }

    async fn supervise(self: Arc<Self>, bus: Weak<EventBus>, mut outbox: mpsc::Receiver<Vec<u8>>) {
        let mut wait = FIRST_RETRY;
        let mut missed = false;
        while bus.strong_count() > 0 {
            let reason = match self.connect().await {
                Ok((connection, mut pubsub)) => {
                    wait = FIRST_RETRY;
                    // Messages queued before the outage are stale by now.
                    while outbox.try_recv().is_ok() {}
                    self.state.send_replace(State::Up(connection.clone()));
                    if missed && let Some(bus) = bus.upgrade() {
                        let _ = bus.notices.send(Notice::Resync);
                    }
                    tracing::info!(server = %self.server, channel = %self.channel, "the event bus is shared over Redis");
                    self.pump(connection, &mut pubsub, &mut outbox, &bus).await
                }
                Err(reason) => reason,
            };
            let was_up = matches!(*self.state.borrow(), State::Up(_) | State::Connecting);
            if was_up && bus.strong_count() > 0 {
                tracing::warn!(
                    %reason,
                    "Redis is unavailable: events and cache invalidations reach this instance only, \
                     rate limits are counted here; retrying"
                );
            }
            self.state.send_replace(State::Down(reason));
            missed = true;
            tokio::time::sleep(wait).await;
            wait = (wait * 2).min(LAST_RETRY);
        }
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, PubSub), String> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT));
        let connection = self.client.get_multiplexed_async_connection_with_config(&config).await;
        let connection = connection.map_err(|e| self.unavailable(&e))?;
        let mut pubsub = tokio::time::timeout(TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| self.unavailable(&"no answer within 1 s"))?
            .map_err(|e| self.unavailable(&e))?;
        tokio::time::timeout(TIMEOUT, pubsub.subscribe(&self.channel))
            .await
            .map_err(|_| self.unavailable(&"no answer within 1 s"))?
            .map_err(|e| self.unavailable(&e))?;
        Ok((connection, pubsub))
    }

    /// Publishes the outbox and delivers what arrives until Redis fails; answers why.
    async fn pump(
        &self,
        mut connection: MultiplexedConnection,
        pubsub: &mut PubSub,
        outbox: &mut mpsc::Receiver<Vec<u8>>,
        bus: &Weak<EventBus>,
    ) -> String {
        let mut arrivals = pubsub.on_message();
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            tokio::select! {
                arrival = arrivals.next() => {
                    let (Some(arrival), Some(bus)) = (arrival, bus.upgrade()) else {
                        return self.unavailable(&"the connection closed");
                    };
                    self.receive(&bus, arrival.get_payload_bytes());
                }
                Some(first) = outbox.recv() => {
                    let mut batch = redis::pipe();
                    batch.cmd("PUBLISH").arg(&self.channel).arg(first).ignore();
                    for _ in 1..BATCH {
                        let Ok(next) = outbox.try_recv() else { break };
                        batch.cmd("PUBLISH").arg(&self.channel).arg(next).ignore();
                    }
                    if let Err(error) = batch.query_async::<()>(&mut connection).await {
                        return self.unavailable(&error);
                    }
                }
                _ = ping.tick() => {
                    if let Err(error) = redis::cmd("PING").query_async::<String>(&mut connection).await {
                        return self.unavailable(&error);
                    }
                    if bus.strong_count() == 0 {
                        return "the server is stopping".into();
                    }
                }
            }
        }
    }

    fn receive(&self, bus: &EventBus, payload: &[u8]) {
        match serde_json::from_slice::<Envelope>(payload) {
            Ok(envelope) if envelope.from != self.instance => bus.deliver(envelope.message),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, channel = %self.channel, "ignored a message the bus cannot read"),
        }
    }

    fn unavailable(&self, why: &dyn std::fmt::Display) -> String {
        format!("Redis at {} is unavailable: {why}", self.server)
    }
}
