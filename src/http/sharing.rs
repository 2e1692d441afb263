//! Subscriptions shared between sockets. `graphql-transport-ws` operations with the same document,
//! operation name and variables, whose resolver declares its stream the same for every caller it
//! lets in (`shareable`), run once: each event's payload is serialised once and written to every
//! subscriber's socket, straight or through its queue (`wire`). Every subscriber still runs its
//! own operation up to and through the resolver (parse, validation, limits, rate limit, access
//! check), so sharing changes what an event costs, never who sees it.
//!
//! Events that come close together are written together; a resolver that knows when its events
//! pause (a [`Lull`]) has what it gathered written at once.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use async_graphql::Response;
use futures_util::{StreamExt, stream::BoxStream};
use tokio::{
    sync::mpsc,
    task::{AbortHandle, JoinHandle, unconstrained},
};

use super::wire::{Outgoing, Wire};
use crate::graphql::shareable::Lull;

/// How long a shared stream waits after an event for the next one to queue it with (a run's
/// events come a few milliseconds apart at most, database round trips included), and at most
/// after the first of a batch.
const BATCH_GAP: Duration = Duration::from_millis(2);
const BATCH_WINDOW: Duration = Duration::from_millis(10);
/// A stream with this many members or more waits longer, `CROWD_GAP` and `CROWD_WINDOW`: each
/// batch costs a write to every member's socket, so one run's events split over two batches
/// cost more CPU than the wait costs latency (a run on PostgreSQL makes its events over several
/// milliseconds, one round trip each, and a busy machine stretches the round trips). A run's
/// end is a lull (`Lull`), so its last batch does not wait out the gap.
const CROWD: usize = 1000;
const CROWD_GAP: Duration = Duration::from_millis(15);
const CROWD_WINDOW: Duration = Duration::from_millis(20);
/// Most events queued together, as one item of a socket's queue.
const BATCH_MAX: usize = 32;
/// A group's members are kept in this many shards; a crowd's are written by a task per shard,
/// so that its writes are spread over the cores.
const SHARDS: usize = 16;
/// Sockets written to in one turn: between turns the writing task yields, so that the runtime
/// reads the network and runs other tasks, such as the run making the next events.
const TURN: usize = 64;

fn locked<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What a shared stream tells a subscriber's socket loop, in order with the events it queued.
pub enum StreamNotice {
    /// Events the socket's queue had no room for: the loop queues them, waiting as for any
    /// other message (and so it does every later batch of this member).
    Events { member: u64, events: Outgoing },
    /// The stream ended. `late`: the member joined after its last event and got nothing, so it
    /// should run its operation again on its own (a run that ended just then answers its final
    /// event).
    Ended { member: u64, late: bool },
}

/// One socket operation joining a shared stream.
pub struct Subscriber {
    /// The operation's id on its socket.
    pub id: String,
    /// The type of its socket's response messages: `next`, or the legacy protocol's `data`.
    pub result_type: &'static str,
    pub wire: Wire,
    pub notices: mpsc::UnboundedSender<StreamNotice>,
}

/// The shared streams of this instance, by operation key.
#[derive(Default)]
pub struct Groups {
    live: Mutex<HashMap<String, Arc<Group>>>,
    members: AtomicU64,
}

struct Group {
    key: String,
    /// Members by `number % SHARDS`; never two shards locked at once.
    shards: [Mutex<Members>; SHARDS],
    task: Mutex<Option<AbortHandle>>,
}

#[derive(Default)]
struct Members {
    list: HashMap<u64, Member>,
    /// Events delivered to this shard so far.
    delivered: u64,
}

struct Member {
    /// `{"type":"next","id":…,"payload":` for this member's operation id.
    prefix: Arc<str>,
    wire: Wire,
    /// Set once the socket could take an event neither straight nor in its queue: from then on
    /// events go through `notices`, so they stay in order with those already there.
    behind: bool,
    notices: mpsc::UnboundedSender<StreamNotice>,
    /// `delivered` when it joined.
    joined_at: u64,
}

impl Member {
    fn send(&mut self, number: u64, payloads: &Arc<[String]>) {
        let rest = if self.behind {
            payloads.clone()
        } else {
            match self.wire.write_now(&self.prefix, payloads) {
                0 => payloads.clone(),
                written if written == payloads.len() => return,
                written => payloads[written..].into(),
            }
        };
        let events = Outgoing::Events { prefix: self.prefix.clone(), payloads: rest };
        let events = if self.behind {
            events
        } else {
            match self.wire.try_queue(events) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(events)) => events,
            }
        };
        self.behind = true;
        let _ = self.notices.send(StreamNotice::Events { member: number, events });
    }
}

/// A socket operation's place in a shared stream; dropping it leaves.
pub struct Membership {
    groups: Arc<Groups>,
    group: Arc<Group>,
    pub number: u64,
}

impl Groups {
    /// The key operations share a stream under.
    pub fn key(query: &str, operation_name: Option<&str>, variables: Option<&serde_json::Value>) -> String {
        serde_json::json!([query, operation_name, variables]).to_string()
    }

    /// Joins `subscriber` to the stream shared under `key`; when there is none, `own` (the
    /// subscriber's operation, past its resolver, marking its lulls on `lull`) becomes that
    /// stream.
    pub fn join(
        self: &Arc<Self>,
        key: String,
        subscriber: Subscriber,
        own: BoxStream<'static, Response>,
        lull: Lull,
    ) -> Membership {
        let number = self.members.fetch_add(1, Ordering::Relaxed);
        let mut live = locked(&self.live);
        let (group, new) = match live.get(&key) {
            Some(group) => (group.clone(), false),
            None => {
                let group = Arc::new(Group { key: key.clone(), shards: Default::default(), task: Mutex::default() });
                live.insert(key, group.clone());
                (group, true)
            }
        };
        let mut members = group.shard(number);
        let id = serde_json::Value::from(subscriber.id);
        let prefix = format!(r#"{{"type":"{}","id":{id},"payload":"#, subscriber.result_type).into();
        let (wire, notices, joined_at) = (subscriber.wire, subscriber.notices, members.delivered);
        members.list.insert(number, Member { prefix, wire, behind: false, notices, joined_at });
        drop(members);
        // The stream starts once its first member is in. Started before, on another worker, it
        // could write an event it has ready at once to an empty group, had this thread been held
        // up for longer than the batch gap between the spawn and the insert.
        if new {
            let task = tokio::spawn(pump(Arc::downgrade(self), group.clone(), own, lull));
            *locked(&group.task) = Some(task.abort_handle());
        }
        Membership { groups: self.clone(), group, number }
    }

    /// Takes an ended group out of the registry and tells its members.
    fn end(&self, group: &Arc<Group>) {
        let mut live = locked(&self.live);
        if live.get(&group.key).is_some_and(|g| Arc::ptr_eq(g, group)) {
            live.remove(&group.key);
        }
        for shard in &group.shards {
            let mut members = locked(shard);
            let delivered = members.delivered;
            for (number, member) in members.list.drain() {
                let _ =
                    member.notices.send(StreamNotice::Ended { member: number, late: member.joined_at == delivered });
            }
        }
    }
}

/// Runs a shared operation: each response is serialised once and written to every member.
/// Responses that follow each other closely (`BATCH_GAP`, `BATCH_WINDOW`; for a crowd,
/// `CROWD_GAP`, `CROWD_WINDOW`) go together, so each socket is written to once for them all
/// rather than once each; a lull ends a batch at once. A crowd's batch is written by a task per
/// shard while the next batch gathers; each batch waits for the last one's writes, so every
/// member gets them in order.
async fn pump(groups: Weak<Groups>, group: Arc<Group>, mut responses: BoxStream<'static, Response>, lull: Lull) {
    let mut ended = false;
    let mut writing: Vec<JoinHandle<()>> = Vec::new();
    let mut lulls = 0;
    while !ended && let Some(first) = responses.next().await {
        let mut batch = vec![serde_json::to_string(&first).unwrap_or_default()];
        let crowded = group.shards.iter().map(|shard| locked(shard).list.len()).sum::<usize>() >= CROWD;
        let (gap, window) = if crowded { (CROWD_GAP, CROWD_WINDOW) } else { (BATCH_GAP, BATCH_WINDOW) };
        let window = tokio::time::Instant::now() + window;
        while batch.len() < BATCH_MAX && !lull.since(&mut lulls) {
            let until = window.min(tokio::time::Instant::now() + gap);
            match tokio::time::timeout_at(until, responses.next()).await {
                Ok(Some(response)) => batch.push(serde_json::to_string(&response).unwrap_or_default()),
                Ok(None) => {
                    ended = true;
                    break;
                }
                Err(_) => break,
            }
        }
        for shard in writing.drain(..) {
            let _ = shard.await;
        }
        let payloads: Arc<[String]> = batch.into();
        if crowded {
            writing = (0..SHARDS)
                .map(|shard| {
                    let (group, payloads) = (group.clone(), payloads.clone());
                    tokio::spawn(unconstrained(async move { group.deliver(shard, &payloads).await }))
                })
                .collect();
        } else {
            unconstrained(async {
                for shard in 0..SHARDS {
                    group.deliver(shard, &payloads).await;
                }
            })
            .await;
        }
    }
    for shard in writing {
        let _ = shard.await;
    }
    if let Some(groups) = groups.upgrade() {
        groups.end(&group);
    }
}

impl Group {
    fn shard(&self, number: u64) -> MutexGuard<'_, Members> {
        locked(&self.shards[number as usize % SHARDS])
    }

    /// Writes `payloads`, in order, to every member of one shard, `TURN` at a time. A member
    /// that joins meanwhile does not get them, and counts them as delivered before it joined.
    async fn deliver(&self, shard: usize, payloads: &Arc<[String]>) {
        let numbers: Vec<u64> = {
            let mut members = locked(&self.shards[shard]);
            members.delivered += payloads.len() as u64;
            members.list.keys().copied().collect()
        };
        for (turn, numbers) in numbers.chunks(TURN).enumerate() {
            if turn > 0 {
                tokio::task::yield_now().await;
            }
            let mut members = locked(&self.shards[shard]);
            for &number in numbers {
                if let Some(member) = members.list.get_mut(&number) {
                    member.send(number, payloads);
                }
            }
        }
    }
}

impl Membership {
    /// Sends this member's events through its socket's loop from now on (as for a member
    /// behind), so that they wait while the loop checks the member's access again; an event
    /// being written to the socket as this is called is written first.
    pub fn hold(&self) {
        if let Some(member) = self.group.shard(self.number).list.get_mut(&self.number) {
            member.behind = true;
        }
    }
}

impl Drop for Membership {
    fn drop(&mut self) {
        self.group.shard(self.number).list.remove(&self.number);
        let emptied = || self.group.shards.iter().all(|shard| locked(shard).list.is_empty());
        if !emptied() {
            return;
        }
        // Again holding the registry: somebody may have joined meanwhile.
        let mut live = locked(&self.groups.live);
        let current = live.get(&self.group.key).is_some_and(|g| Arc::ptr_eq(g, &self.group));
        if current && emptied() {
            live.remove(&self.group.key);
            if let Some(task) = locked(&self.group.task).take() {
                task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::Arc,
        task::{Context, Waker},
        time::Duration,
    };

    use async_graphql::{Response, Value};
    use axum::extract::ws::Message;
    use futures_util::{StreamExt, stream::BoxStream};
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::UnboundedReceiverStream;

    use super::{Groups, Lull, Membership, SHARDS, StreamNotice, Subscriber, TURN};
    use crate::http::wire::{Outgoing, Wire, testing};

    struct Socket {
        wire: Wire,
        /// What went through the socket's queue.
        queue: mpsc::Receiver<Outgoing>,
        /// What was written straight to the socket.
        frames: mpsc::UnboundedReceiver<Message>,
        notices: mpsc::UnboundedReceiver<StreamNotice>,
        membership: Membership,
    }

    /// Joins a socket that takes every frame to the stream under "key", which must exist: its
    /// own stream is never polled.
    fn join(groups: &Arc<Groups>, id: &str) -> Socket {
        socket(groups, id, true, 8, futures_util::stream::pending().boxed(), Lull::default())
    }

    /// Joins a socket that takes every frame (`taking`), or none, and whose queue holds `room`
    /// items.
    fn socket(
        groups: &Arc<Groups>,
        id: &str,
        taking: bool,
        room: usize,
        own: BoxStream<'static, Response>,
        lull: Lull,
    ) -> Socket {
        let (wire, queue, frames) = testing::wire(taking, room);
        let (notices, notices_rx) = mpsc::unbounded_channel();
        let subscriber = Subscriber { id: id.into(), result_type: "next", wire: wire.clone(), notices };
        let membership = groups.join("key".into(), subscriber, own, lull);
        Socket { wire, queue, frames, notices: notices_rx, membership }
    }

    fn event(n: i32) -> Response {
        Response::new(Value::from_json(serde_json::json!({"n": n})).unwrap())
    }

    fn text(message: Message) -> String {
        match message {
            Message::Text(text) => text.to_string(),
            other => panic!("not text: {other:?}"),
        }
    }

    /// The texts of a queue item, in order.
    fn texts(item: Outgoing) -> Vec<String> {
        match item {
            Outgoing::Message(message) => vec![text(message)],
            Outgoing::Events { prefix, payloads } => {
                payloads.iter().map(|payload| text(Outgoing::next(&prefix, payload))).collect()
            }
            Outgoing::Flush => vec![],
        }
    }

    async fn notice(socket: &mut Socket) -> StreamNotice {
        tokio::time::timeout(Duration::from_secs(5), socket.notices.recv()).await.unwrap().unwrap()
    }

    /// A group fed by the returned sender, with `first` as its first member.
    fn group(
        groups: &Arc<Groups>,
        first: &str,
        taking: bool,
        room: usize,
    ) -> (mpsc::UnboundedSender<Response>, Socket) {
        let (source, _, first) = lulling_group(groups, first, taking, room);
        (source, first)
    }

    /// A group fed by the returned sender, whose lulls are marked on the returned `Lull`.
    fn lulling_group(
        groups: &Arc<Groups>,
        first: &str,
        taking: bool,
        room: usize,
    ) -> (mpsc::UnboundedSender<Response>, Lull, Socket) {
        let (source, rx) = mpsc::unbounded_channel();
        let lull = Lull::default();
        let first = socket(groups, first, taking, room, UnboundedReceiverStream::new(rx).boxed(), lull.clone());
        (source, lull, first)
    }

    /// The texts of the next item on the socket's queue.
    async fn item(socket: &mut Socket) -> Vec<String> {
        texts(tokio::time::timeout(Duration::from_secs(5), socket.queue.recv()).await.unwrap().unwrap())
    }

    /// The texts of the next frames written straight to the socket together.
    async fn written(socket: &mut Socket) -> Vec<String> {
        let first = tokio::time::timeout(Duration::from_secs(5), socket.frames.recv()).await.unwrap().unwrap();
        let mut frames = vec![text(first)];
        while let Ok(frame) = socket.frames.try_recv() {
            frames.push(text(frame));
        }
        frames
    }

    #[tokio::test]
    async fn each_member_gets_every_event_once_under_its_own_id() {
        let groups = Arc::new(Groups::default());
        let (source, mut a) = group(&groups, "a", true, 8);
        let mut b = join(&groups, "b\"2");
        source.send(event(1)).unwrap();
        assert_eq!(written(&mut a).await, [r#"{"type":"next","id":"a","payload":{"data":{"n":1}}}"#]);
        assert_eq!(written(&mut b).await, [r#"{"type":"next","id":"b\"2","payload":{"data":{"n":1}}}"#]);
        for socket in [&mut a, &mut b] {
            assert!(socket.frames.try_recv().is_err() && socket.queue.try_recv().is_err(), "once, straight");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_that_come_together_are_written_together() {
        let groups = Arc::new(Groups::default());
        let (source, mut a) = group(&groups, "a", true, 8);
        source.send(event(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(a.frames.is_empty(), "the first waits a moment for what follows");
        source.send(event(2)).unwrap();
        let together = written(&mut a).await;
        assert_eq!(together.len(), 2, "the second came with it: {together:?}");
        assert!(together[0].contains(r#"{"n":1}"#) && together[1].contains(r#"{"n":2}"#));
        // Further apart than the gap, they go on their own.
        source.send(event(3)).unwrap();
        let alone = written(&mut a).await;
        assert!(alone.len() == 1 && alone[0].contains(r#"{"n":3}"#));
        tokio::time::sleep(Duration::from_millis(5)).await;
        source.send(event(4)).unwrap();
        assert!(written(&mut a).await[0].contains(r#"{"n":4}"#));
        assert!(a.frames.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_crowd_waits_longer_for_what_follows_and_every_member_gets_it() {
        let groups = Arc::new(Groups::default());
        let (source, mut a) = group(&groups, "a", true, 8);
        let mut crowd: Vec<Socket> = (1..super::CROWD).map(|n| join(&groups, &n.to_string())).collect();
        source.send(event(1)).unwrap();
        tokio::time::sleep(super::BATCH_GAP * 2).await;
        assert!(a.frames.is_empty(), "a crowd's first waits longer than the usual gap");
        source.send(event(2)).unwrap();
        assert_eq!(written(&mut a).await.len(), 2, "the second came with it");
        for (n, member) in crowd.iter_mut().enumerate() {
            let frames = written(member).await;
            assert_eq!(frames.len(), 2, "member {n}: {frames:?}");
            assert!(frames[1].starts_with(&format!(r#"{{"type":"next","id":"{}","#, n + 1)));
        }
        // Events that keep coming, one every 4 ms, are still cut at the 20 ms window.
        for n in 3.. {
            assert!(n < 30, "never cut");
            source.send(event(n)).unwrap();
            tokio::time::sleep(super::BATCH_GAP * 2).await;
            if !a.frames.is_empty() {
                break;
            }
        }
        let first = written(&mut a).await;
        assert!((2..=6).contains(&first.len()), "cut at the window: {first:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_lull_has_what_was_gathered_written_at_once() {
        let groups = Arc::new(Groups::default());
        let (source, lull, mut a) = lulling_group(&groups, "a", true, 8);
        let _crowd: Vec<Socket> = (1..super::CROWD).map(|n| join(&groups, &n.to_string())).collect();
        let began = tokio::time::Instant::now();
        source.send(event(1)).unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert!(a.frames.is_empty(), "gathering");
        // The source marks the lull before it yields the last event before it.
        lull.mark();
        source.send(event(2)).unwrap();
        assert_eq!(written(&mut a).await.len(), 2, "both, together");
        assert!(began.elapsed() < super::CROWD_GAP, "without waiting out the gap: {:?}", began.elapsed());
        // The next batch gathers as usual.
        source.send(event(3)).unwrap();
        tokio::time::sleep(super::CROWD_GAP / 2).await;
        assert!(a.frames.is_empty(), "a lull counts once");
        assert_eq!(written(&mut a).await.len(), 1);
    }

    #[tokio::test]
    async fn a_shard_is_written_a_turn_at_a_time() {
        let groups = Arc::new(Groups::default());
        let (_source, first) = group(&groups, "0", true, 8);
        let mut sockets: Vec<Socket> = (1..SHARDS * 100).map(|n| join(&groups, &n.to_string())).collect();
        sockets.push(first);
        sockets.retain(|socket| (socket.membership.number as usize).is_multiple_of(SHARDS));
        assert_eq!(sockets.len(), 100);
        let group = groups.live.lock().unwrap()["key"].clone();
        let payloads: Arc<[String]> = vec!["{}".to_string()].into();
        let mut delivery = std::pin::pin!(group.deliver(0, &payloads));
        let mut cx = Context::from_waker(Waker::noop());
        assert!(delivery.as_mut().poll(&mut cx).is_pending(), "it gives other tasks a turn");
        assert_eq!(sockets.iter().filter(|socket| !socket.frames.is_empty()).count(), TURN);
        while delivery.as_mut().poll(&mut cx).is_pending() {}
        assert!(sockets.iter().all(|socket| socket.frames.len() == 1), "each got it once");
    }

    #[tokio::test]
    async fn a_member_that_joined_after_the_last_event_is_told_to_run_again() {
        let groups = Arc::new(Groups::default());
        let (source, mut early) = group(&groups, "early", true, 8);
        source.send(event(1)).unwrap();
        written(&mut early).await;
        let mut late = join(&groups, "late");
        drop(source);
        assert!(
            matches!(notice(&mut early).await, StreamNotice::Ended { late: false, member } if member == early.membership.number)
        );
        assert!(
            matches!(notice(&mut late).await, StreamNotice::Ended { late: true, member } if member == late.membership.number)
        );
        // Ended, it is gone: the next subscriber starts a new stream.
        assert!(groups.live.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn events_wait_behind_what_the_socket_queued() {
        let groups = Arc::new(Groups::default());
        let (source, mut a) = group(&groups, "a", true, 8);
        a.wire.try_queue(Outgoing::Message(Message::Text("first".into()))).unwrap();
        source.send(event(1)).unwrap();
        assert_eq!(item(&mut a).await, ["first"]);
        assert!(item(&mut a).await[0].contains(r#"{"n":1}"#), "queued after it");
        assert!(a.frames.is_empty(), "not written straight past it");
    }

    #[tokio::test(start_paused = true)]
    async fn a_socket_that_takes_nothing_gets_its_queue_then_the_socket_loop_in_order() {
        let groups = Arc::new(Groups::default());
        let (source, mut slow) = group(&groups, "s", false, 1);
        // Each further apart than the gap, so each is a batch of its own.
        for n in 1..=3 {
            source.send(event(n)).unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(item(&mut slow).await[0].contains(r#"{"n":1}"#));
        for n in 2..=3 {
            let StreamNotice::Events { events, .. } = notice(&mut slow).await else { panic!("not events") };
            assert!(texts(events)[0].contains(&format!(r#"{{"n":{n}}}"#)));
        }
        // Once behind, always through the loop, even with room again.
        source.send(event(4)).unwrap();
        assert!(matches!(notice(&mut slow).await, StreamNotice::Events { .. }));
        assert!(slow.queue.try_recv().is_err() && slow.frames.is_empty());
    }

    #[tokio::test]
    async fn a_held_member_gets_events_through_its_socket_loop_and_the_others_straight() {
        let groups = Arc::new(Groups::default());
        let (source, mut a) = group(&groups, "a", true, 8);
        let mut b = join(&groups, "b");
        b.membership.hold();
        source.send(event(1)).unwrap();
        assert!(written(&mut a).await[0].contains(r#"{"n":1}"#));
        let StreamNotice::Events { events, member } = notice(&mut b).await else { panic!("not events") };
        assert_eq!(member, b.membership.number);
        assert!(texts(events)[0].contains(r#"{"n":1}"#));
        assert!(b.frames.is_empty() && b.queue.try_recv().is_err(), "nothing went past its loop");
    }

    #[tokio::test]
    async fn the_last_member_leaving_stops_the_stream() {
        let groups = Arc::new(Groups::default());
        let (source, a) = group(&groups, "a", true, 8);
        let b = join(&groups, "b");
        drop(a);
        assert_eq!(groups.live.lock().unwrap().len(), 1, "b still watches");
        drop(b);
        assert!(groups.live.lock().unwrap().is_empty());
        tokio::time::timeout(Duration::from_secs(5), source.closed()).await.expect("the stream was dropped");
    }
}
