//! The event bus: what happens to runs, as it happens, and the notices instances owe each
//! other. In-process (tokio channels) by default; with `REDIS_URL` every message also goes to
//! the other instances over Redis pub/sub (`redis`), so a subscriber on one instance sees the
//! runs of all. Subscribers filter by run or team; one that falls behind by more than the
//! channel holds skips ahead rather than holding memory. The open websockets that must hear
//! when access may have changed are registered here too (`access`).

mod access;
mod redis;

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

pub use self::{
    access::{AccessChange, Recheck, Watchers, Watching},
    redis::Link,
};
use crate::domain::{Invalidation, RunEvent};

/// Events kept for subscribers that have not read them yet.
const CAPACITY: usize = 4096;

/// What one instance tells the others (never its own subscribers: it acts on these itself).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Notice {
    /// A write committed that makes cached values stale.
    Invalidate(Invalidation),
    /// `cancelRun` for a run this instance may be executing.
    CancelRun(String),
    /// This instance may have missed notices (its link to the others was down): drop every
    /// cached value. Never sent over the wire.
    Resync,
}

/// A notice from another instance. Once it is acted on, `EventBus::acted_on` tells the
/// sender, which may be waiting for it.
#[derive(Clone, Debug)]
pub struct Received {
    pub notice: Notice,
    /// The sender and its number for the notice, when it waits.
    reply_to: Option<(String, u64)>,
}

/// One message on the bus.
#[derive(Debug, Serialize, Deserialize)]
enum Message {
    Run(Box<RunEvent>),
    /// An audited mutation has ended (`auditLogAdded` followers re-read the log).
    AuditWritten,
    /// With `ack`, the sender waits for an `Ack` of it from every instance.
    Notice {
        notice: Notice,
        ack: Option<u64>,
    },
    /// The instance `to` waits for this: its notice `ack` was acted on.
    Ack {
        to: String,
        ack: u64,
    },
}

/// Whether the bus reaches the other instances, for `/readyz`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reach {
    /// No `REDIS_URL`: this instance is the only one.
    Local,
    /// Connected to Redis.
    Shared,
    /// `REDIS_URL` is set but Redis cannot be used: subscribers see this instance's events only.
    Degraded(String),
}

pub struct EventBus {
    runs: broadcast::Sender<Arc<RunEvent>>,
    audit: watch::Sender<()>,
    notices: broadcast::Sender<Received>,
    link: Option<Arc<Link>>,
    access: Arc<Watchers>,
}

impl EventBus {
    /// An in-process bus.
    pub fn local() -> Arc<Self> {
        Arc::new(Self::new(None))
    }

    /// A bus shared over Redis at `url`, with channel and keys under `namespace`; it connects
    /// (and reconnects) in the background, delivering to local subscribers meanwhile.
    pub fn shared(url: &str, namespace: &str) -> Result<Arc<Self>, String> {
        let link = Link::new(url, namespace)?;
        let bus = Arc::new(Self::new(Some(link.clone())));
        link.start(Arc::downgrade(&bus));
        Ok(bus)
    }

    fn new(link: Option<Arc<Link>>) -> Self {
        Self {
            runs: broadcast::channel(CAPACITY).0,
            audit: watch::channel(()).0,
            notices: broadcast::channel(CAPACITY).0,
            link,
            access: Arc::default(),
        }
    }

    /// Sends `event` to every subscriber, here and on the other instances.
    pub fn publish(&self, event: RunEvent) {
        if let Some(link) = &self.link {
            link.send(&Message::Run(Box::new(event.clone())));
        }
        self.deliver_run(event);
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunEvent>> {
        self.runs.subscribe()
    }

    /// Wakes the followers of the audit log (`auditLogAdded`) when a mutation has ended, its
    /// transaction committed or rolled back; they then read what was committed. A hint, not
    /// the rows: followers also read every second, which covers rows written outside GraphQL.
    pub fn audit_written(&self) {
        if let Some(link) = &self.link {
            link.send(&Message::AuditWritten);
        }
        self.audit.send_replace(());
    }

    pub fn audit_followers(&self) -> watch::Receiver<()> {
        self.audit.subscribe()
    }

    /// Tells the other instances (this one has acted already).
    pub fn tell_others(&self, notice: Notice) {
        if let Some(link) = &self.link {
            link.send(&Message::Notice { notice, ack: None });
        }
    }

    /// Tells the other instances and waits until every one listening has acted on it (at most
    /// a second), so that a write answered here is seen fresh by the next request anywhere.
    pub async fn tell_others_and_wait(&self, notice: Notice) {
        if let Some(link) = &self.link {
            link.send_and_wait(notice).await;
        }
    }

    /// Notices from the other instances, and `Resync` after this one lost touch with them.
    pub fn notices(&self) -> broadcast::Receiver<Received> {
        self.notices.subscribe()
    }

    /// Tells the sender of `received` that this instance has acted on it.
    pub fn acted_on(&self, received: &Received) {
        if let (Some(link), Some((to, ack))) = (&self.link, &received.reply_to) {
            link.send(&Message::Ack { to: to.clone(), ack: *ack });
        }
    }

    /// The sockets of this instance to tell when access may have changed.
    pub fn access(&self) -> &Arc<Watchers> {
        &self.access
    }

    pub fn reach(&self) -> Reach {
        match &self.link {
            None => Reach::Local,
            Some(link) => link.reach(),
        }
    }

    /// The Redis link, when configured (shared rate limits use its connection).
    pub fn link(&self) -> Option<&Arc<Link>> {
        self.link.as_ref()
    }

    fn deliver_run(&self, event: RunEvent) {
        if self.runs.receiver_count() > 0 {
            let _ = self.runs.send(Arc::new(event));
        }
    }

    /// A message from the instance `from` (acknowledgements are the link's own business).
    fn deliver(&self, message: Message, from: String) {
        match message {
            Message::Run(event) => self.deliver_run(*event),
            Message::AuditWritten => {
                self.audit.send_replace(());
            }
            Message::Notice { notice, ack } => {
                let _ = self.notices.send(Received { notice, reply_to: ack.map(|ack| (from, ack)) });
            }
            Message::Ack { .. } => {}
        }
    }

    /// After this instance was out of touch: it may have missed notices.
    fn resync(&self) {
        let _ = self.notices.send(Received { notice: Notice::Resync, reply_to: None });
    }
}
