//! The open websockets of this instance that must hear when access may have changed, each
//! registered under the user (and API key) it is signed in as. A change is told to the sockets it
//! may concern, and [`Watchers::changed`] waits, a moment at most, until each has checked its
//! subscriptions again: once a write that takes access away is answered, its subscriptions have
//! ended. Changes made on another instance arrive as cache invalidations (`cache::Caches::apply`),
//! which that instance waits for too. See docs/transport.md.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

/// Longest wait for the sockets a change concerns to have checked again.
const WAIT: Duration = Duration::from_secs(1);

/// A committed write after which an open subscription may no longer be allowed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AccessChange {
    /// `user`'s membership of `team` changed: removed, or given another role.
    Member { team_id: String, user_id: String },
    /// Anyone's access to a team may have changed: deleted, or made private.
    Team(String),
    /// A user's own standing changed: global role, deletion.
    User(String),
    /// An API key was revoked or rotated: its prefix.
    Key(String),
    /// This instance may have missed changes (it was out of touch with the others): every
    /// socket checks everything again.
    Missed,
}

/// What a socket is told: check again. Dropping it says the socket is done.
#[derive(Debug)]
pub struct Recheck {
    pub change: Arc<AccessChange>,
    _done: oneshot::Sender<()>,
}

/// Who a socket is signed in as, for telling it the changes that concern it.
struct Watcher {
    /// The user (for an API key, its owner); none for an anonymous socket.
    user_id: Option<String>,
    /// The API key's prefix, when signed in with one.
    key_prefix: Option<String>,
    tell: mpsc::UnboundedSender<Recheck>,
}

impl Watcher {
    fn concerned_by(&self, change: &AccessChange) -> bool {
        match change {
            AccessChange::Member { user_id, .. } | AccessChange::User(user_id) => {
                self.user_id.as_ref() == Some(user_id)
            }
            AccessChange::Team(_) | AccessChange::Missed => true,
            AccessChange::Key(prefix) => self.key_prefix.as_ref() == Some(prefix),
        }
    }
}

/// The sockets of this instance that hold subscriptions.
#[derive(Default)]
pub struct Watchers {
    sockets: Mutex<HashMap<u64, Watcher>>,
    next: AtomicU64,
}

/// A socket's registration; dropping it unregisters.
pub struct Watching {
    watchers: Arc<Watchers>,
    number: u64,
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.watchers.locked().remove(&self.number);
    }
}

impl Watchers {
    fn locked(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Watcher>> {
        self.sockets.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a socket signed in as `user_id` (through the API key `key_prefix`); the changes
    /// that concern it arrive on `tell` until the returned registration is dropped.
    pub fn watch(
        self: &Arc<Self>,
        user_id: Option<String>,
        key_prefix: Option<String>,
        tell: mpsc::UnboundedSender<Recheck>,
    ) -> Watching {
        let number = self.next.fetch_add(1, Ordering::Relaxed);
        self.locked().insert(number, Watcher { user_id, key_prefix, tell });
        Watching { watchers: self.clone(), number }
    }

    /// Tells every socket `change` concerns, and waits (at most `WAIT`) until each has checked
    /// its subscriptions again.
    pub async fn changed(&self, change: AccessChange) {
        let change = Arc::new(change);
        let mut pending = Vec::new();
        for watcher in self.locked().values().filter(|w| w.concerned_by(&change)) {
            let (done, checked) = oneshot::channel();
            if watcher.tell.send(Recheck { change: change.clone(), _done: done }).is_ok() {
                pending.push(checked);
            }
        }
        let told = pending.len();
        let all = futures_util::future::join_all(pending);
        if tokio::time::timeout(WAIT, all).await.is_err() {
            tracing::warn!(sockets = told, ?change, "not every websocket checked its subscriptions again in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::sync::mpsc;

    use super::{AccessChange, Watchers};

    fn member(team: &str, user: &str) -> AccessChange {
        AccessChange::Member { team_id: team.into(), user_id: user.into() }
    }

    #[tokio::test]
    async fn a_change_reaches_the_sockets_it_concerns_and_waits_for_them() {
        let watchers = Arc::new(Watchers::default());
        let (bob_tx, mut bob) = mpsc::unbounded_channel();
        let (key_tx, mut key) = mpsc::unbounded_channel();
        let (anon_tx, mut anon) = mpsc::unbounded_channel();
        let _bob = watchers.watch(Some("bob".into()), None, bob_tx);
        let _key = watchers.watch(Some("bob".into()), Some("abcd".into()), key_tx);
        let _anon = watchers.watch(None, None, anon_tx);

        let change = tokio::spawn({
            let watchers = watchers.clone();
            async move { watchers.changed(member("t1", "bob")).await }
        });
        let (told_bob, told_key) = (bob.recv().await.unwrap(), key.recv().await.unwrap());
        assert_eq!(*told_bob.change, member("t1", "bob"));
        assert!(!change.is_finished(), "it waits for the sockets to check again");
        drop((told_bob, told_key));
        change.await.unwrap();
        assert!(anon.try_recv().is_err(), "an anonymous socket is no member");

        let (_, told) =
            tokio::join!(watchers.changed(AccessChange::Key("abcd".into())), async { key.recv().await.is_some() });
        assert!(told && bob.try_recv().is_err(), "only the key's sockets");
        let everyone = async { (bob.recv().await.is_some(), key.recv().await.is_some(), anon.recv().await.is_some()) };
        let (_, told) = tokio::join!(watchers.changed(AccessChange::Team("t1".into())), everyone);
        assert_eq!(told, (true, true, true), "a team's change concerns every socket");
    }

    #[tokio::test]
    async fn a_socket_gone_is_not_waited_for() {
        let watchers = Arc::new(Watchers::default());
        let (tx, rx) = mpsc::unbounded_channel();
        let watching = watchers.watch(Some("bob".into()), None, tx);
        drop(rx);
        tokio::time::timeout(std::time::Duration::from_millis(100), watchers.changed(AccessChange::User("bob".into())))
            .await
            .expect("a closed socket is skipped");
        drop(watching);
        assert!(watchers.locked().is_empty());
    }
}
