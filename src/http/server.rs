//! Serves HTTP/1.1 connections (websocket upgrades included) with what axum's `serve` lacks: a
//! time limit on request headers, a time limit on idle keep-alive connections, and a cap on
//! open connections past which only health checks are served (docs/transport.md,
//! "Connections").

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::{Pin, pin},
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::ConnectInfo,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use http_body::{Frame, SizeHint};
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::{Notify, OwnedSemaphorePermit, Semaphore, watch},
    time::Instant,
};
use tower::ServiceExt;

/// Connections served past `ENSEMBLE_MAX_CONNECTIONS`, for health checks only.
pub const RESERVE: usize = 16;
/// How long a reserve connection may take to send its request headers.
const RESERVE_HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// The paths a reserve connection serves; anything else is answered 503.
const HEALTH_PATHS: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// How long a connection may take and how many may be open.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// From the first byte of a request to the end of its headers.
    pub header_timeout: Duration,
    /// From the end of a response to the first byte of the next request.
    pub idle_timeout: Duration,
    /// Connections served in full, websockets included.
    pub max_connections: usize,
}

/// Serves `router` on `listener` until `stop` completes; then accepts no more connections,
/// lets in-flight requests finish (each connection closes after its current response) and
/// returns once every connection is closed or upgraded.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    stop: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let slots = Slots::new(limits.max_connections);
    let (stopping_tx, stopping) = watch::channel(false);
    let (open_tx, open) = watch::channel(());
    let mut stop = pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    accept_failed(error).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        let Some(slot) = slots.take() else {
            // Both the cap and the reserve are full: closing at once costs less than waiting.
            slots.refused(peer);
            continue;
        };
        // Small writes go out at once: a websocket event or a short answer must not wait for
        // the client's delayed ACK of the previous write (Nagle's algorithm, 40 ms or more).
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "cannot set TCP_NODELAY on a connection");
        }
        let connection = Connection { router: router.clone(), peer, limits, stopping: stopping.clone() };
        let open = open.clone();
        tokio::spawn(async move {
            connection.run(stream, slot).await;
            drop(open);
        });
    }
    drop(listener);
    let _ = stopping_tx.send(true);
    drop(open);
    open_tx.closed().await;
    Ok(())
}

/// What to do when `accept` fails: a client that left before it was accepted is nothing; out of
/// file descriptors (or memory), wait a moment rather than spin.
async fn accept_failed(error: io::Error) {
    let client_gone = matches!(
        error.kind(),
        io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
    );
    if !client_gone {
        tracing::error!(%error, "cannot accept a connection; trying again in a second");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// The process's soft limit on open files, where the system says (Linux's `/proc`).
pub fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    soft_open_files(&limits)
}

/// The soft limit of the `Max open files` line of a `/proc/<pid>/limits` text.
fn soft_open_files(limits: &str) -> Option<u64> {
    let line = limits.lines().find(|line| line.starts_with("Max open files"))?;
    line.trim_start_matches("Max open files").split_whitespace().next()?.parse().ok()
}

/// Permits for connections: `max_connections` served in full, then `RESERVE` more for health
/// checks.
struct Slots {
    full: Arc<Semaphore>,
    reserve: Arc<Semaphore>,
    /// When a refused or reserve connection was last logged, so that a flood logs once in a while.
    last_warning: Mutex<Option<Instant>>,
}

/// A connection's permit, held as long as its socket is open (an upgraded websocket included).
enum Slot {
    Full(#[allow(dead_code)] OwnedSemaphorePermit),
    Reserve(#[allow(dead_code)] OwnedSemaphorePermit),
}

impl Slots {
    fn new(max_connections: usize) -> Self {
        Self {
            full: Arc::new(Semaphore::new(max_connections)),
            reserve: Arc::new(Semaphore::new(RESERVE)),
            last_warning: Mutex::new(None),
        }
    }

    fn take(&self) -> Option<Slot> {
        if let Ok(permit) = self.full.clone().try_acquire_owned() {
            return Some(Slot::Full(permit));
        }
        self.warn("the connection limit (ENSEMBLE_MAX_CONNECTIONS) is reached: only health checks are served");
        self.reserve.clone().try_acquire_owned().ok().map(Slot::Reserve)
    }

    fn refused(&self, peer: SocketAddr) {
        tracing::debug!(%peer, "connection refused: the connection limit and its reserve are full");
    }

    /// Logs `message` unless it was logged in the last ten seconds.
    fn warn(&self, message: &str) {
        let mut last = self.last_warning.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(10)) {
            *last = Some(Instant::now());
            tracing::warn!("{message}");
        }
    }
}

/// One accepted connection.
struct Connection {
    router: Router,
    peer: SocketAddr,
    limits: Limits,
    stopping: watch::Receiver<bool>,
}

impl Connection {
    /// Serves the connection until it closes, upgrades, or outstays a time limit.
    async fn run(mut self, stream: TcpStream, slot: Slot) {
        let reserve = matches!(slot, Slot::Reserve(_));
        let header_timeout = match reserve {
            true => self.limits.header_timeout.min(RESERVE_HEADER_TIMEOUT),
            false => self.limits.header_timeout,
        };
        let activity = Arc::new(Activity::new());
        let io = TokioIo::new(Watched { stream, activity: activity.clone(), _slot: slot });
        let (router, peer, requests) = (self.router.clone(), self.peer, activity.clone());
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (router, guard) = (router.clone(), requests.begin());
            async move {
                let mut request = request.map(Body::new);
                request.extensions_mut().insert(ConnectInfo(peer));
                let response = match reserve && !HEALTH_PATHS.contains(&request.uri().path()) {
                    true => at_capacity(),
                    false => router.oneshot(request).await.unwrap_or_else(|never| match never {}),
                };
                Ok::<_, Infallible>(response.map(|body| Guarded { body, _guard: guard }))
            }
        });
        let mut http = hyper::server::conn::http1::Builder::new();
        http.keep_alive(!reserve).header_read_timeout(None);
        let mut connection = pin!(http.serve_connection(io, service).with_upgrades());
        let mut stopping = *self.stopping.borrow_and_update();
        if stopping {
            connection.as_mut().graceful_shutdown();
        }
        loop {
            let deadline = activity.deadline(header_timeout, self.limits.idle_timeout);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(%error, peer = %self.peer, "connection ended with an error");
                    }
                    return;
                }
                () = sleep_until(deadline) => {
                    // Checked again: a request may have begun as the time ran out.
                    if activity.deadline(header_timeout, self.limits.idle_timeout).is_some_and(|d| d <= Instant::now()) {
                        tracing::debug!(peer = %self.peer, "connection closed: no complete request in time");
                        return;
                    }
                }
                () = activity.changed.notified() => {}
                changed = self.stopping.changed(), if !stopping => {
                    stopping = changed.is_err() || *self.stopping.borrow();
                    if stopping {
                        connection.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// What a reserve connection answers outside the health checks.
fn at_capacity() -> Response {
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        "The server is at its connection limit (ENSEMBLE_MAX_CONNECTIONS); try again in a moment.\n",
    )
        .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

/// Where a connection is between requests, and since when.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// No request under way and no byte of the next one read.
    Idle(Instant),
    /// Some of a request's head read, not all of it.
    Head(Instant),
    /// Requests whose responses are not yet fully written.
    Busy(usize),
}

/// A connection's phase, shared by its socket (which sees bytes arrive), its service (which
/// sees requests begin and responses end) and its watchdog.
struct Activity {
    phase: Mutex<Phase>,
    /// Told when the phase changes kind, so that the watchdog takes the new deadline.
    changed: Notify,
}

impl Activity {
    fn new() -> Self {
        Self { phase: Mutex::new(Phase::Idle(Instant::now())), changed: Notify::new() }
    }

    fn set(&self, change: impl FnOnce(Phase) -> Phase) {
        let mut phase = self.phase.lock().unwrap_or_else(PoisonError::into_inner);
        let before = *phase;
        *phase = change(before);
        if std::mem::discriminant(&before) != std::mem::discriminant(&*phase) {
            self.changed.notify_one();
        }
    }

    /// Bytes arrived: an idle connection has begun a request.
    fn read(&self) {
        self.set(|phase| match phase {
            Phase::Idle(_) => Phase::Head(Instant::now()),
            other => other,
        });
    }

    /// A request's head was read; its response is under way until the guard is dropped.
    fn begin(self: &Arc<Self>) -> RequestGuard {
        self.set(|phase| match phase {
            Phase::Busy(n) => Phase::Busy(n + 1),
            _ => Phase::Busy(1),
        });
        RequestGuard(self.clone())
    }

    fn end(&self) {
        self.set(|phase| match phase {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        });
    }

    /// When the connection outstays its welcome unless something happens first.
    fn deadline(&self, header_timeout: Duration, idle_timeout: Duration) -> Option<Instant> {
        match *self.phase.lock().unwrap_or_else(PoisonError::into_inner) {
            Phase::Idle(since) => Some(since + idle_timeout),
            Phase::Head(since) => Some(since + header_timeout),
            Phase::Busy(_) => None,
        }
    }
}

/// Held while a request's response is being made and written.
struct RequestGuard(Arc<Activity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.0.end();
    }
}

/// A response body that holds its request's guard until it is written (or dropped).
struct Guarded {
    body: Body,
    _guard: RequestGuard,
}

impl http_body::Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The socket, telling the connection's activity when bytes arrive, and holding the
/// connection's slot for as long as it is open.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, data)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_file_limit_is_read_from_proc() {
        let limits = "Limit                     Soft Limit           Hard Limit           Units     \n\
                      Max processes             63444                63444                processes \n\
                      Max open files            1024                 524288               files     \n";
        assert_eq!(soft_open_files(limits), Some(1024));
        assert_eq!(soft_open_files("Max open files            unlimited            unlimited            files"), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_is_timed_by_its_phase() {
        let (header, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        let activity = Arc::new(Activity::new());
        let start = Instant::now();
        assert_eq!(activity.deadline(header, idle), Some(start + idle), "idle from the start");
        tokio::time::advance(Duration::from_secs(5)).await;
        activity.read();
        assert_eq!(activity.deadline(header, idle), Some(start + Duration::from_secs(15)), "a head has begun");
        activity.read();
        assert_eq!(activity.deadline(header, idle), Some(start + Duration::from_secs(15)), "more of it: same deadline");
        let first = activity.begin();
        let second = activity.begin();
        assert_eq!(activity.deadline(header, idle), None, "busy: no deadline");
        drop(first);
        assert_eq!(activity.deadline(header, idle), None, "one response still under way");
        tokio::time::advance(Duration::from_secs(1)).await;
        drop(second);
        assert_eq!(activity.deadline(header, idle), Some(start + Duration::from_secs(6) + idle), "idle again");
    }
}
