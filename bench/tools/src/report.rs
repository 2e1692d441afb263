//! `ensemble-bench report` and `rates`: reads the runs' lines (`results.jsonl`) and writes
//! `RESULTS.md` — per shape and target the median of the rounds, requests per CPU-second, peak
//! memory, the fixed-rate latencies, answer sizes, and the ratios the issue asks for — or prints
//! the fixed rates (half the peer's peak) for the open-loop runs.

use std::{collections::BTreeMap, fmt::Write};

use crate::{
    load::{Faults, Outcome},
    shapes::Shape,
};

/// The targets in the order they are shown, with what each one is.
const TARGETS: [(&str, &str); 5] = [
    ("static", "static axum (HTTP limit)"),
    ("memory", "in-memory async-graphql (engine ceiling)"),
    ("ensemble-sqlite", "Ensemble on SQLite"),
    ("ensemble-pg", "Ensemble on PostgreSQL"),
    ("postgraphile", "PostGraphile 4"),
];
/// The targets that speak Ensemble's schema, whose answers must be the same size.
const SAME_SHAPE: [&str; 4] = ["static", "memory", "ensemble-sqlite", "ensemble-pg"];

pub fn read(path: &std::path::Path) -> Result<Vec<Outcome>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("bad line in {}: {e}", path.display())))
        .collect()
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(values[n / 2]),
        _ => Some((values[n / 2 - 1] + values[n / 2]) / 2.0),
    }
}

/// One target's runs of one shape in one mode, summed up.
#[derive(Default)]
struct Summary {
    rps: Vec<f64>,
    p50: Option<f64>,
    p99: Option<f64>,
    p999: Option<f64>,
    ok: u64,
    server_cpu: f64,
    postgres_cpu: Option<f64>,
    /// The load generator's CPU seconds and the measured seconds, over all rounds.
    client_cpu: f64,
    seconds: f64,
    /// Other work's CPU seconds meanwhile, and the machine's capacity over those seconds.
    other_cpu: f64,
    capacity: f64,
    faults: Faults,
    dropped: u64,
    sizes: Vec<usize>,
    failed: Vec<String>,
    rate: Option<f64>,
}

impl Summary {
    fn of(outcomes: &[Outcome], target: &str, shape: &str, mode: &str) -> Option<Self> {
        let runs: Vec<&Outcome> =
            outcomes.iter().filter(|o| o.target == target && o.shape == shape && o.mode == mode).collect();
        if runs.is_empty() {
            return None;
        }
        let measured: Vec<&&Outcome> = runs.iter().filter(|o| o.failed.is_none()).collect();
        let mut s = Summary {
            rps: measured.iter().map(|o| o.rps).collect(),
            p50: median(measured.iter().map(|o| o.latency.p50_us as f64).collect()),
            p99: median(measured.iter().map(|o| o.latency.p99_us as f64).collect()),
            p999: median(measured.iter().map(|o| o.latency.p999_us as f64).collect()),
            ok: measured.iter().map(|o| o.ok).sum(),
            server_cpu: measured.iter().filter_map(|o| o.server_cpu_s).sum(),
            postgres_cpu: measured.iter().map(|o| o.postgres_cpu_s).sum::<Option<f64>>(),
            client_cpu: measured.iter().map(|o| o.client_cpu_s).sum(),
            seconds: measured.iter().map(|o| o.seconds).sum(),
            other_cpu: measured.iter().map(|o| o.other_cpu_s).sum(),
            capacity: measured.iter().map(|o| o.seconds * o.cores as f64).sum(),
            ..Summary::default()
        };
        for o in &runs {
            s.faults.status += o.faults.status;
            s.faults.errors += o.faults.errors;
            s.faults.size += o.faults.size;
            s.faults.transport += o.faults.transport;
            s.dropped += o.dropped;
            s.sizes.extend(o.answer_bytes);
            s.failed.extend(o.failed.clone());
            s.rate = s.rate.or(o.rate);
        }
        s.sizes.sort_unstable();
        s.sizes.dedup();
        Some(s)
    }

    fn rps(&self) -> Option<f64> {
        median(self.rps.clone())
    }

    fn per_server_cpu(&self) -> Option<f64> {
        (self.server_cpu > 0.0).then(|| self.ok as f64 / self.server_cpu)
    }

    /// How much of the machine other work took.
    fn others(&self) -> Option<f64> {
        (self.capacity > 0.0).then(|| self.other_cpu / self.capacity)
    }

    /// How busy the load generator was, as a share of one core.
    fn client_load(&self) -> Option<f64> {
        (self.seconds > 0.0).then(|| self.client_cpu / self.seconds)
    }

    fn per_cpu_with_postgres(&self) -> Option<f64> {
        let cpu = self.server_cpu + self.postgres_cpu?;
        (cpu > 0.0).then(|| self.ok as f64 / cpu)
    }
}

/// The fixed rate of each shape: half the `peer`'s median peak.
pub fn rates(outcomes: &[Outcome], peer: &str) -> Result<Vec<(Shape, f64)>, String> {
    Shape::ALL
        .into_iter()
        .map(|shape| {
            let peak = Summary::of(outcomes, peer, shape.name(), "peak").and_then(|s| s.rps());
            match peak {
                Some(rps) if rps > 0.0 => Ok((shape, (rps / 2.0).max(1.0))),
                _ => Err(format!("no peak rate of {peer} for {}", shape.name())),
            }
        })
        .collect()
}

/// What must not happen in a run: wrong answers, runs that could not start, answers of
/// different sizes among the targets that speak the same schema.
pub fn problems(outcomes: &[Outcome]) -> Vec<String> {
    let mut problems = Vec::new();
    for o in outcomes {
        if let Some(failed) = &o.failed {
            problems.push(format!("{} {} ({}): {failed}", o.target, o.shape, o.mode));
        }
        if o.faults.total() > 0 {
            problems.push(format!(
                "{} {} ({}, round {}): {} wrong answers: {}",
                o.target,
                o.shape,
                o.mode,
                o.round,
                o.faults.total(),
                o.samples.join(" | ")
            ));
        }
    }
    for shape in Shape::ALL {
        let sizes: BTreeMap<&str, Vec<usize>> = SAME_SHAPE
            .iter()
            .filter_map(|t| Summary::of(outcomes, t, shape.name(), "peak").map(|s| (*t, s.sizes)))
            .collect();
        let distinct: std::collections::BTreeSet<&usize> = sizes.values().flatten().collect();
        if distinct.len() > 1 {
            problems.push(format!("{}: answers of different sizes {sizes:?}", shape.name()));
        }
    }
    problems
}

fn ms(us: Option<f64>) -> String {
    match us {
        None => "—".into(),
        Some(us) if us < 1000.0 => format!("{:.3} ms", us / 1000.0),
        Some(us) if us < 10_000.0 => format!("{:.2} ms", us / 1000.0),
        Some(us) => format!("{:.1} ms", us / 1000.0),
    }
}

fn count(value: Option<f64>) -> String {
    match value {
        None => "—".into(),
        Some(v) if v >= 100.0 => format!("{v:.0}"),
        Some(v) => format!("{v:.1}"),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

fn times(value: Option<f64>) -> String {
    match value {
        None => "—".into(),
        Some(v) if v >= 10.0 => format!("{v:.0}×"),
        Some(v) => format!("{v:.2}×"),
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or("—".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}

fn label(target: &str) -> &str {
    TARGETS.iter().find(|(t, _)| *t == target).map_or(target, |(_, l)| l)
}

fn faults(s: &Summary) -> String {
    let f = &s.faults;
    let mut parts = Vec::new();
    for (n, what) in [(f.status, "status"), (f.errors, "errors"), (f.size, "size"), (f.transport, "transport")] {
        if n > 0 {
            parts.push(format!("{n} {what}"));
        }
    }
    if !s.failed.is_empty() {
        parts.push(format!("{} runs failed", s.failed.len()));
    }
    if parts.is_empty() { "0".into() } else { parts.join(", ") }
}

/// Peak memory of a target over all its runs: the server's VmHWM and PostgreSQL's summed PSS.
fn memory(outcomes: &[Outcome], target: &str) -> (Option<u64>, Option<u64>) {
    let runs = outcomes.iter().filter(|o| o.target == target);
    let server = runs.clone().filter_map(|o| o.server_peak_kib).max();
    let postgres = runs.filter_map(|o| o.postgres_peak_pss_kib).max();
    (server, postgres)
}

/// The share of the machine other work took over all measured seconds, and in the busiest run.
fn interference(outcomes: &[Outcome]) -> (Option<f64>, Option<f64>) {
    let capacity: f64 = outcomes.iter().map(|o| o.seconds * o.cores as f64).sum();
    let average = (capacity > 0.0).then(|| outcomes.iter().map(|o| o.other_cpu_s).sum::<f64>() / capacity);
    let worst = outcomes
        .iter()
        .filter(|o| o.cores > 0 && o.seconds > 0.0)
        .map(|o| o.other_cpu_s / (o.seconds * o.cores as f64))
        .reduce(f64::max);
    (average, worst)
}

fn meta<'a>(meta: &'a BTreeMap<String, String>, key: &str) -> &'a str {
    meta.get(key).map_or("?", String::as_str)
}

pub fn render(outcomes: &[Outcome], info: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let peak = |t: &str, s: Shape| Summary::of(outcomes, t, s.name(), "peak");
    let fixed = |t: &str, s: Shape| Summary::of(outcomes, t, s.name(), "fixed");
    let rps = |t: &str, s: Shape| peak(t, s).and_then(|s| s.rps());

    let _ = writeln!(out, "# Benchmarks side by side\n");
    let _ = writeln!(
        out,
        "Written by `bench/run{}` on {} (commit {}). How it is done, and where Ensemble's time goes: \
         [README.md](README.md).\n",
        if meta(info, "mode") == "smoke" { " --smoke" } else { "" },
        meta(info, "date"),
        meta(info, "commit"),
    );
    let _ = writeln!(
        out,
        "- **Machine**: {}, {} cores, Linux {}, {} MiB RAM.",
        meta(info, "cpu"),
        meta(info, "cores"),
        meta(info, "kernel"),
        meta(info, "memory_mib")
    );
    let _ = writeln!(out, "- **Quiet?** {}", meta(info, "quiet"));
    let (others, worst) = interference(outcomes);
    let _ = writeln!(
        out,
        "- **Other work during the measured seconds**: {} of the machine's CPU on average, {} in the busiest run (column \"other work\" below).",
        percent(others),
        percent(worst)
    );
    let _ = writeln!(
        out,
        "- **Load**: {} rounds, targets interleaved (the order turns each round), per shape {} s warm-up + {} s measured, {} connections (HTTP/1.1 keep-alive); then one fixed-rate run per target and shape at half PostGraphile's median peak for that shape ({} s warm-up + {} s), latency measured from each request's intended start.",
        meta(info, "rounds"),
        meta(info, "warmup"),
        meta(info, "measure"),
        meta(info, "connections"),
        meta(info, "warmup"),
        meta(info, "fixed_measure"),
    );
    let _ = writeln!(
        out,
        "- **Load generator**: ensemble-bench {} (bench/tools: hyper {}, hdrhistogram {}), one thread, on the same machine.",
        env!("CARGO_PKG_VERSION"),
        meta(info, "hyper"),
        meta(info, "hdrhistogram"),
    );
    let _ = writeln!(
        out,
        "- **Software**: Ensemble {} ({} build, `ENSEMBLE_ENV=production`, rate limits off), PostgreSQL {}, PostGraphile {} on Node {} (`NODE_ENV=production`), SQLite bundled with sqlx.",
        meta(info, "ensemble"),
        meta(info, "profile"),
        meta(info, "postgres"),
        meta(info, "postgraphile"),
        meta(info, "node"),
    );
    let _ = writeln!(
        out,
        "- **Data**: 1,000 teams × 5 members over 1,000 users, the same rows in SQLite and PostgreSQL.\n"
    );

    verdict(&mut out, outcomes, &rps, &fixed);

    let _ = writeln!(out, "## Peak (closed loop, {} connections)\n", meta(info, "connections"));
    let _ = writeln!(
        out,
        "Median of the rounds (req/s with the lowest and highest round); latencies are the median of each round's \
         percentile; requests per CPU-second sum all rounds (CPU from `/proc/PID/stat`, utime + stime, over the \
         measured seconds; PostgreSQL's over its processes the same way). The load generator's CPU is its own, as a \
         share of one of the 2 cores it shares with the target; \"other work\" is what the rest of the machine \
         (other processes, other databases' backends) used meanwhile, as a share of all its cores (`/proc/stat`).\n"
    );
    for shape in Shape::ALL {
        let _ = writeln!(out, "### {}\n", shape_title(shape));
        let _ = writeln!(
            out,
            "| target | req/s (min–max) | p50 | p99 | p99.9 | req per server CPU-s | req per CPU-s with PostgreSQL | of static | load generator CPU | other work | answer bytes | wrong answers |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
        let limit = rps("static", shape);
        for (target, _) in TARGETS {
            let Some(s) = peak(target, shape) else { continue };
            let range = match (s.rps.iter().copied().reduce(f64::min), s.rps.iter().copied().reduce(f64::max)) {
                (Some(lo), Some(hi)) if s.rps.len() > 1 => format!(" ({}–{})", count(Some(lo)), count(Some(hi))),
                _ => String::new(),
            };
            let _ = writeln!(
                out,
                "| {} | {}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                label(target),
                count(s.rps()),
                range,
                ms(s.p50),
                ms(s.p99),
                ms(s.p999),
                count(s.per_server_cpu()),
                count(s.per_cpu_with_postgres()),
                if target == "static" { "—".into() } else { percent(ratio(s.rps(), limit)) },
                percent(s.client_load()),
                percent(s.others()),
                sizes(&s.sizes),
                faults(&s),
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Fixed rate (open loop, latency from the intended start)\n");
    let _ = writeln!(
        out,
        "Every target gets the same rate per shape: half of PostGraphile's median peak. A target that cannot keep up shows it in its achieved rate and its latencies (queued requests wait, and the wait counts).\n"
    );
    for shape in Shape::ALL {
        let rate = TARGETS.iter().find_map(|(t, _)| fixed(t, shape).and_then(|s| s.rate));
        let _ = writeln!(out, "### {} at {} req/s\n", shape_title(shape), count(rate));
        let _ = writeln!(
            out,
            "| target | achieved req/s | p50 | p99 | p99.9 | not sent (queue left at the end) | wrong answers |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
        for (target, _) in TARGETS {
            let Some(s) = fixed(target, shape) else { continue };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                label(target),
                count(s.rps()),
                ms(s.p50),
                ms(s.p99),
                ms(s.p999),
                s.dropped,
                faults(&s)
            );
        }
        let _ = writeln!(out);
    }

    let _ = writeln!(out, "## Memory (peak over all of a target's runs)\n");
    let _ = writeln!(
        out,
        "Server: the process's `VmHWM` (peak resident set since it started; each target starts afresh for every round), read after each shape. PostgreSQL: the sum of `Pss` from `/proc/PID/smaps_rollup` over the postmaster, its background processes and the backends of the benchmark's database (backends of other databases on the same server are left out), sampled every 250 ms during each run; the highest sum.\n"
    );
    let _ = writeln!(out, "| target | server | PostgreSQL | together |");
    let _ = writeln!(out, "| --- | --- | --- | --- |");
    for (target, _) in TARGETS {
        let (server, postgres) = memory(outcomes, target);
        if server.is_none() {
            continue;
        }
        let together = server.map(|s| s + postgres.unwrap_or(0));
        let _ = writeln!(out, "| {} | {} | {} | {} |", label(target), mib(server), mib(postgres), mib(together));
    }
    let _ = writeln!(out);

    ratios(&mut out, outcomes, &rps, &fixed);
    answer_sizes(&mut out, outcomes);

    let problems = problems(outcomes);
    let _ = writeln!(out, "## Wrong answers\n");
    if problems.is_empty() {
        let _ = writeln!(
            out,
            "None: every answer counted had status 200, no `errors`, and the size of the first correct answer of its target and shape."
        );
    } else {
        for p in problems {
            let _ = writeln!(out, "- {p}");
        }
    }
    out
}

fn shape_title(shape: Shape) -> &'static str {
    match shape {
        Shape::Typename => "`{ __typename }`",
        Shape::Team => "One team by id",
        Shape::Flat => "50 teams, flat",
        Shape::Nested => "50 teams × members × user (nested)",
        Shape::Mutation => "Mutation: `updateTeam` description",
    }
}

fn percent(value: Option<f64>) -> String {
    match value {
        None => "—".into(),
        Some(v) if v < 0.0995 => format!("{:.1} %", v * 100.0),
        Some(v) => format!("{:.0} %", v * 100.0),
    }
}

fn sizes(sizes: &[usize]) -> String {
    if sizes.is_empty() { "—".into() } else { sizes.iter().map(usize::to_string).collect::<Vec<_>>().join(", ") }
}

fn verdict(
    out: &mut String,
    outcomes: &[Outcome],
    rps: &dyn Fn(&str, Shape) -> Option<f64>,
    fixed: &dyn Fn(&str, Shape) -> Option<Summary>,
) {
    let nested = Shape::Nested;
    let speed = ratio(rps("ensemble-pg", nested), rps("postgraphile", nested));
    let p99 =
        ratio(fixed("ensemble-pg", nested).and_then(|s| s.p99), fixed("postgraphile", nested).and_then(|s| s.p99));
    let (ens_mem, ens_pg) = memory(outcomes, "ensemble-pg");
    let (pgl_mem, pgl_pg) = memory(outcomes, "postgraphile");
    let mem = ratio(ens_mem.map(|k| k as f64), pgl_mem.map(|k| k as f64));
    let mem_with_pg =
        ratio(ens_mem.map(|k| (k + ens_pg.unwrap_or(0)) as f64), pgl_mem.map(|k| (k + pgl_pg.unwrap_or(0)) as f64));
    let ceiling = ratio(rps("ensemble-sqlite", nested), rps("memory", nested));
    let met = |ok: Option<bool>| match ok {
        Some(true) => "yes",
        Some(false) => "**no**",
        None => "—",
    };
    let _ = writeln!(out, "## The issue's targets for Ensemble (nested query)\n");
    let _ = writeln!(out, "| goal | measured | met |");
    let _ = writeln!(out, "| --- | --- | --- |");
    let _ = writeln!(
        out,
        "| PostgreSQL: ≥ 3× PostGraphile's req/s | {} | {} |",
        times(speed),
        met(speed.map(|r| r >= 3.0))
    );
    let _ = writeln!(
        out,
        "| PostgreSQL: ≤ ⅓ of PostGraphile's p99 (both at the same fixed rate) | {} | {} |",
        times(p99),
        met(p99.map(|r| r <= 1.0 / 3.0))
    );
    let _ = writeln!(
        out,
        "| PostgreSQL: ≤ ¼ of PostGraphile's memory (server process) | {} ({} against {}) | {} |",
        times(mem),
        mib(ens_mem),
        mib(pgl_mem),
        met(mem.map(|r| r <= 0.25))
    );
    let _ = writeln!(
        out,
        "| same, PostgreSQL's processes included | {} | {} |",
        times(mem_with_pg),
        met(mem_with_pg.map(|r| r <= 0.25))
    );
    let _ = writeln!(
        out,
        "| SQLite: ≥ 50 % of the in-memory ceiling's req/s | {} | {} |\n",
        percent(ceiling),
        met(ceiling.map(|r| r >= 0.5))
    );
}

fn ratios(
    out: &mut String,
    outcomes: &[Outcome],
    rps: &dyn Fn(&str, Shape) -> Option<f64>,
    fixed: &dyn Fn(&str, Shape) -> Option<Summary>,
) {
    let peak = |t: &str, s: Shape| Summary::of(outcomes, t, s.name(), "peak");
    let _ = writeln!(out, "## Ratios\n");
    let _ = writeln!(out, "### Ensemble on PostgreSQL ÷ PostGraphile\n");
    let _ = writeln!(out, "| shape | req/s | p99 at the fixed rate | p99 at peak | req per CPU-s with PostgreSQL |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for shape in Shape::ALL {
        let efficiency = ratio(
            peak("ensemble-pg", shape).and_then(|s| s.per_cpu_with_postgres()),
            peak("postgraphile", shape).and_then(|s| s.per_cpu_with_postgres()),
        );
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            shape.name(),
            times(ratio(rps("ensemble-pg", shape), rps("postgraphile", shape))),
            times(ratio(
                fixed("ensemble-pg", shape).and_then(|s| s.p99),
                fixed("postgraphile", shape).and_then(|s| s.p99)
            )),
            times(ratio(
                peak("ensemble-pg", shape).and_then(|s| s.p99),
                peak("postgraphile", shape).and_then(|s| s.p99)
            )),
            times(efficiency),
        );
    }
    let (ens, ens_pg) = memory(outcomes, "ensemble-pg");
    let (pgl, pgl_pg) = memory(outcomes, "postgraphile");
    let _ = writeln!(
        out,
        "\nMemory: server {} ({} ÷ {}); with PostgreSQL {} ({} ÷ {}).\n",
        times(ratio(ens.map(|k| k as f64), pgl.map(|k| k as f64))),
        mib(ens),
        mib(pgl),
        times(ratio(ens.map(|k| (k + ens_pg.unwrap_or(0)) as f64), pgl.map(|k| (k + pgl_pg.unwrap_or(0)) as f64))),
        mib(ens.map(|k| k + ens_pg.unwrap_or(0))),
        mib(pgl.map(|k| k + pgl_pg.unwrap_or(0))),
    );
    let _ = writeln!(out, "### Ensemble on SQLite ÷ the in-memory ceiling (req/s)\n");
    let _ = writeln!(out, "| shape | req/s |");
    let _ = writeln!(out, "| --- | --- |");
    for shape in Shape::ALL {
        let _ = writeln!(
            out,
            "| {} | {} |",
            shape.name(),
            percent(ratio(rps("ensemble-sqlite", shape), rps("memory", shape)))
        );
    }
    let _ = writeln!(out, "\n### Each ÷ the static limit (req/s)\n");
    let _ = writeln!(out, "| shape | in-memory | Ensemble SQLite | Ensemble PostgreSQL | PostGraphile |");
    let _ = writeln!(out, "| --- | --- | --- | --- | --- |");
    for shape in Shape::ALL {
        let of = |t: &str| percent(ratio(rps(t, shape), rps("static", shape)));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} |",
            shape.name(),
            of("memory"),
            of("ensemble-sqlite"),
            of("ensemble-pg"),
            of("postgraphile")
        );
    }
    let _ = writeln!(out);
}

fn answer_sizes(out: &mut String, outcomes: &[Outcome]) {
    let _ = writeln!(out, "## Answer sizes (bytes)\n");
    let _ = writeln!(
        out,
        "| shape | static | in-memory | Ensemble SQLite | Ensemble PostgreSQL | PostGraphile | PostGraphile − Ensemble |"
    );
    let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
    for shape in Shape::ALL {
        let of = |t: &str| Summary::of(outcomes, t, shape.name(), "peak").map(|s| s.sizes).unwrap_or_default();
        let ensemble = of("ensemble-pg");
        let postgraphile = of("postgraphile");
        let difference = match (ensemble.first(), postgraphile.first()) {
            (Some(&e), Some(&p)) => format!("{:+}", p as i64 - e as i64),
            _ => "—".into(),
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            shape.name(),
            sizes(&of("static")),
            sizes(&of("memory")),
            sizes(&of("ensemble-sqlite")),
            sizes(&ensemble),
            sizes(&postgraphile),
            difference
        );
    }
    let _ = writeln!(
        out,
        "\nPostGraphile answers the same JSON shape through aliases, with enum values in the case the \
         rows hold them (`private`, `owner` for Ensemble's `PRIVATE`, `OWNER`: same length). Its mutation \
         payload wraps the team in `{{\"team\": …}}`, which no alias can remove: 9 bytes more.\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(target: &str, shape: &str, rps: f64, bytes: usize) -> Outcome {
        Outcome {
            target: target.into(),
            shape: shape.into(),
            mode: "peak".into(),
            rps,
            answer_bytes: Some(bytes),
            ..Outcome::default()
        }
    }

    #[test]
    fn the_fixed_rate_is_half_the_peers_median_peak() {
        let mut outcomes = Vec::new();
        for shape in Shape::ALL {
            for rps in [100.0, 300.0, 200.0] {
                outcomes.push(outcome("postgraphile", shape.name(), rps, 10));
            }
        }
        let rates = rates(&outcomes, "postgraphile").unwrap();
        assert!(rates.iter().all(|(_, r)| *r == 100.0));
    }

    #[test]
    fn answers_of_different_sizes_among_ensembles_schema_are_a_problem() {
        let same = vec![outcome("memory", "nested", 1.0, 100), outcome("ensemble-pg", "nested", 1.0, 100)];
        assert!(problems(&same).is_empty());
        let different = vec![outcome("memory", "nested", 1.0, 100), outcome("ensemble-pg", "nested", 1.0, 101)];
        assert_eq!(problems(&different).len(), 1);
        let postgraphile = vec![outcome("memory", "mutation", 1.0, 100), outcome("postgraphile", "mutation", 1.0, 109)];
        assert!(problems(&postgraphile).is_empty());
    }
}
