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

/// Longest wait for Redis to accept a connection or answer a command in a request.
const TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for an answer on a working link before it counts as lost: generous, because a
/// server busy fanning out events can be slow to read the answer, and a link dropped for that
/// would lose events rather than save any.
const LINK_TIMEOUT: Duration = Duration::from_secs(10);
const PING_EVERY: Duration = Duration::from_secs(1);
const FIRST_RETRY: Duration = Duration::from_millis(100);
const LAST_RETRY: Duration = Duration::from_secs(2);
/// Messages waiting to be published; past it, new ones reach this instance only.
const OUTBOX: usize = 16_384;
/// Longest wait for the other instances to act on a notice.
const ACK_WAIT: Duration = Duration::from_secs(1);
/// Messages sent to Redis in one round trip.
const BATCH: usize = 256;

#[derive(Clone)]
enum State {
    Connecting,
    Up(MultiplexedConnection),
    Down(String),
}

/// What goes over the wire: a message and the instance that sent it (which ignores its own).
#[derive(Serialize)]
struct Outgoing<'a> {
    from: &'a str,
    message: &'a Message,
}

#[derive(Deserialize)]
struct Incoming {
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
    /// Notices this instance waits to hear acted on, by number.
    waiting: std::sync::Mutex<std::collections::HashMap<u64, mpsc::UnboundedSender<()>>>,
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
            waiting: std::sync::Mutex::default(),
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

    /// Publishes `notice` at once and waits (at most `ACK_WAIT`) until every other instance
    /// that received it has acted on it; returns at once while Redis is down.
    pub(super) async fn send_and_wait(&self, notice: Notice) {
        let Some(mut connection) = self.connection() else {
            return;
        };
        let ack = rand::random::<u64>();
        let (acks, mut acked) = mpsc::unbounded_channel();
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(ack, acks);
        }
        let message = Message::Notice { notice, ack: Some(ack) };
        let expected = match serde_json::to_vec(&Outgoing { from: &self.instance, message: &message }) {
            Ok(bytes) => {
                let mut publish = redis::cmd("PUBLISH");
                publish.arg(&self.channel).arg(bytes);
                // Every instance listening received it, this one included.
                let receivers = tokio::time::timeout(TIMEOUT, publish.query_async::<u64>(&mut connection)).await;
                receivers.ok().and_then(Result::ok).unwrap_or(0).saturating_sub(1)
            }
            Err(error) => {
                tracing::error!(%error, "cannot encode a bus message");
                0
            }
        };
        let deadline = tokio::time::Instant::now() + ACK_WAIT;
        let mut heard = 0;
        while heard < expected && tokio::time::timeout_at(deadline, acked.recv()).await.ok().flatten().is_some() {
            heard += 1;
        }
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(&ack);
        }
        if heard < expected {
            tracing::warn!(
                heard,
                expected,
                "not every instance confirmed a notice in time; the rest catch up by expiry"
            );
        }
    }

    fn acknowledged(&self, ack: u64) {
        if let Some(acks) = self.waiting.lock().ok().and_then(|waiting| waiting.get(&ack).cloned()) {
            let _ = acks.send(());
        }
    }

    /// Queues `message` for the other instances; dropped while Redis is down.
    pub(super) fn send(&self, message: &Message) {
        if !matches!(*self.state.borrow(), State::Up(_)) {
            return;
        }
        match serde_json::to_vec(&Outgoing { from: &self.instance, message }) {
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
                        bus.resync();
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
            .set_response_timeout(Some(LINK_TIMEOUT));
        let connection = self.client.get_multiplexed_async_connection_with_config(&config).await;
        let connection = connection.map_err(|e| self.unavailable(&e))?;
        let mut pubsub = tokio::time::timeout(LINK_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| self.unavailable(&"no answer within 10 s"))?
            .map_err(|e| self.unavailable(&e))?;
        tokio::time::timeout(LINK_TIMEOUT, pubsub.subscribe(&self.channel))
            .await
            .map_err(|_| self.unavailable(&"no answer within 10 s"))?
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
        match serde_json::from_slice::<Incoming>(payload) {
            Ok(Incoming { message: Message::Ack { to, ack }, .. }) if to == self.instance => self.acknowledged(ack),
            Ok(incoming) if incoming.from != self.instance => bus.deliver(incoming.message, incoming.from),
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, channel = %self.channel, "ignored a message the bus cannot read"),
        }
    }

    fn unavailable(&self, why: &dyn std::fmt::Display) -> String {
        format!("Redis at {} is unavailable: {why}", self.server)
    }
}
