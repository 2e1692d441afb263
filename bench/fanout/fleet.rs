//! The subscribers: one websocket and one `teamActivity` subscription each, spread over the
//! cluster's servers. Each socket is opened by a websocket client library, then handed to one
//! thread that reads every socket through one epoll set: it notes, as soon as a frame is read,
//! when it arrived, and then only searches the frame for the few fields a delivery needs. The
//! clients share the servers' cores, so they should spend as little CPU per message as they can,
//! and they can be told to leave their sockets unread for a while (`hold_reading`).

use std::{
    io::{self, Write},
    net::{SocketAddr, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        Arc, LazyLock, Mutex, OnceLock, PoisonError,
        atomic::{AtomicBool, AtomicUsize, Ordering},
        mpsc,
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use futures_util::{SinkExt, StreamExt};
use memchr::memmem::Finder;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio_tungstenite::{
    MaybeTlsStream,
    tungstenite::{Message, client::IntoClientRequest, http::HeaderValue, protocol::WebSocketConfig},
};

use crate::cluster::Cluster;

/// Handshakes in flight at once, so the listen backlog never overflows.
const CONCURRENT_HANDSHAKES: usize = 64;
/// How long opening every subscriber may take.
const OPEN_DEADLINE: Duration = Duration::from_secs(300);
/// Times one subscriber asks for its subscription when the server refuses it.
const SUBSCRIBE_ATTEMPTS: u32 = 5;
const RESUBSCRIBE_AFTER: Duration = Duration::from_millis(500);
/// Longest the reading thread waits for a socket before looking for new sockets, subscriptions
/// to ask for again, and whether to stop.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// Ready sockets taken from the epoll set at a time.
const READY_AT_ONCE: usize = 1024;
const SUBSCRIPTION: &str = "subscription($t: ID!) { teamActivity(teamId: $t) { runId kind at } }";
const TERMINAL: [&str; 3] = ["COMPLETED", "FAILED", "CANCELLED"];

/// One event as one subscriber received it.
pub struct Delivery {
    /// `run_key` of the event's run.
    pub run: u64,
    /// The event's `at` as sent (RFC 3339), read only once the measurement is over.
    at: [u8; AT_LENGTH],
    /// When this subscriber read it.
    pub arrived_ns: i64,
    /// When its bytes reached the subscriber's socket, by the kernel's receive timestamp: what
    /// the subscriber's own scheduling adds is `arrived_ns - landed_ns`.
    pub landed_ns: i64,
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
    /// Until when the reading thread leaves the sockets unread.
    held: Arc<Mutex<Instant>>,
    stop: Arc<AtomicBool>,
    reader: JoinHandle<Vec<Vec<Delivery>>>,
}

impl Fleet {
    /// Opens `size` subscribers, subscriber `i` on server `i % servers`, and waits until each has
    /// its `connection_ack` and has sent its `subscribe` (or failed).
    pub async fn open(cluster: &Cluster, size: usize) -> Self {
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let held = Arc::new(Mutex::new(Instant::now()));
        let (opened, handed) = mpsc::channel();
        let reader = {
            let (tally, stop, held) = (tally.clone(), stop.clone(), held.clone());
            std::thread::Builder::new()
                .name("subscribers".into())
                .spawn(move || read_all(size, &handed, &tally, &stop, &held))
                .expect("reading thread")
        };
        let gate = Arc::new(Semaphore::new(CONCURRENT_HANDSHAKES));
        let init =
            json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {}", cluster.token)}});
        let subscribe = json!({"query": SUBSCRIPTION, "variables": {"t": cluster.team}}).to_string();
        for index in 0..size {
            let addr = cluster.servers[index % cluster.servers.len()].addr;
            let (init, payload) = (init.to_string(), subscribe.clone());
            let (tally, gate, opened) = (tally.clone(), gate.clone(), opened.clone());
            tokio::spawn(async move {
                let socket = {
                    let _turn = gate.acquire().await.expect("gate open");
                    connect(addr, init, subscribe_message(1, &payload)).await
                };
                match socket.and_then(|tcp| {
                    opened.send(Opened { index, tcp, payload }).map_err(|_| "the reading thread ended".into())
                }) {
                    Ok(()) => tally.open.fetch_add(1, Ordering::SeqCst),
                    Err(problem) => {
                        tally.problem(problem);
                        tally.failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            });
        }
        let fleet = Self { tally, held, stop, reader };
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

    /// Leaves every socket unread for `span` from now: what arrives meanwhile waits in the
    /// kernel, stamped with when it landed, and the servers have the cores to themselves.
    pub fn hold_reading(&self, span: Duration) {
        *self.held.lock().unwrap_or_else(PoisonError::into_inner) = Instant::now() + span;
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
        self.stop.store(true, Ordering::SeqCst);
        let reader = self.reader;
        let received = tokio::task::spawn_blocking(move || reader.join()).await;
        let received = received.expect("joining the reading thread").expect("the reading thread");
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

/// A subscriber's socket, subscribed, handed to the reading thread.
struct Opened {
    index: usize,
    tcp: TcpStream,
    /// The `subscribe` payload, to ask again with.
    payload: String,
}

/// The reading thread: takes each opened socket into its epoll set and reads what is ready
/// (unless `held` says to wait) until told to stop; answers what each subscriber received, by
/// index.
fn read_all(
    size: usize,
    handed: &mpsc::Receiver<Opened>,
    tally: &Tally,
    stop: &AtomicBool,
    held: &Mutex<Instant>,
) -> Vec<Vec<Delivery>> {
    let ready = Epoll::new().expect("epoll set");
    let mut subscribers: Vec<Option<Subscriber>> = (0..size).map(|_| None).collect();
    let mut asking_again: Vec<(Instant, usize)> = Vec::new();
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; READY_AT_ONCE];
    let mut scratch = vec![0; READ_BUFFER];
    while !stop.load(Ordering::Relaxed) {
        for opened in handed.try_iter() {
            if let Err(e) = ready.add(&opened.tcp, opened.index) {
                tally.problem(format!("epoll: {e}"));
                continue;
            }
            let index = opened.index;
            subscribers[index] = Some(Subscriber::new(opened));
        }
        let left = held.lock().unwrap_or_else(PoisonError::into_inner).saturating_duration_since(Instant::now());
        if !left.is_zero() {
            std::thread::sleep(left.min(POLL_EVERY));
            continue;
        }
        for index in ready.wait(&mut events, POLL_EVERY) {
            let Some(subscriber) = subscribers.get_mut(index).and_then(Option::as_mut) else { continue };
            match subscriber.read(&mut scratch, tally) {
                Outcome::Open => {}
                Outcome::Refused => asking_again.push((Instant::now() + RESUBSCRIBE_AFTER, index)),
                Outcome::Ended => {
                    let _ = ready.remove(&subscriber.tcp);
                }
            }
        }
        let now = Instant::now();
        asking_again.retain(|&(at, index)| {
            let due = at <= now;
            if due && let Some(subscriber) = subscribers[index].as_mut() {
                subscriber.subscribe_again(tally);
            }
            !due
        });
    }
    subscribers.into_iter().map(|s| s.map_or_else(Vec::new, |s| s.received)).collect()
}

/// Counts a socket that ended, with why.
fn ended(problem: String, tally: &Tally) -> Outcome {
    tally.problem(problem);
    tally.dropped.fetch_add(1, Ordering::SeqCst);
    Outcome::Ended
}

/// What a read left a subscriber as.
enum Outcome {
    Open,
    /// The server refused its subscription; it should ask again after a pause.
    Refused,
    /// The socket ended or was closed: it is no longer read.
    Ended,
}

/// One subscriber, on the reading thread.
struct Subscriber {
    tcp: TcpStream,
    payload: String,
    /// Bytes read and not yet part of a whole frame.
    pending: Vec<u8>,
    received: Vec<Delivery>,
    attempt: u32,
    /// The server refused the subscription, and it should be asked for again.
    refused: bool,
}

impl Subscriber {
    fn new(Opened { tcp, payload, .. }: Opened) -> Self {
        if let Err(e) = stamp_arrivals(&tcp) {
            eprintln!("receive timestamps off: {e}");
        }
        Self { tcp, payload, pending: Vec::new(), received: Vec::with_capacity(256), attempt: 1, refused: false }
    }

    /// Reads all the socket holds (it is reported ready once per arrival: edge-triggered), through
    /// `scratch`, and notes each event of the whole frames read.
    fn read(&mut self, scratch: &mut [u8], tally: &Tally) -> Outcome {
        loop {
            let (read, landed_ns) = match receive(&self.tcp, scratch) {
                Ok((0, _)) => return ended("socket ended".into(), tally),
                Ok(read) => read,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return ended(format!("socket failed: {e}"), tally),
            };
            let arrived_ns = now_ns();
            let arrival = Arrival { read_ns: arrived_ns, landed_ns: landed_ns.unwrap_or(arrived_ns) };
            if let Err(problem) = self.note(&scratch[..read], arrival, tally) {
                return ended(problem, tally);
            }
            // A read short of the scratch emptied the socket.
            if read < scratch.len() {
                break;
            }
        }
        if std::mem::take(&mut self.refused) { Outcome::Refused } else { Outcome::Open }
    }

    /// Notes the whole frames of what was pending and `bytes`; keeps the rest pending.
    fn note(&mut self, bytes: &[u8], arrival: Arrival, tally: &Tally) -> Result<(), String> {
        if self.pending.is_empty() {
            let taken = self.take(bytes, arrival, tally)?;
            self.pending.extend_from_slice(&bytes[taken..]);
        } else {
            let mut pending = std::mem::take(&mut self.pending);
            pending.extend_from_slice(bytes);
            let taken = self.take(&pending, arrival, tally)?;
            pending.drain(..taken);
            self.pending = pending;
        }
        Ok(())
    }

    /// Notes each event of the whole frames at the start of `bytes`; answers the bytes they took,
    /// or why the socket ended.
    fn take(&mut self, bytes: &[u8], arrival: Arrival, tally: &Tally) -> Result<usize, String> {
        let mut taken = 0;
        while let Some((opcode, body, length)) = frame(&bytes[taken..]) {
            let text = std::str::from_utf8(body).unwrap_or_default();
            taken += length;
            if opcode == CLOSE {
                return Err(format!("closed: {text}"));
            }
            if opcode != TEXT {
                continue;
            }
            if let Some((delivery, kind)) = delivery(text, arrival) {
                if TERMINAL.contains(&kind) {
                    tally.finished.fetch_add(1, Ordering::SeqCst);
                }
                self.received.push(delivery);
            } else if text.contains("\"type\":\"error\"") || text.contains("\"errors\"") {
                tally.problem(text.to_string());
                tally.refused.fetch_add(1, Ordering::SeqCst);
                self.refused = self.attempt < SUBSCRIBE_ATTEMPTS;
            }
        }
        Ok(taken)
    }

    /// Asks again for a refused subscription, under a new id.
    fn subscribe_again(&mut self, tally: &Tally) {
        self.attempt += 1;
        let message = masked_text(&subscribe_message(self.attempt, &self.payload));
        if let Err(e) = self.tcp.write_all(&message) {
            tally.problem(format!("subscribing again: {e}"));
        }
    }
}

/// When a read's bytes arrived: read by the subscriber, and landed on its socket (the last of
/// them to land, as TCP reports it; a run's events land together, one write per socket).
#[derive(Clone, Copy)]
struct Arrival {
    read_ns: i64,
    landed_ns: i64,
}

/// Asks the kernel to stamp each arrival on `socket` with the time it landed (`SO_TIMESTAMPNS`).
fn stamp_arrivals(socket: &TcpStream) -> io::Result<()> {
    let on: libc::c_int = 1;
    // SAFETY: the descriptor is open; the kernel reads `on`, an int, during the call only.
    let answer = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&on as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if answer < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
}

/// Reads from `socket` into `buffer`; answers the bytes read and, when the socket stamps its
/// arrivals, when the last of them landed (nanoseconds since the epoch).
fn receive(socket: &TcpStream, buffer: &mut [u8]) -> io::Result<(usize, Option<i64>)> {
    // Room for one control message holding a timespec, aligned as cmsghdr wants.
    let mut control = [0u64; 8];
    let mut part = libc::iovec { iov_base: buffer.as_mut_ptr().cast(), iov_len: buffer.len() };
    // SAFETY: an all-zero msghdr is valid (no name, no parts), filled in below.
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    message.msg_iov = &mut part;
    message.msg_iovlen = 1;
    message.msg_control = control.as_mut_ptr().cast();
    message.msg_controllen = size_of_val(&control) as _;
    // SAFETY: `message` points at `part` (into `buffer`) and `control`, which outlive the call,
    // with their true lengths.
    let read = unsafe { libc::recvmsg(socket.as_raw_fd(), &mut message, libc::MSG_DONTWAIT) };
    if read < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut landed = None;
    // SAFETY: the kernel filled `control` up to `msg_controllen`; the CMSG macros walk it within
    // that length, and a SCM_TIMESTAMPNS message's data is one timespec.
    unsafe {
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_TIMESTAMPNS {
                let at = std::ptr::read_unaligned(libc::CMSG_DATA(header).cast::<libc::timespec>());
                landed = Some(at.tv_sec * 1_000_000_000 + at.tv_nsec);
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
    }
    Ok((read as usize, landed))
}

/// An epoll set, edge-triggered: a socket is reported ready when bytes arrive, once.
struct Epoll(OwnedFd);

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes no pointers; a non-negative answer is a new descriptor
        // that nothing else owns.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Watches `socket` for reading, reported as `token`.
    fn add(&self, socket: &TcpStream, token: usize) -> io::Result<()> {
        let mut event = libc::epoll_event { events: (libc::EPOLLIN | libc::EPOLLET) as u32, u64: token as u64 };
        // SAFETY: both descriptors are open for the call; `event` is read during it only.
        let answer =
            unsafe { libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_ADD, socket.as_raw_fd(), &mut event) };
        if answer < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    fn remove(&self, socket: &TcpStream) -> io::Result<()> {
        // SAFETY: both descriptors are open for the call; DEL reads no event.
        let answer = unsafe {
            libc::epoll_ctl(self.0.as_raw_fd(), libc::EPOLL_CTL_DEL, socket.as_raw_fd(), std::ptr::null_mut())
        };
        if answer < 0 { Err(io::Error::last_os_error()) } else { Ok(()) }
    }

    /// Waits up to `timeout` for ready sockets; answers their tokens.
    fn wait<'a>(&self, events: &'a mut [libc::epoll_event], timeout: Duration) -> impl Iterator<Item = usize> + 'a {
        let capacity = i32::try_from(events.len()).unwrap_or(i32::MAX);
        // SAFETY: the kernel writes at most `capacity` events into `events`, which holds as many.
        let ready =
            unsafe { libc::epoll_wait(self.0.as_raw_fd(), events.as_mut_ptr(), capacity, timeout.as_millis() as i32) };
        events[..usize::try_from(ready).unwrap_or(0)].iter().map(|event| event.u64 as usize)
    }
}

const TEXT: u8 = 1;
const CLOSE: u8 = 8;
/// Bytes read from a socket at a time (far more than a run's events).
const READ_BUFFER: usize = 64 * 1024;

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

/// Connects, initialises with the token and subscribes; answers the bare socket (the server
/// sends nothing between `connection_ack` and the first event, so the library holds no bytes).
async fn connect(addr: SocketAddr, init: String, subscribe: String) -> Result<TcpStream, String> {
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
    let MaybeTlsStream::Plain(tcp) = socket.into_inner() else {
        return Err("not a plain TCP socket".into());
    };
    tcp.into_std().map_err(|e| format!("taking the socket: {e}"))
}

/// The run and arrival of a `next` message's event, and its kind.
fn delivery(text: &str, arrival: Arrival) -> Option<(Delivery, &str)> {
    static FIELDS: LazyLock<[Finder<'static>; 3]> =
        LazyLock::new(|| ["\"runId\":\"", "\"kind\":\"", "\"at\":\""].map(Finder::new));
    let [run, kind, at] = &*FIELDS;
    let at_text = field(text, at)?.as_bytes();
    let mut at = [0; AT_LENGTH];
    at.get_mut(..at_text.len())?.copy_from_slice(at_text);
    let delivery =
        Delivery { run: run_key(field(text, run)?), at, arrived_ns: arrival.read_ns, landed_ns: arrival.landed_ns };
    Some((delivery, field(text, kind)?))
}

/// The string value following `prefix` (`"name":"`).
fn field<'a>(text: &'a str, prefix: &Finder) -> Option<&'a str> {
    let start = prefix.find(text.as_bytes())? + prefix.needle().len();
    let length = memchr::memchr(b'"', &text.as_bytes()[start..])?;
    text.get(start..start + length)
}
