//! Subscription fan-out: N `teamActivity` subscribers on one team, each its own websocket
//! (graphql-transport-ws on `/graphql/ws`), against the real release binary. Measures
//! - event-to-client latency: from an event's creation on the server (its `at`, nanoseconds of
//!   the same clock) to its arrival at each subscriber, over every (event, subscriber) pair, while
//!   20 runs of `local/echo` start one every 300 ms. Arrival is measured two ways (`Reading`):
//!   - *held*: the subscribers leave each run's events on their sockets until 200 ms after the
//!     run started, and an event arrived when it landed on the socket (the kernel's receive
//!     timestamp). The servers have the cores to themselves while they write, as they would
//!     with subscribers on other machines; this is what the budget is measured on.
//!   - *eager*: the subscribers read every event as it lands, on the same two cores as the
//!     servers, and an event arrived when it was read; as a diagnostic, also when it landed.
//! - server memory per idle subscription: resident size of the server process(es) once all N
//!   subscriptions are open and idle for a few seconds, minus the size before the first was
//!   opened (after a warm-up), over N.
//!
//! Scenarios: one instance on SQLite with the in-process bus; two instances on one fresh
//! PostgreSQL database sharing events through Redis (`REDIS_URL`), subscribers and runs split
//! between them so half the deliveries cross Redis (skipped, with the reason, when PostgreSQL on
//! 127.0.0.1:5432 or Redis on 127.0.0.1:6379 does not answer).
//!
//! `cargo bench --bench fanout` (release). `ENSEMBLE_BENCH_SUBSCRIBERS` (default `1000,10000`)
//! lists the sizes; `ENSEMBLE_BENCH_TOPOLOGY=single` or `pair` runs one scenario only, and
//! `ENSEMBLE_BENCH_READING=held` or `eager` one way of reading only.
//!
//! Clients and servers share the machine's cores, so the subscribers are kept lean: each opens
//! its socket with a websocket client library, then one thread reads frames straight off every
//! socket through one edge-triggered epoll set. Each run reports the CPU the servers and the
//! clients used.

#[path = "fanout/cluster.rs"]
mod cluster;
#[path = "fanout/fleet.rs"]
mod fleet;

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use cluster::{Cluster, Readiness, Topology};
use fleet::{Delivery, Fleet};
use serde_json::json;

/// Runs measured per scenario and size.
const RUNS: usize = 20;
/// Time between two measured runs: a run's events are out well before the next one starts.
const RUN_EVERY: Duration = Duration::from_millis(300);
/// With `Reading::Held`, how long after a run starts the subscribers leave their sockets unread:
/// longer than the servers take to write a run's events, and short enough that reading them is
/// done before the next run.
const HOLD: Duration = Duration::from_millis(200);
/// How long every subscriber has, after the last run started, to receive every event.
const DELIVERY_DEADLINE: Duration = Duration::from_secs(60);
/// Quiet time before each memory reading.
const IDLE: Duration = Duration::from_secs(3);
/// Subscribers of the warm-up, opened and closed before the first memory reading.
const WARM_UP_SUBSCRIBERS: usize = 20;
const START_RUN: &str = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"Where is my order? It is late.\"}, wait: false) { id } }";

/// How the subscribers read their sockets, and so when an event counts as arrived.
#[derive(Clone, Copy, PartialEq)]
enum Reading {
    /// Each run's events are left on the sockets while the servers write them, then read; an
    /// event arrived when it landed on the socket.
    Held,
    /// Every event is read as it lands, sharing the cores with the servers; an event arrived
    /// when it was read.
    Eager,
}

impl Reading {
    fn name(self) -> &'static str {
        match self {
            Self::Held => "held, to landing",
            Self::Eager => "eager, to reading",
        }
    }
}

/// What the subscribers received of the measured runs.
struct Deliveries {
    delivered: usize,
    /// Distinct events seen by anyone, times the subscribers.
    expected: usize,
    events_per_run: (usize, usize),
    /// p50, p99 and max of the time from a run's first event to its last (their `at`): how long
    /// the server took to make the events, not to deliver them.
    run_span_ms: Option<[f64; 3]>,
    latency_ms: Option<[f64; 3]>,
    /// p99 of the deliveries whose run started on another instance than the subscriber's.
    crossed_p99_ms: Option<f64>,
    /// With `Reading::Eager`, p99 of the time from an event's creation until it landed on the
    /// subscriber's socket (before the subscriber, on the same cores, got to read it).
    landed_p99_ms: Option<f64>,
    /// Each run's own p99, over the runs: p50, p99 and max. How far one slow run, or a slow
    /// machine, moves the figure.
    run_p99_ms: Option<[f64; 3]>,
}

/// One line of the table.
struct Row {
    scenario: &'static str,
    reading: Reading,
    subscribers: usize,
    connected: usize,
    /// Subscriptions the servers refused and the subscribers asked for again.
    refused: usize,
    deliveries: Deliveries,
    rss_before_kib: u64,
    rss_after_kib: u64,
    /// Seconds of CPU the servers and this client used while the measured runs were delivered.
    cpu: (f64, f64),
    wall: Duration,
    /// `/readyz` answers other than ready during the measured runs.
    not_ready: Vec<String>,
}

impl Row {
    fn kib_per_subscription(&self) -> f64 {
        (self.rss_after_kib as f64 - self.rss_before_kib as f64) / self.subscribers as f64
    }
}

fn sizes() -> Vec<usize> {
    let listed = std::env::var("ENSEMBLE_BENCH_SUBSCRIBERS").unwrap_or_else(|_| "1000,10000".into());
    listed.split(',').map(|n| n.trim().parse().expect("ENSEMBLE_BENCH_SUBSCRIBERS: numbers, comma-separated")).collect()
}

/// Starts one run on `instance`; answers its id.
async fn start_run(cluster: &Cluster, instance: usize) -> String {
    let answer = cluster.call(instance, START_RUN, json!({"t": cluster.team})).await;
    answer["data"]["runTeam"]["id"].as_str().unwrap_or_else(|| panic!("runTeam failed: {answer}")).to_string()
}

/// Starts `runs` runs, one per instance in turn, and waits until every subscriber of `fleet` has
/// seen each end (or the deadline). Answers the run ids with the instance each started on.
async fn drive(
    cluster: &Cluster,
    fleet: &Fleet,
    reading: Reading,
    runs: usize,
    every: Duration,
) -> HashMap<u64, usize> {
    fleet.reset_finished();
    let mut started = HashMap::new();
    for n in 0..runs {
        let instance = n % cluster.servers.len();
        if reading == Reading::Held {
            fleet.hold_reading(HOLD);
        }
        started.insert(fleet::run_key(&start_run(cluster, instance).await), instance);
        if n + 1 < runs {
            tokio::time::sleep(every).await;
        }
    }
    fleet.wait_finished(runs, DELIVERY_DEADLINE).await;
    started
}

async fn measure(scenario: &'static str, topology: Topology, reading: Reading, subscribers: usize) -> Row {
    let cluster = Cluster::start(topology).await;

    let warm_up = Fleet::open(&cluster, WARM_UP_SUBSCRIBERS).await;
    drive(&cluster, &warm_up, reading, cluster.servers.len(), Duration::ZERO).await;
    warm_up.close().await;
    tokio::time::sleep(IDLE).await;
    let rss_before_kib = cluster.rss_kib();

    let fleet = Fleet::open(&cluster, subscribers).await;
    tokio::time::sleep(IDLE).await;
    let rss_after_kib = cluster.rss_kib();
    // One run that every subscriber must see: all subscriptions are live before measuring.
    drive(&cluster, &fleet, reading, 1, Duration::ZERO).await;

    eprintln!("  {} subscribers open; {RUNS} runs", fleet.connected());
    let (server_cpu, client_cpu) = (cluster.cpu_secs(), cluster::own_cpu_secs());
    let began = std::time::Instant::now();
    let readiness = Readiness::watch(&cluster);
    let runs = drive(&cluster, &fleet, reading, RUNS, RUN_EVERY).await;
    let wall = began.elapsed();
    let not_ready = readiness.finish().await;
    let cpu = (cluster.cpu_secs() - server_cpu, cluster::own_cpu_secs() - client_cpu);
    let (connected, refused) = (fleet.connected(), fleet.refused());
    let received = fleet.close().await;
    let deliveries = count(&received, &runs, cluster.servers.len(), reading);
    let row = Row {
        scenario,
        reading,
        subscribers,
        connected,
        refused,
        deliveries,
        rss_before_kib,
        rss_after_kib,
        cpu,
        wall,
        not_ready,
    };
    let Deliveries { delivered, expected, latency_ms, .. } = &row.deliveries;
    eprintln!(
        "  {delivered} / {expected} delivered, latency p50 / p99 / max {:?} ms, {:.1} KiB per idle subscription",
        latency_ms.unwrap_or_default(),
        row.kib_per_subscription()
    );
    row
}

/// Latencies and counts of the deliveries of the measured `runs` (each with the instance it
/// started on); `received[i]` is what subscriber `i`, on instance `i % instances`, received.
fn count(received: &[Vec<Delivery>], runs: &HashMap<u64, usize>, instances: usize, reading: Reading) -> Deliveries {
    let mut events: HashMap<u64, HashSet<i64>> = HashMap::new();
    let mut by_run: HashMap<u64, Vec<i64>> = HashMap::new();
    let (mut all, mut crossed, mut landed) = (Vec::new(), Vec::new(), Vec::new());
    for (subscriber, deliveries) in received.iter().enumerate() {
        for delivery in deliveries {
            let Some(&started_on) = runs.get(&delivery.run) else { continue };
            let Some(at_ns) = delivery.at_ns() else { continue };
            events.entry(delivery.run).or_default().insert(at_ns);
            let arrived_ns = if reading == Reading::Held { delivery.landed_ns } else { delivery.arrived_ns };
            let latency = arrived_ns - at_ns;
            all.push(latency);
            landed.push(delivery.landed_ns - at_ns);
            by_run.entry(delivery.run).or_default().push(latency);
            if started_on != subscriber % instances {
                crossed.push(latency);
            }
        }
    }
    let mut run_p99s: Vec<i64> = by_run
        .values_mut()
        .filter_map(|latencies| percentiles(latencies).map(|[_, p99, _]| (p99 * 1e6) as i64))
        .collect();
    let per_run: Vec<usize> = runs.keys().map(|run| events.get(run).map_or(0, HashSet::len)).collect();
    let mut spans: Vec<i64> = events.values().filter_map(|at| Some(at.iter().max()? - at.iter().min()?)).collect();
    Deliveries {
        delivered: all.len(),
        expected: per_run.iter().sum::<usize>() * received.len(),
        events_per_run: (per_run.iter().copied().min().unwrap_or(0), per_run.iter().copied().max().unwrap_or(0)),
        latency_ms: percentiles(&mut all),
        crossed_p99_ms: percentiles(&mut crossed).map(|[_, p99, _]| p99),
        landed_p99_ms: if reading == Reading::Eager { percentiles(&mut landed).map(|[_, p99, _]| p99) } else { None },
        run_p99_ms: percentiles(&mut run_p99s),
        run_span_ms: percentiles(&mut spans),
    }
}

/// p50, p99 and max in milliseconds (nearest rank) of latencies in nanoseconds.
fn percentiles(latencies: &mut [i64]) -> Option<[f64; 3]> {
    if latencies.is_empty() {
        return None;
    }
    latencies.sort_unstable();
    let rank = |q: f64| latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1];
    Some([rank(0.50), rank(0.99), rank(1.0)].map(|ns| ns as f64 / 1e6))
}

fn print_table(rows: &[Row]) {
    println!();
    println!(
        "| scenario | reading | subscribers | events delivered / expected | p50 ms | p99 ms | max ms | \
         server RSS before | server RSS after | KiB per idle subscription |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        let Deliveries { delivered, expected, latency_ms, .. } = &row.deliveries;
        let [p50, p99, max] = latency_ms.map_or(["-".into(), "-".into(), "-".into()], |l| l.map(|v| format!("{v:.1}")));
        println!(
            "| {} | {} | {} | {delivered} / {expected} | {p50} | {p99} | {max} | {:.1} MiB | {:.1} MiB | {:.1} |",
            row.scenario,
            row.reading.name(),
            row.subscribers,
            row.rss_before_kib as f64 / 1024.0,
            row.rss_after_kib as f64 / 1024.0,
            row.kib_per_subscription()
        );
    }
    println!();
    for row in rows {
        let Deliveries {
            delivered,
            expected,
            events_per_run: (min, max),
            crossed_p99_ms,
            landed_p99_ms,
            run_span_ms,
            run_p99_ms,
            ..
        } = &row.deliveries;
        let [span_p50, _, span_max] = run_span_ms.unwrap_or_default();
        let [run_p99_p50, _, run_p99_max] = run_p99_ms.unwrap_or_default();
        let crossed =
            crossed_p99_ms.map_or(String::new(), |p99| format!("; p99 of deliveries across Redis {p99:.1} ms"));
        let landed =
            landed_p99_ms.map_or(String::new(), |p99| format!("; p99 until it landed on the socket {p99:.1} ms"));
        let per_delivery_us = row.cpu.0 * 1e6 / (*delivered).max(1) as f64;
        println!(
            "- {} × {}, {}: {}/{} connected, {} subscriptions refused and asked again; {RUNS} runs of {min}–{max} events \
             (made in {span_p50:.1} ms, at most {span_max:.1}; each run's own p99 {run_p99_p50:.1} ms at the median run, \
             {run_p99_max:.1} at the slowest) started and delivered in {:.1} s; CPU servers {:.1} s ({per_delivery_us:.0} µs per delivery), \
             client {:.1} s{crossed}{landed}",
            row.scenario,
            row.subscribers,
            row.reading.name(),
            row.connected,
            row.subscribers,
            row.refused,
            row.wall.as_secs_f64(),
            row.cpu.0,
            row.cpu.1
        );
        if delivered < expected {
            println!("  MISSING: {} deliveries did not arrive within {DELIVERY_DEADLINE:?}", expected - delivered);
        }
        for answer in &row.not_ready {
            println!("  /readyz during the runs: {answer}");
        }
    }
}

fn print_budget(rows: &[Row]) {
    println!();
    println!(
        "Budget: p99 < 100 ms at 10,000 subscribers (every event delivered), read held (the servers' cores to \
         themselves, as with subscribers elsewhere); < 100 KiB per idle subscription"
    );
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    for row in rows {
        let Deliveries { delivered, expected, latency_ms, .. } = &row.deliveries;
        let p99 = latency_ms.map(|[_, p99, _]| p99);
        let p99_text = p99.map_or("-".into(), |v| format!("{v:.1} ms"));
        let latency = match (row.subscribers >= 10_000, row.reading) {
            (true, Reading::Held) => {
                let ok = delivered == expected && p99.is_some_and(|p99| p99 < 100.0);
                format!("p99 {p99_text} ({})", verdict(ok))
            }
            (true, Reading::Eager) => format!("p99 {p99_text} (not budgeted: read on the servers' cores)"),
            (false, _) => "p99 not budgeted below 10,000".to_string(),
        };
        let kib = row.kib_per_subscription();
        println!(
            "- {} × {}, {}: {latency}; {kib:.1} KiB per idle subscription ({})",
            row.scenario,
            row.subscribers,
            row.reading.name(),
            verdict(kib < 100.0)
        );
    }
}

#[tokio::main]
async fn main() {
    let sizes = sizes();
    cluster::ensure_fd_limit(sizes.iter().copied().max().unwrap_or(0) + 1024);
    let readings = match std::env::var("ENSEMBLE_BENCH_READING").as_deref() {
        Ok("held") => vec![Reading::Held],
        Ok("eager") => vec![Reading::Eager],
        _ => vec![Reading::Held, Reading::Eager],
    };
    let mut rows = Vec::new();
    let only = std::env::var("ENSEMBLE_BENCH_TOPOLOGY").unwrap_or_default();
    if only != "pair" {
        for &reading in &readings {
            for &n in &sizes {
                eprintln!("one instance, no Redis, reading {}: {n} subscribers", reading.name());
                rows.push(measure("one instance, no Redis", Topology::Single, reading, n).await);
            }
        }
    }
    match cluster::shared_services_reachable().await {
        _ if only == "single" => {}
        Ok(()) => {
            for &reading in &readings {
                for &n in &sizes {
                    eprintln!("two instances with Redis, reading {}: {n} subscribers", reading.name());
                    rows.push(measure("two instances with Redis", Topology::Pair, reading, n).await);
                }
            }
        }
        Err(reason) => println!("two instances with Redis: skipped ({reason})"),
    }
    print_table(&rows);
    print_budget(&rows);
}
