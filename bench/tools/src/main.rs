//! `ensemble-bench`: the tools `bench/run` drives to put Ensemble side by side with PostGraphile,
//! an in-memory GraphQL ceiling and a static HTTP limit — seeding, tokens, the two helper
//! servers, the load generator and the report. See `bench/README.md`.

mod data;
mod load;
mod memory;
mod procfs;
mod report;
mod seed;
mod shapes;
mod static_server;
mod token;

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::{
    load::{Mode, Settings, Target},
    shapes::{Dialect, Shape},
};

#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Writes the benchmark's data into a migrated, empty database.
    Seed {
        #[arg(long)]
        database_url: String,
    },
    /// Prints an RS256 session token signed with a PEM private key.
    Token {
        #[arg(long)]
        key: PathBuf,
        #[arg(long)]
        issuer: String,
        #[arg(long, default_value = data::ADMIN)]
        user: String,
        #[arg(long, default_value = "admin")]
        role: String,
        #[arg(long, default_value_t = 7200)]
        ttl_secs: i64,
    },
    /// Serves captured answers as they are (the HTTP limit).
    Static {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        answers: PathBuf,
    },
    /// Serves the benchmark's schema from memory (the GraphQL engine's ceiling).
    Memory {
        #[arg(long)]
        listen: SocketAddr,
    },
    /// Prints a TCP port free on 127.0.0.1.
    Port,
    /// Waits until the rest of the machine is idle: less than `--below` of its CPU busy over 2 s.
    Idle {
        #[arg(long, default_value_t = 0.1)]
        below: f64,
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Waits until a target answers `{ __typename }` correctly.
    Wait {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Saves a target's checked answer to every shape, for `static`.
    Capture {
        #[command(flatten)]
        target: TargetArgs,
        #[arg(long)]
        out: PathBuf,
    },
    /// Loads a target with every shape in turn; appends one JSON line per shape to `--out`.
    Load {
        #[command(flatten)]
        target: TargetArgs,
        /// The name the results give the target.
        #[arg(long)]
        name: String,
        /// The server's pid (CPU time, peak memory).
        #[arg(long)]
        pid: Option<u32>,
        /// The PostgreSQL database the target serves from (its processes' CPU and memory).
        #[arg(long)]
        database: Option<String>,
        #[arg(long, default_value_t = 1)]
        round: u32,
        #[arg(long, default_value_t = 32)]
        connections: usize,
        #[arg(long, default_value_t = 3.0)]
        warmup_secs: f64,
        #[arg(long, default_value_t = 10.0)]
        measure_secs: f64,
        /// Only these shapes (all when absent).
        #[arg(long = "shape", value_enum)]
        shapes: Vec<Shape>,
        /// Fixed rates, `shape=requests per second`, one per shape: an open loop instead of a closed one.
        #[arg(long = "rate", value_parser = parse_rate)]
        rates: Vec<(Shape, f64)>,
        /// Fail (exit 1) on any wrong answer.
        #[arg(long)]
        strict: bool,
        #[arg(long)]
        out: PathBuf,
    },
    /// Prints the fixed rate of each shape (`shape=rate` lines): half the peer's median peak.
    Rates {
        #[arg(long)]
        results: PathBuf,
        #[arg(long, default_value = "postgraphile")]
        peer: String,
    },
    /// Writes RESULTS.md from the results; `--strict` fails on wrong answers or unequal sizes.
    Report {
        #[arg(long)]
        results: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// `key=value` facts about the run (machine, versions, settings).
        #[arg(long = "meta", value_parser = parse_meta)]
        meta: Vec<(String, String)>,
        #[arg(long)]
        strict: bool,
    },
}

#[derive(Args)]
struct TargetArgs {
    /// `http://127.0.0.1:PORT/graphql`; `{shape}` is replaced by the shape's name.
    #[arg(long)]
    url: String,
    #[arg(long, value_enum, default_value = "ensemble")]
    dialect: Dialect,
    /// Sent as a bearer token.
    #[arg(long)]
    token: Option<String>,
}

impl TargetArgs {
    fn target(self, name: &str, pid: Option<u32>, database: Option<String>) -> Target {
        Target { name: name.into(), url: self.url, dialect: self.dialect, token: self.token, pid, database }
    }
}

fn parse_rate(value: &str) -> Result<(Shape, f64), String> {
    let (shape, rate) = value.split_once('=').ok_or("expected shape=rate")?;
    let shape = Shape::parse(shape).ok_or_else(|| format!("unknown shape {shape}"))?;
    let rate: f64 = rate.parse().map_err(|_| format!("bad rate {rate}"))?;
    if rate > 0.0 { Ok((shape, rate)) } else { Err("a rate is above 0".into()) }
}

fn parse_meta(value: &str) -> Result<(String, String), String> {
    value.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| "expected key=value".into())
}

/// Resolves on SIGTERM or Ctrl-C: the helper servers then stop accepting and finish.
async fn terminated() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn runtime(threads: bool) -> Result<tokio::runtime::Runtime, String> {
    let mut builder = if threads {
        tokio::runtime::Builder::new_multi_thread()
    } else {
        tokio::runtime::Builder::new_current_thread()
    };
    builder.enable_all().build().map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    match run(Cli::parse().command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ensemble-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Seed { database_url } => {
            let counts = runtime(false)?.block_on(seed::seed(&database_url))?;
            eprintln!("seeded {counts}");
            Ok(())
        }
        Command::Token { key, issuer, user, role, ttl_secs } => {
            let pem = std::fs::read_to_string(&key).map_err(|e| format!("cannot read {}: {e}", key.display()))?;
            println!("{}", token::sign(&pem, &issuer, &user, &role, ttl_secs)?);
            Ok(())
        }
        Command::Static { listen, answers } => runtime(true)?.block_on(static_server::serve(listen, &answers)),
        Command::Memory { listen } => runtime(true)?.block_on(memory::serve(listen)),
        Command::Port => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
            println!("{}", listener.local_addr().map_err(|e| e.to_string())?.port());
            Ok(())
        }
        Command::Idle { below, timeout_secs } => {
            let deadline = std::time::Instant::now() + Duration::from_secs(timeout_secs);
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            loop {
                let before = procfs::machine_busy_seconds();
                std::thread::sleep(Duration::from_secs(2));
                let busy = (procfs::machine_busy_seconds() - before) / (2.0 * cores);
                if busy < below {
                    return Ok(());
                }
                if std::time::Instant::now() >= deadline {
                    eprintln!(
                        "ensemble-bench: the machine is still {:.0} % busy after {timeout_secs} s; going on",
                        busy * 100.0
                    );
                    return Ok(());
                }
            }
        }
        Command::Wait { target, timeout_secs } => {
            let target = target.target("target", None, None);
            runtime(false)?.block_on(load::wait_ready(&target, Duration::from_secs(timeout_secs)))
        }
        Command::Capture { target, out } => {
            let target = target.target("target", None, None);
            runtime(false)?.block_on(load::capture(&target, &out))
        }
        Command::Load {
            target,
            name,
            pid,
            database,
            round,
            connections,
            warmup_secs,
            measure_secs,
            shapes,
            rates,
            strict,
            out,
        } => {
            let target = target.target(&name, pid, database);
            let settings = Settings {
                connections,
                warmup: Duration::from_secs_f64(warmup_secs),
                measure: Duration::from_secs_f64(measure_secs),
                round,
            };
            let rates: BTreeMap<&str, f64> = rates.iter().map(|(s, r)| (s.name(), *r)).collect();
            let shapes = if shapes.is_empty() { Shape::ALL.to_vec() } else { shapes };
            runtime(false)?.block_on(load_all(&target, &shapes, &settings, &rates, strict, &out))
        }
        Command::Rates { results, peer } => {
            for (shape, rate) in report::rates(&report::read(&results)?, &peer)? {
                println!("{}={rate:.1}", shape.name());
            }
            Ok(())
        }
        Command::Report { results, out, meta, strict } => {
            let outcomes = report::read(&results)?;
            let meta: BTreeMap<String, String> = meta.into_iter().collect();
            std::fs::write(&out, report::render(&outcomes, &meta)).map_err(|e| e.to_string())?;
            let problems = report::problems(&outcomes);
            if strict && !problems.is_empty() {
                return Err(format!("{} problem(s):\n{}", problems.len(), problems.join("\n")));
            }
            Ok(())
        }
    }
}

/// The shapes in turn against one target, each line written as soon as it is measured.
async fn load_all(
    target: &Target,
    shapes: &[Shape],
    settings: &Settings,
    rates: &BTreeMap<&str, f64>,
    strict: bool,
    out: &std::path::Path,
) -> Result<(), String> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(out)
        .map_err(|e| format!("cannot open {}: {e}", out.display()))?;
    let mut wrong = Vec::new();
    for &shape in shapes {
        let mode = if rates.is_empty() {
            Mode::Peak
        } else {
            Mode::Fixed(*rates.get(shape.name()).ok_or_else(|| format!("no rate for {}", shape.name()))?)
        };
        let outcome = load::run(target, shape, mode, settings).await;
        eprintln!(
            "  {:<16} {:<9} {:>9.1} req/s  p50 {:>8.3} ms  p99 {:>8.3} ms  {} B  {} wrong{}",
            target.name,
            shape.name(),
            outcome.rps,
            outcome.latency.p50_us as f64 / 1000.0,
            outcome.latency.p99_us as f64 / 1000.0,
            outcome.answer_bytes.unwrap_or(0),
            outcome.faults.total(),
            outcome.failed.as_deref().map(|f| format!("  FAILED: {f}")).unwrap_or_default(),
        );
        if outcome.failed.is_some() || outcome.faults.total() > 0 {
            wrong.push(format!(
                "{} {}: {:?} {}",
                target.name,
                shape.name(),
                outcome.failed,
                outcome.samples.join(" | ")
            ));
        }
        let line = serde_json::to_string(&outcome).map_err(|e| e.to_string())?;
        writeln!(file, "{line}").map_err(|e| e.to_string())?;
    }
    if strict && !wrong.is_empty() {
        return Err(format!("wrong answers:\n{}", wrong.join("\n")));
    }
    Ok(())
}
