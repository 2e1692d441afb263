//! The load generator: HTTP/1.1 keep-alive connections (hyper), one thread, driving one target
//! through one shape at a time, either in a closed loop (each connection sends its next request
//! as soon as the last answer is in: the peak rate) or in an open loop at a fixed rate, where a
//! pacing thread sets each request's intended start and latency is measured from that instant,
//! so time spent waiting for a free connection counts (no coordinated omission).
//!
//! Each shape first gets one request whose answer is read in full and checked
//! (`shapes::check`); its size becomes the size every later answer must have. Then every answer
//! is checked before it counts: status 200, no `"errors"` in the body, that size. A mismatch is
//! counted apart (with the first few kept as samples) and not measured.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::{net::TcpStream, sync::Mutex};

use crate::{
    procfs,
    shapes::{self, Dialect, Shape},
};

/// How long after the end of an open-loop run queued requests may still be sent.
const DRAIN: Duration = Duration::from_secs(2);
/// Mismatches kept verbatim per run.
const SAMPLES: usize = 3;

/// Where and how to reach a target.
pub struct Target {
    pub name: String,
    /// `http://host:port/path`; `{shape}` in it is replaced by the shape's name.
    pub url: String,
    pub dialect: Dialect,
    /// Sent as `Authorization: Bearer …`.
    pub token: Option<String>,
    /// The server process whose CPU time and peak memory are read.
    pub pid: Option<u32>,
    /// The PostgreSQL database it serves from, whose processes are read too.
    pub database: Option<String>,
}

pub struct Settings {
    pub connections: usize,
    pub warmup: Duration,
    pub measure: Duration,
    pub round: u32,
}

/// Closed loop, or open loop at this many requests per second.
#[derive(Clone, Copy)]
pub enum Mode {
    Peak,
    Fixed(f64),
}

#[derive(Default, Serialize, Deserialize, Clone)]
pub struct Faults {
    pub status: u64,
    pub errors: u64,
    pub size: u64,
    pub transport: u64,
}

impl Faults {
    pub fn total(&self) -> u64 {
        self.status + self.errors + self.size + self.transport
    }
}

#[derive(Default, Serialize, Deserialize, Clone)]
pub struct Latency {
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

/// One shape's run against one target: a line of `results.jsonl`.
#[derive(Default, Serialize, Deserialize, Clone)]
#[serde(default)]
pub struct Outcome {
    pub target: String,
    pub round: u32,
    /// `peak` or `fixed`.
    pub mode: String,
    pub shape: String,
    pub connections: usize,
    pub seconds: f64,
    /// The fixed rate asked for (open loop).
    pub rate: Option<f64>,
    /// Correct answers counted.
    pub ok: u64,
    pub faults: Faults,
    pub samples: Vec<String>,
    /// Open loop: requests still queued when the drain time ran out (not sent, not counted).
    pub dropped: u64,
    /// The size of the first correct answer, every later one's size.
    pub answer_bytes: Option<usize>,
    /// Why the run did not happen (its first answer was wrong).
    pub failed: Option<String>,
    pub rps: f64,
    pub latency: Latency,
    pub server_cpu_s: Option<f64>,
    pub postgres_cpu_s: Option<f64>,
    pub client_cpu_s: f64,
    pub server_peak_kib: Option<u64>,
    pub postgres_peak_pss_kib: Option<u64>,
    /// CPU seconds the rest of the machine used meanwhile (other work sharing it), and how many
    /// cores it has.
    pub other_cpu_s: f64,
    pub cores: usize,
}

struct Endpoint {
    addr: SocketAddr,
    host: String,
    path: String,
}

impl Endpoint {
    async fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| format!("{url}: only http:// URLs"))?;
        let (host, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let addr = tokio::net::lookup_host(host)
            .await
            .map_err(|e| format!("{host}: {e}"))?
            .next()
            .ok_or_else(|| format!("{host}: no address"))?;
        let path = if path.is_empty() { "/".to_string() } else { path.to_string() };
        Ok(Self { addr, host: host.to_string(), path })
    }
}

/// What every connection of a run shares.
struct Shared {
    endpoint: Endpoint,
    token: Option<String>,
    bodies: Vec<Bytes>,
    next_body: AtomicUsize,
    expected_size: usize,
    errors: memchr::memmem::Finder<'static>,
}

impl Shared {
    fn request(&self, body: Bytes) -> Result<Request<Full<Bytes>>, String> {
        let mut request = Request::post(self.endpoint.path.as_str())
            .header(header::HOST, self.endpoint.host.as_str())
            .header(header::CONTENT_TYPE, "application/json");
        if let Some(token) = &self.token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        request.body(Full::new(body)).map_err(|e| e.to_string())
    }

    fn next_request(&self) -> Result<Request<Full<Bytes>>, String> {
        let i = self.next_body.fetch_add(1, Ordering::Relaxed) % self.bodies.len();
        self.request(self.bodies[i].clone())
    }

    /// Whether an answer counts; the reason when it does not.
    fn judge(&self, status: StatusCode, body: &[u8]) -> Result<(), Fault> {
        if status != StatusCode::OK {
            return Err(Fault::Status(format!("status {status}: {}", String::from_utf8_lossy(body))));
        }
        if self.errors.find(body).is_some() {
            return Err(Fault::Errors(String::from_utf8_lossy(body).into_owned()));
        }
        if body.len() != self.expected_size {
            return Err(Fault::Size(format!("{} bytes instead of {}", body.len(), self.expected_size)));
        }
        Ok(())
    }
}

enum Fault {
    Status(String),
    Errors(String),
    Size(String),
    Transport(String),
}

/// One connection's counts.
struct Tally {
    latencies: Histogram<u64>,
    faults: Faults,
    samples: Vec<String>,
    dropped: u64,
}

impl Tally {
    fn new() -> Self {
        // 1 µs to 60 s at 3 significant digits: constant bounds that hdrhistogram accepts.
        let latencies = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds");
        Self { latencies, faults: Faults::default(), samples: Vec::new(), dropped: 0 }
    }

    fn ok(&mut self, latency: Duration) {
        self.latencies.saturating_record((latency.as_micros() as u64).max(1));
    }

    fn fault(&mut self, fault: Fault) {
        let (count, text) = match fault {
            Fault::Status(t) => (&mut self.faults.status, t),
            Fault::Errors(t) => (&mut self.faults.errors, t),
            Fault::Size(t) => (&mut self.faults.size, t),
            Fault::Transport(t) => (&mut self.faults.transport, t),
        };
        *count += 1;
        if self.samples.len() < SAMPLES {
            self.samples.push(text.chars().take(300).collect());
        }
    }

    fn merge(&mut self, other: Tally) {
        let _ = self.latencies.add(&other.latencies);
        self.faults.status += other.faults.status;
        self.faults.errors += other.faults.errors;
        self.faults.size += other.faults.size;
        self.faults.transport += other.faults.transport;
        self.dropped += other.dropped;
        for sample in other.samples {
            if self.samples.len() < SAMPLES {
                self.samples.push(sample);
            }
        }
    }
}

type Sender = SendRequest<Full<Bytes>>;

async fn connect(addr: SocketAddr) -> Result<Sender, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(sender)
}

async fn send(sender: &mut Sender, request: Request<Full<Bytes>>) -> Result<(StatusCode, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let response = sender.send_request(request).await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body = response.into_body().collect().await.map_err(|e| e.to_string())?.to_bytes();
    Ok((status, body))
}

/// Sends the shape's first body and checks the whole answer; returns it.
async fn first_answer(target: &Target, shape: Shape) -> Result<(Shared, Bytes), String> {
    let url = target.url.replace("{shape}", shape.name());
    let endpoint = Endpoint::parse(&url).await?;
    let mut shared = Shared {
        endpoint,
        token: target.token.clone(),
        bodies: shapes::bodies(shape, target.dialect),
        next_body: AtomicUsize::new(0),
        expected_size: 0,
        errors: memchr::memmem::Finder::new(b"\"errors\"").into_owned(),
    };
    let mut sender = connect(shared.endpoint.addr).await?;
    let (status, body) = send(&mut sender, shared.request(shared.bodies[0].clone())?).await?;
    let text = String::from_utf8_lossy(&body);
    if status != StatusCode::OK {
        return Err(format!("{} {}: status {status}: {text}", target.name, shape.name()));
    }
    let answer: Value =
        serde_json::from_slice(&body).map_err(|e| format!("{}: not JSON ({e}): {text}", target.name))?;
    shapes::check(shape, target.dialect, &answer).map_err(|e| format!("{} {}: {e}", target.name, shape.name()))?;
    shared.expected_size = body.len();
    Ok((shared, body))
}

/// Answers of every shape, checked, for the static target to serve.
pub async fn capture(target: &Target, folder: &std::path::Path) -> Result<(), String> {
    std::fs::create_dir_all(folder).map_err(|e| e.to_string())?;
    for shape in Shape::ALL {
        let (_, body) = first_answer(target, shape).await?;
        std::fs::write(folder.join(format!("{}.json", shape.name())), &body).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Waits until the target answers `{ __typename }` correctly, or `timeout` passes.
pub async fn wait_ready(target: &Target, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    loop {
        match first_answer(target, Shape::Typename).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() >= deadline => return Err(format!("not ready after {timeout:?}: {e}")),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Samples the PostgreSQL processes' memory until told to stop; answers the peak sum.
fn sample_postgres(database: String, stop: Arc<AtomicBool>, peak: Arc<AtomicU64>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let pss = procfs::pss_kib(&procfs::postgres_processes(&database));
            peak.fetch_max(pss, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(250));
        }
    })
}

/// CPU seconds of the server, of PostgreSQL, of this process and of the whole machine at one
/// instant.
struct CpuReading {
    server: f64,
    postgres: std::collections::HashMap<u32, f64>,
    client: f64,
    machine: f64,
}

fn read_cpu(target: &Target) -> CpuReading {
    let server = target.pid.map(|p| procfs::cpu_seconds(&p.to_string())).unwrap_or(0.0);
    let postgres = match &target.database {
        Some(db) => procfs::cpu_by_pid(&procfs::postgres_processes(db)),
        None => Default::default(),
    };
    CpuReading { server, postgres, client: procfs::cpu_seconds("self"), machine: procfs::machine_busy_seconds() }
}

/// Runs one shape against one target: first answer, warm-up, measured time.
pub async fn run(target: &Target, shape: Shape, mode: Mode, settings: &Settings) -> Outcome {
    let mut outcome = Outcome {
        target: target.name.clone(),
        round: settings.round,
        mode: match mode {
            Mode::Peak => "peak".into(),
            Mode::Fixed(_) => "fixed".into(),
        },
        shape: shape.name().into(),
        connections: settings.connections,
        seconds: settings.measure.as_secs_f64(),
        rate: match mode {
            Mode::Peak => None,
            Mode::Fixed(rate) => Some(rate),
        },
        ..Outcome::default()
    };
    let shared = match first_answer(target, shape).await {
        Ok((shared, _)) => Arc::new(shared),
        Err(e) => {
            outcome.failed = Some(e);
            return outcome;
        }
    };
    outcome.answer_bytes = Some(shared.expected_size);

    let stop_sampling = Arc::new(AtomicBool::new(false));
    let pss_peak = Arc::new(AtomicU64::new(0));
    let sampler = target.database.clone().map(|db| sample_postgres(db, stop_sampling.clone(), pss_peak.clone()));

    let start = Instant::now();
    let measured_from = start + settings.warmup;
    let until = measured_from + settings.measure;
    let workers: Vec<_> = match mode {
        Mode::Peak => {
            (0..settings.connections).map(|_| tokio::spawn(closed_loop(shared.clone(), measured_from, until))).collect()
        }
        Mode::Fixed(rate) => {
            let queue = pace(rate, start, until);
            (0..settings.connections)
                .map(|_| tokio::spawn(open_loop(shared.clone(), queue.clone(), measured_from, until)))
                .collect()
        }
    };
    tokio::time::sleep_until(measured_from.into()).await;
    let before = read_cpu(target);
    tokio::time::sleep_until(until.into()).await;
    let after = read_cpu(target);

    let mut tally = Tally::new();
    for worker in workers {
        match worker.await {
            Ok(t) => tally.merge(t),
            Err(e) => tally.fault(Fault::Transport(format!("connection task failed: {e}"))),
        }
    }
    stop_sampling.store(true, Ordering::Relaxed);
    if let Some(sampler) = sampler {
        let _ = sampler.join();
    }

    let h = &tally.latencies;
    outcome.ok = h.len();
    outcome.rps = h.len() as f64 / settings.measure.as_secs_f64();
    outcome.latency = Latency {
        p50_us: h.value_at_quantile(0.5),
        p99_us: h.value_at_quantile(0.99),
        p999_us: h.value_at_quantile(0.999),
        max_us: h.max(),
    };
    outcome.faults = tally.faults;
    outcome.samples = tally.samples;
    outcome.dropped = tally.dropped;
    outcome.client_cpu_s = after.client - before.client;
    if target.pid.is_some() {
        outcome.server_cpu_s = Some(after.server - before.server);
        outcome.server_peak_kib = target.pid.and_then(procfs::peak_rss_kib);
    }
    if target.database.is_some() {
        outcome.postgres_cpu_s = Some(procfs::cpu_between(&before.postgres, &after.postgres));
        outcome.postgres_peak_pss_kib = Some(pss_peak.load(Ordering::Relaxed));
    }
    let ours = outcome.client_cpu_s + outcome.server_cpu_s.unwrap_or(0.0) + outcome.postgres_cpu_s.unwrap_or(0.0);
    outcome.other_cpu_s = (after.machine - before.machine - ours).max(0.0);
    outcome.cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    outcome
}

/// One connection of the closed loop: answers completed inside the measured time count.
async fn closed_loop(shared: Arc<Shared>, measured_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::new();
    let mut sender = None;
    while Instant::now() < until {
        let Some(connection) = ready_connection(&shared, &mut sender, &mut tally, until).await else { break };
        let request = match shared.next_request() {
            Ok(r) => r,
            Err(e) => {
                tally.fault(Fault::Transport(e));
                break;
            }
        };
        let sent = Instant::now();
        let result = send(connection, request).await;
        let done = Instant::now();
        let counted = done >= measured_from && done <= until;
        settle(&shared, result, &mut sender, &mut tally, counted, done - sent);
    }
    tally
}

/// One connection of the open loop: takes the next intended start from the pacing queue.
async fn open_loop(shared: Arc<Shared>, queue: Queue, measured_from: Instant, until: Instant) -> Tally {
    let mut tally = Tally::new();
    let mut sender = None;
    loop {
        let next = queue.lock().await.recv().await;
        let Some(intended) = next else { break };
        let counted = intended >= measured_from;
        if Instant::now() > until + DRAIN {
            tally.dropped += u64::from(counted);
            continue;
        }
        let Some(connection) = ready_connection(&shared, &mut sender, &mut tally, until + DRAIN).await else {
            tally.dropped += u64::from(counted);
            continue;
        };
        let request = match shared.next_request() {
            Ok(r) => r,
            Err(e) => {
                tally.fault(Fault::Transport(e));
                continue;
            }
        };
        let result = send(connection, request).await;
        let done = Instant::now();
        settle(&shared, result, &mut sender, &mut tally, counted, done - intended);
    }
    tally
}

/// The connection to send on, (re)connecting when there is none; `None` once `until` passed.
async fn ready_connection<'a>(
    shared: &Shared,
    sender: &'a mut Option<Sender>,
    tally: &mut Tally,
    until: Instant,
) -> Option<&'a mut Sender> {
    while sender.is_none() {
        match connect(shared.endpoint.addr).await {
            Ok(s) => *sender = Some(s),
            Err(e) => {
                tally.fault(Fault::Transport(e));
                if Instant::now() >= until {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    sender.as_mut()
}

/// Counts one answer; a transport failure drops the connection so the next request reconnects.
fn settle(
    shared: &Shared,
    result: Result<(StatusCode, Bytes), String>,
    sender: &mut Option<Sender>,
    tally: &mut Tally,
    counted: bool,
    latency: Duration,
) {
    match result {
        Ok((status, body)) => match shared.judge(status, &body) {
            Ok(()) if counted => tally.ok(latency),
            Ok(()) => {}
            Err(fault) => tally.fault(fault),
        },
        Err(e) => {
            *sender = None;
            tally.fault(Fault::Transport(e));
        }
    }
}

type Queue = Arc<Mutex<tokio::sync::mpsc::UnboundedReceiver<Instant>>>;

/// The intended start of every request from `start` to `until` at `rate` per second, each
/// queued at that instant by a thread of its own (finer than the runtime's millisecond timer).
fn pace(rate: f64, start: Instant, until: Instant) -> Queue {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    std::thread::spawn(move || {
        let mut k: u32 = 0;
        loop {
            let intended = start + interval * k;
            if intended >= until {
                break;
            }
            let now = Instant::now();
            if intended > now + Duration::from_micros(50) {
                std::thread::sleep(intended - now);
            }
            if tx.send(intended).is_err() {
                break;
            }
            k += 1;
        }
    });
    Arc::new(Mutex::new(rx))
}
