//! A socket's sending half. Everything a socket's loop sends goes through one bounded queue to
//! the socket's writer task; a shared stream's events are written straight to the socket instead,
//! by the task delivering them, when nothing is queued before them and the socket takes them at
//! once. That saves a queue item and the wake-up of the socket's writer per batch, about a
//! sixth of what a crowd of sockets costs the server.

use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    task::{Context, Poll, Waker},
    time::Duration,
};

use axum::extract::ws::Message;
use futures_util::SinkExt;
use tokio::sync::{
    Mutex,
    mpsc::{
        self,
        error::{SendTimeoutError, TrySendError},
    },
};

/// Where a socket's frames go: the sending half of the websocket.
pub type Sink = Pin<Box<dyn futures_util::Sink<Message, Error = axum::Error> + Send>>;

/// One item of a socket's queue.
#[derive(Debug)]
pub enum Outgoing {
    Message(Message),
    /// A batch of a shared stream's events for one of the socket's operations, which the writer
    /// frames as a `next` message each (so the framing is spread over the writers, not done by
    /// the one task serving the stream).
    Events {
        /// `{"type":"next","id":…,"payload":` for the operation's id.
        prefix: Arc<str>,
        /// Each event's payload, serialised once for every member.
        payloads: Arc<[String]>,
    },
    /// Nothing to write: frames written straight to the socket wait to be flushed.
    Flush,
}

impl Outgoing {
    /// The `next` message of one event.
    pub fn next(prefix: &str, payload: &str) -> Message {
        let mut frame = String::with_capacity(prefix.len() + payload.len() + 1);
        frame.push_str(prefix);
        frame.push_str(payload);
        frame.push('}');
        Message::Text(frame.into())
    }
}

/// The sink, shared by the writer task and straight writes.
struct Line {
    sink: Mutex<Sink>,
    /// Items queued and not yet fed to the sink. A straight write is made only when there are
    /// none, so it never overtakes what was queued before it.
    queued: AtomicUsize,
    /// Set by the writer as it closes the sink: nothing is written after a Close frame.
    closed: AtomicBool,
}

/// A handle to write to one socket.
#[derive(Clone)]
pub struct Wire {
    queue: mpsc::Sender<Outgoing>,
    line: Arc<Line>,
}

/// Writes what is queued for one socket; see [`Writer::run`].
pub struct Writer {
    queue: mpsc::Receiver<Outgoing>,
    line: Arc<Line>,
}

impl Wire {
    /// A wire to `sink` whose queue holds `room` items, and the writer that must run for the
    /// queue to be written.
    pub fn new(sink: Sink, room: usize) -> (Self, Writer) {
        let (queue, rx) = mpsc::channel(room.max(1));
        let line =
            Arc::new(Line { sink: Mutex::new(sink), queued: AtomicUsize::new(0), closed: AtomicBool::new(false) });
        (Self { queue, line: line.clone() }, Writer { queue: rx, line })
    }

    /// Queues `item` when there is room now.
    pub fn try_queue(&self, item: Outgoing) -> Result<(), TrySendError<Outgoing>> {
        self.line.queued.fetch_add(1, Ordering::AcqRel);
        self.queue.try_send(item).inspect_err(|_| self.unqueued())
    }

    /// Queues `item`, waiting at most `timeout` for room.
    pub async fn queue(&self, item: Outgoing, timeout: Duration) -> Result<(), SendTimeoutError<Outgoing>> {
        self.line.queued.fetch_add(1, Ordering::AcqRel);
        self.queue.send_timeout(item, timeout).await.inspect_err(|_| self.unqueued())
    }

    fn unqueued(&self) {
        self.line.queued.fetch_sub(1, Ordering::AcqRel);
    }

    /// Writes the `next` messages of `payloads` straight to the socket, in order, as far as it
    /// takes them without waiting; nothing when something is queued before them or being
    /// written. Answers how many it took: all of them when the socket is gone (nothing more can
    /// reach it). What it took and could not flush at once, the writer flushes.
    ///
    /// Called from a task that writes to many sockets: run it `unconstrained`, or the runtime's
    /// budget of I/O per task turns every socket after the first hundred or so away.
    pub fn write_now(&self, prefix: &str, payloads: &[String]) -> usize {
        if self.line.queued.load(Ordering::Acquire) != 0 {
            return 0;
        }
        let Ok(mut sink) = self.line.sink.try_lock() else {
            return 0;
        };
        if self.line.closed.load(Ordering::Acquire) {
            return payloads.len();
        }
        // Again, holding the sink: the writer feeds an item before it counts it out.
        if self.line.queued.load(Ordering::Acquire) != 0 {
            return 0;
        }
        // Nothing here waits: what is not ready now is left to the writer, which has a waker.
        let mut cx = Context::from_waker(Waker::noop());
        let mut taken = 0;
        for payload in payloads {
            match sink.as_mut().poll_ready(&mut cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(_)) => return payloads.len(),
                Poll::Pending => break,
            }
            if sink.as_mut().start_send(Outgoing::next(prefix, payload)).is_err() {
                return payloads.len();
            }
            taken += 1;
        }
        if taken == 0 {
            return 0;
        }
        match sink.as_mut().poll_flush(&mut cx) {
            Poll::Ready(Ok(())) => {}
            Poll::Ready(Err(_)) => return payloads.len(),
            // Full queue or closed: the writer flushes after what is queued, or is gone.
            Poll::Pending => drop(self.try_queue(Outgoing::Flush)),
        }
        taken
    }
}

impl Writer {
    /// Writes what is queued, items queued together in one write, until every [`Wire`] is
    /// dropped and the queue is empty, or after a Close frame (closing the sink so the client
    /// sees the code, not a 1006).
    pub async fn run(mut self) {
        'writing: while let Some(first) = self.queue.recv().await {
            let mut sink = self.line.sink.lock().await;
            let mut close = false;
            let mut item = Some(first);
            while let Some(next) = item.take() {
                let fed = match next {
                    Outgoing::Message(message) => {
                        close = matches!(message, Message::Close(_));
                        sink.feed(message).await
                    }
                    Outgoing::Events { prefix, payloads } => {
                        let mut fed = Ok(());
                        for payload in payloads.iter() {
                            fed = sink.feed(Outgoing::next(&prefix, payload)).await;
                            if fed.is_err() {
                                break;
                            }
                        }
                        fed
                    }
                    Outgoing::Flush => Ok(()),
                };
                self.line.queued.fetch_sub(1, Ordering::AcqRel);
                if fed.is_err() {
                    break 'writing;
                }
                if !close {
                    item = self.queue.try_recv().ok();
                }
            }
            if sink.flush().await.is_err() || close {
                break;
            }
        }
        let mut sink = self.line.sink.lock().await;
        self.line.closed.store(true, Ordering::Release);
        let _ = sink.close().await;
    }
}

/// A stand-in for a socket, for tests: records the frames it takes.
#[cfg(test)]
pub mod testing {
    use std::{
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicBool, AtomicUsize, Ordering},
        },
        task::{Context, Poll},
    };

    use axum::extract::ws::Message;
    use futures_util::task::AtomicWaker;
    use tokio::sync::mpsc;

    use super::{Outgoing, Sink, Wire, Writer};

    /// What the socket does; flip it to change that.
    pub struct State {
        /// Takes frames; otherwise it is never ready for one.
        pub taking: AtomicBool,
        /// Flushes at once; otherwise its flush waits until this is set (and `wake` called).
        pub flushing: AtomicBool,
        /// Frames taken and flushed.
        pub flushed: AtomicUsize,
        pub closed: AtomicBool,
        taken: AtomicUsize,
        flush_waker: AtomicWaker,
    }

    impl State {
        /// Lets a waiting flush go on.
        pub fn flush_now(&self) {
            self.flushing.store(true, Ordering::SeqCst);
            self.flush_waker.wake();
        }
    }

    struct Socket {
        frames: mpsc::UnboundedSender<Message>,
        state: Arc<State>,
    }

    impl futures_util::Sink<Message> for Socket {
        type Error = axum::Error;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            if self.state.taking.load(Ordering::SeqCst) { Poll::Ready(Ok(())) } else { Poll::Pending }
        }

        fn start_send(self: Pin<&mut Self>, frame: Message) -> Result<(), axum::Error> {
            self.state.taken.fetch_add(1, Ordering::SeqCst);
            self.frames.send(frame).map_err(axum::Error::new)
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            self.state.flush_waker.register(cx.waker());
            if !self.state.flushing.load(Ordering::SeqCst) {
                return Poll::Pending;
            }
            self.state.flushed.store(self.state.taken.load(Ordering::SeqCst), Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), axum::Error>> {
            self.state.closed.store(true, Ordering::SeqCst);
            Poll::Ready(Ok(()))
        }
    }

    /// A socket that takes (`taking`) and flushes every frame at once, or takes none.
    pub fn socket(taking: bool) -> (Sink, Arc<State>, mpsc::UnboundedReceiver<Message>) {
        let (frames, taken) = mpsc::unbounded_channel();
        let state = Arc::new(State {
            taking: AtomicBool::new(taking),
            flushing: AtomicBool::new(true),
            flushed: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            taken: AtomicUsize::new(0),
            flush_waker: AtomicWaker::new(),
        });
        (Box::pin(Socket { frames, state: state.clone() }), state, taken)
    }

    /// A wire to such a socket, with no writer: answers its queue, to read what was queued, and
    /// the frames the socket took.
    pub fn wire(taking: bool, room: usize) -> (Wire, mpsc::Receiver<Outgoing>, mpsc::UnboundedReceiver<Message>) {
        let (sink, _, taken) = socket(taking);
        let (wire, Writer { queue, .. }) = Wire::new(sink, room);
        (wire, queue, taken)
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, atomic::Ordering},
        time::Duration,
    };

    use axum::extract::ws::{CloseFrame, Message};
    use tokio::sync::mpsc;

    use super::{Outgoing, Wire, testing};

    fn payloads(events: &[&str]) -> Vec<String> {
        events.iter().map(|event| event.to_string()).collect()
    }

    fn message(text: &str) -> Outgoing {
        Outgoing::Message(Message::Text(text.into()))
    }

    async fn frame(frames: &mut mpsc::UnboundedReceiver<Message>) -> String {
        match tokio::time::timeout(Duration::from_secs(5), frames.recv()).await.unwrap().unwrap() {
            Message::Text(text) => text.to_string(),
            other => format!("{other:?}"),
        }
    }

    async fn until(what: &str, done: impl Fn() -> bool) {
        let waited = tokio::time::timeout(Duration::from_secs(5), async {
            while !done() {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        waited.await.unwrap_or_else(|_| panic!("never: {what}"));
    }

    #[tokio::test]
    async fn events_are_written_straight_only_behind_nothing_queued() {
        let (sink, _, mut frames) = testing::socket(true);
        let (wire, writer) = Wire::new(sink, 8);
        wire.try_queue(message("queued first")).unwrap();
        assert_eq!(wire.write_now("<", &payloads(&["1"])), 0, "it would overtake what is queued");
        tokio::spawn(writer.run());
        assert_eq!(frame(&mut frames).await, "queued first");
        until("the queue is written", || wire.line.queued.load(Ordering::SeqCst) == 0).await;
        assert_eq!(wire.write_now("<", &payloads(&["1", "2"])), 2);
        assert_eq!([frame(&mut frames).await, frame(&mut frames).await], ["<1}", "<2}"]);
    }

    #[tokio::test]
    async fn what_could_not_be_flushed_at_once_the_writer_flushes() {
        let (sink, state, mut frames) = testing::socket(true);
        state.flushing.store(false, Ordering::SeqCst);
        let (wire, writer) = Wire::new(sink, 8);
        let writer = tokio::spawn(writer.run());
        assert_eq!(wire.write_now("<", &payloads(&["1", "2"])), 2, "taken, not yet flushed");
        assert_eq!(frame(&mut frames).await, "<1}");
        assert_eq!(wire.write_now("<", &payloads(&["3"])), 0, "the flush waits: the next goes behind it");
        wire.try_queue(Outgoing::Events { prefix: "<".into(), payloads: payloads(&["3"]).into() }).unwrap();
        assert_eq!(state.flushed.load(Ordering::SeqCst), 0);
        state.flush_now();
        until("the writer flushed", || state.flushed.load(Ordering::SeqCst) == 3).await;
        assert_eq!([frame(&mut frames).await, frame(&mut frames).await], ["<2}", "<3}"]);
        drop(wire);
        tokio::time::timeout(Duration::from_secs(5), writer).await.unwrap().unwrap();
        assert!(state.closed.load(Ordering::SeqCst), "the last wire gone, the writer closed the socket");
    }

    #[tokio::test]
    async fn a_socket_not_ready_takes_nothing_straight() {
        let (sink, _, mut frames) = testing::socket(false);
        let (wire, _writer) = Wire::new(sink, 8);
        assert_eq!(wire.write_now("<", &payloads(&["1"])), 0);
        assert_eq!(wire.line.queued.load(Ordering::SeqCst), 0, "nothing left for the writer to flush");
        assert!(frames.try_recv().is_err());
    }

    #[tokio::test]
    async fn after_a_close_frame_the_writer_closes_and_nothing_more_is_written() {
        let (sink, state, mut frames) = testing::socket(true);
        let (wire, writer) = Wire::new(sink, 8);
        let writer = tokio::spawn(writer.run());
        let close = CloseFrame { code: 1001, reason: "Server shutting down".into() };
        wire.try_queue(Outgoing::Message(Message::Close(Some(close)))).unwrap();
        tokio::time::timeout(Duration::from_secs(5), writer).await.unwrap().unwrap();
        assert!(frame(&mut frames).await.contains("1001"));
        assert!(state.closed.load(Ordering::SeqCst));
        assert!(wire.try_queue(message("late")).is_err(), "the queue is closed");
        assert_eq!(wire.write_now("<", &payloads(&["1"])), 1, "taken, as by a socket that is gone");
        assert!(frames.try_recv().is_err(), "nothing written after the Close frame");
        assert_eq!(Arc::strong_count(&wire.line), 1, "the writer let go of the socket");
    }
}
