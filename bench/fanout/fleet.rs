//! The subscribers: one websocket and one `teamActivity` subscription each, spread over the
//! cluster's servers. Each notes, as soon as a frame is read, when it arrived; the frame is
//! then only searched for the few fields a delivery needs.

use std::{
    net::SocketAddr,
    sync::{
        Arc, LazyLock, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use memchr::memmem::Finder;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::{Semaphore, watch},
    task::JoinHandle,
};
use tokio_tungstenite::{
    MaybeTlsStream, WebSocketStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig},
};

use crate::cluster::Cluster;

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// Handshakes in flight at once, so the listen backlog never overflows.
const CONCURRENT_HANDSHAKES: usize = 64;
/// How long opening every subscriber may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(300);
/// Times one subscriber asks for its subscription when the server refuses it.
const SUBSCRIBE_ATTEMPTS: u32 = 5;
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);
const SUBSCRIPTION: &str = "subscription($t: ID!) { teamActivity(teamId: $t) { runId kind at } }";
const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// One event as one subscriber received it.
pub struct Delivery {
    /// `run_key` of the event's run.
    pub run: u64,
    /// The event's `at` as sent (RFC 3339), read only once the measurement is over.
    at: [u8; AT_LENGTH],
    pub arrived_ns: i64,
}

/// Longest `at` kept: `2026-11-26T13:09:27.396373123Z` and then some.
const AT_LENGTH: usize = 40;

impl Delivery {
    /// The event's `at`, nanoseconds since the epoch.
    pub fn at_ns(&self) -> Option<i64> {
        let end = self.at.iter().position(|&b| b == 0).unwrap_or(AT_LENGTH);
        let at = std::str::from_utf8(&self.at[..end]).ok()?;
        chrono::DateTime::parse_from_rfc3339(at).ok()?.timestamp_nanos_opt()
    }
}

/// A run id, shortened for counting: its bytes folded eight at a time (cheap enough for every
/// frame; the ids differ in far more bits than a run's twenty need).
pub fn run_key(run_id: &str) -> u64 {
    run_id.as_bytes().chunks(8).fold(0, |hash, chunk| {
        let mut word = [0; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        (hash.rotate_left(29) ^ u64::from_le_bytes(word)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
    })
}

#[derive(Default)]
struct Tally {
    open: AtomicUsize,
    failed: AtomicUsize,
    /// Terminal events received, by all subscribers together.
    finished: AtomicUsize,
    /// Sockets the server closed.
    dropped: AtomicUsize,
    /// Subscriptions the server refused (and that were asked for again).
    refused: AtomicUsize,
    first_problem: OnceLock<String>,
}

impl Tally {
    fn problem(&self, what: String) {
        let _ = self.first_problem.set(what);
    }
}

pub struct Fleet {
    tally: Arc<Tally>,
    stop: watch::Sender<bool>,
    subscribers: Vec<JoinHandle<Vec<Delivery>>>,
}

impl Fleet {
    /// Opens `size` subscribers, subscriber `i` on server `i % servers`, and waits until each has
    /// its `connection_ack` and has sent its `subscribe` (or failed).
    pub async fn open(cluster: &Cluster, size: usize) -> Self {
        let tally = Arc::new(Tally::default());
        let (stop, stopped) = watch::channel(false);
        let gate = Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES));
        let init =
            json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {}", cluster.token)}});
        let subscribe = json!({"query": SUBSCRIPTION, "variables": {"t": cluster.team}});
        let subscribers = (0..size)
            .map(|i| {
                let addr = cluster.servers[i % cluster.servers.len()].addr;
                let messages = [init.to_string(), subscribe.to_string()];
                tokio::spawn(subscriber(addr, messages, tally.clone(), gate.clone(), stopped.clone()))
            })
            .collect();
        let fleet = Self { tally, stop, subscribers };
        let deadline = Instant::now() + OPEN_DEADLINE;
        while fleet.tally.open.load(Ordering::SeqCst) + fleet.tally.failed.load(Ordering::SeqCst) < size {
            assert!(Instant::now() < deadline, "subscribers still opening after {OPEN_DEADLINE:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let failed = fleet.tally.failed.load(Ordering::SeqCst);
        if failed > 0 {
            let problem = fleet.tally.first_problem.get().map_or("", String::as_str);
            eprintln!("{failed} of {size} subscribers failed to open; first problem: {problem}");
        }
        fleet
    }

    /// Subscribers that opened.
    pub fn connected(&self) -> usize {
        self.tally.open.load(Ordering::SeqCst)
    }

    /// Subscriptions the server refused so far; each was asked for again.
    pub fn refused(&self) -> usize {
        self.tally.refused.load(Ordering::SeqCst)
    }

    pub fn reset_finished(&self) {
        self.tally.finished.store(0, Ordering::SeqCst);
    }

    /// Waits until every subscriber that opened has received `runs` terminal events, or `limit`.
    pub async fn wait_finished(&self, runs: usize, limit: Duration) {
        let deadline = Instant::now() + limit;
        let target = runs * self.connected();
        while self.tally.finished.load(Ordering::SeqCst) < target && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Closes every subscriber; answers what each received, in the order they were opened.
    pub async fn close(self) -> Vec<Vec<Delivery>> {
        let _ = self.stop.send(true);
        let mut received = Vec::with_capacity(self.subscribers.len());
        for subscriber in self.subscribers {
            received.push(subscriber.await.expect("subscriber task"));
        }
        let dropped = self.tally.dropped.load(Ordering::SeqCst);
        if dropped > 0 {
            let problem = self.tally.first_problem.get().map_or("", String::as_str);
            eprintln!("{dropped} subscribers were closed by the server; first problem: {problem}");
        }
        received
    }
}

fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// One subscriber: connects, subscribes, then notes every event until told to stop. A refused
/// subscription is asked for again, under a new id, after a pause (up to `SUBSCRIBE_ATTEMPTS`).
async fn subscriber(
    addr: SocketAddr,
    [init, payload]: [String; 2],
    tally: Arc<Tally>,
    gate: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) -> Vec<Delivery> {
    let opened = {
        let _turn = gate.acquire().await.expect("gate open");
        open(addr, init, subscribe_message(1, &payload)).await
    };
    let socket = match opened {
        Ok(socket) => socket,
        Err(problem) => {
            tally.problem(problem);
            tally.failed.fetch_add(1, Ordering::SeqCst);
            return Vec::new();
        }
    };
    tally.open.fetch_add(1, Ordering::SeqCst);
    // From here on frames are read straight off the socket: the client should spend as little
    // of the CPU the server shares as it can, per message. Nothing is buffered yet: the server
    // sends nothing between `connection_ack` and the first event.
    let MaybeTlsStream::Plain(mut tcp) = socket.into_inner() else {
        tally.problem("not a plain TCP socket".into());
        return Vec::new();
    };
    let mut received = Vec::with_capacity(256);
    let mut attempt = 1;
    let mut buffer: Vec<u8> = Vec::with_capacity(READ_BUFFER);
    let stopped = stop.changed();
    tokio::pin!(stopped);
    loop {
        buffer.reserve(READ_BUFFER);
        let read = tokio::select! {
            biased;
            read = tcp.read_buf(&mut buffer) => read,
            _ = &mut stopped => break,
        };
        let arrived_ns = now_ns();
        if !matches!(read, Ok(n) if n > 0) {
            tally.problem(format!("socket ended: {read:?}"));
            tally.dropped.fetch_add(1, Ordering::SeqCst);
            break;
        }
        let mut taken = 0;
        let mut closed = false;
        while let Some((opcode, body, length)) = frame(&buffer[taken..]) {
            let text = std::str::from_utf8(body).unwrap_or_default();
            taken += length;
            if opcode == CLOSE {
                tally.problem(format!("closed: {text}"));
                tally.dropped.fetch_add(1, Ordering::SeqCst);
                closed = true;
                break;
            }
            if opcode != TEXT {
                continue;
            }
            if let Some((delivery, kind)) = delivery(text, arrived_ns) {
                if TERMINAL.contains(&kind) {
                    tally.finished.fetch_add(1, Ordering::SeqCst);
                }
                received.push(delivery);
            } else if text.contains("\"type\":\"error\"") || text.contains("\"errors\"") {
                tally.problem(text.to_string());
                tally.refused.fetch_add(1, Ordering::SeqCst);
                if attempt < SUBSCRIBE_ATTEMPTS {
                    attempt += 1;
                    tokio::time::sleep(RESUBSCRIBE_AFTER).await;
                    let _ = tcp.write_all(&masked_text(&subscribe_message(attempt, &payload))).await;
                }
            }
        }
        if closed {
            break;
        }
        buffer.drain(..taken);
    }
    received
}

const TEXT: u8 = 1;
const CLOSE: u8 = 8;
/// Bytes read from a socket at a time.
const READ_BUFFER: usize = 4096;

/// The first whole frame of `bytes` (from the server, so unmasked): its opcode, payload, and
/// length in all; `None` until it has all arrived.
fn frame(bytes: &[u8]) -> Option<(u8, &[u8], usize)> {
    let (&first, &second) = (bytes.first()?, bytes.get(1)?);
    let (length, header) = match second & 0x7f {
        126 => (u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?) as usize, 4),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?) as usize, 10),
        short => (short as usize, 2),
    };
    let payload = bytes.get(header..header + length)?;
    Some((first & 0x0f, payload, header + length))
}

/// A final text frame from a client (masked, as clients must).
fn masked_text(text: &str) -> Vec<u8> {
    const MASK: [u8; 4] = [0x5a, 0x17, 0xc3, 0x88];
    let mut frame = vec![0x80 | TEXT];
    match text.len() {
        short @ 0..126 => frame.push(0x80 | short as u8),
        medium @ 126..=0xffff => {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(medium as u16).to_be_bytes());
        }
        long => {
            frame.push(0x80 | 127);
            frame.extend_from_slice(&(long as u64).to_be_bytes());
        }
    }
    frame.extend_from_slice(&MASK);
    frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    frame
}

/// A `subscribe` message with id `id` and the given payload (JSON text).
fn subscribe_message(id: u32, payload: &str) -> String {
    format!(r#"{{"id":"{id}","type":"subscribe","payload":{payload}}}"#)
}

/// Connects, initialises with the token and subscribes.
async fn open(addr: SocketAddr, init: String, subscribe: String) -> Result<Socket, String> {
    let mut request = format!("ws://{addr}/graphql/ws").into_client_request().map_err(|e| e.to_string())?;
    request.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static("graphql-transport-ws"));
    // Small frames only: a small read buffer keeps ten thousand clients light.
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let connecting = tokio_tungstenite::connect_async_with_config(request, Some(config), true);
    let (mut socket, _) = tokio::time::timeout(Duration::from_secs(30), connecting)
        .await
        .map_err(|_| "no websocket handshake within 30 s".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    socket.send(Message::text(init)).await.map_err(|e| format!("send init: {e}"))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(30), socket.next()).await;
        match next.map_err(|_| "no connection_ack within 30 s".to_string())? {
            Some(Ok(Message::Text(text))) if text.contains("\"connection_ack\"") => break,
            Some(Ok(Message::Text(text))) if text.contains("\"ping\"") => {}
            other => return Err(format!("instead of connection_ack: {other:?}")),
        }
    }
    socket.send(Message::text(subscribe)).await.map_err(|e| format!("send subscribe: {e}"))?;
    Ok(socket)
}

/// The run and arrival of a `next` message's event, and its kind.
fn delivery(text: &str, arrived_ns: i64) -> Option<(Delivery, &str)> {
    static FIELDS: LazyLock<[Finder<'static>; 3]> =
        LazyLock::new(|| ["\"runId\":\"", "\"kind\":\"", "\"at\":\""].map(Finder::new));
    let [run, kind, at] = &*FIELDS;
    let at_text = field(text, at)?.as_bytes();
    let mut at = [0; AT_LENGTH];
    at.get_mut(..at_text.len())?.copy_from_slice(at_text);
    let delivery = Delivery { run: run_key(field(text, run)?), at, arrived_ns };
    Some((delivery, field(text, kind)?))
}

/// The string value following `prefix` (`"name":"`).
fn field<'a>(text: &'a str, prefix: &Finder) -> Option<&'a str> {
    let start = prefix.find(text.as_bytes())? + prefix.needle().len();
    let length = memchr::memchr(b'"', &text.as_bytes()[start..])?;
    text.get(start..start + length)
}
