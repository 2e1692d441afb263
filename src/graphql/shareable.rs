//! How a subscription resolver says its stream may be shared between sockets: the marker a
//! socket puts in an operation's data, the resolver's call that declares the stream shareable,
//! and the lulls the stream marks. The sharing itself is the HTTP layer's (`http::sharing`).

use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use async_graphql::Context;
use tokio::sync::oneshot;

/// In a socket operation's request data: how its resolver says the operation may be shared.
pub struct SocketOperation {
    share: Mutex<Option<oneshot::Sender<Lull>>>,
}

impl SocketOperation {
    /// An operation that may join a shared stream; the receiver completes when its resolver
    /// declares it shareable, with the lulls its stream will mark.
    pub fn shareable() -> (Self, oneshot::Receiver<Lull>) {
        let (tx, rx) = oneshot::channel();
        (Self { share: Mutex::new(Some(tx)) }, rx)
    }

    /// An operation that runs on its own.
    pub fn alone() -> Self {
        Self { share: Mutex::new(None) }
    }
}

/// In a socket's session data: the socket counts its open operations itself (a shared operation
/// has no stream of its own to hold the count).
pub struct CountedBySocket;

/// Called by a subscription resolver once the caller has passed its checks, when the stream it
/// returns, and every field that can be selected under it, answer the same for every caller who
/// passes them. Answers the [`Lull`] its stream may mark when the operation may be shared;
/// none when it runs on its own (nothing would read the marks).
pub fn shareable(ctx: &Context<'_>) -> Option<Lull> {
    let operation = ctx.data_opt::<SocketOperation>()?;
    let share = operation.share.lock().unwrap_or_else(PoisonError::into_inner).take()?;
    let lull = Lull::default();
    share.send(lull.clone()).ok()?;
    Some(lull)
}

/// A shareable stream's word that its events pause: nothing more is expected soon (for
/// `teamActivity`, no run of the team is under way). Marked by the stream before it yields its
/// last event before the pause, so that the event's batch is written at once.
#[derive(Clone, Default)]
pub struct Lull(Arc<AtomicU64>);

impl Lull {
    pub fn mark(&self) {
        self.0.fetch_add(1, Ordering::Release);
    }

    /// Whether a lull was marked since `seen` marks; updates `seen`.
    pub fn since(&self, seen: &mut u64) -> bool {
        let marks = self.0.load(Ordering::Acquire);
        std::mem::replace(seen, marks) != marks
    }
}
