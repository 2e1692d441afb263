//! Counters of runs, model calls, budget refusals and workflow steps for `/metrics`. Every
//! label comes from a small fixed set — run and step statuses, error classes, principal kinds,
//! budget measures — or, for providers, from the server's configuration; never an id.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use super::escape_label;

/// Upper bounds (seconds) of the model-call latency buckets.
const CALL_BUCKETS: [f64; 12] = [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];
/// Providers come from the configuration; past this many names the rest count as `other`.
const MAX_PROVIDERS: usize = 64;
/// How a run ends, as `runs_finished_total` labels it.
pub const RUN_STATUSES: [&str; 3] = ["succeeded", "failed", "cancelled"];
/// How a workflow step ends.
pub const STEP_STATUSES: [&str; 3] = ["succeeded", "failed", "skipped"];

#[derive(Default)]
pub struct RunMetrics {
    started: AtomicU64,
    /// By `RUN_STATUSES`.
    finished: [AtomicU64; 3],
    /// By provider name.
    calls: Mutex<BTreeMap<String, Calls>>,
    /// By (principal kind, budget measure).
    budget_refusals: Mutex<BTreeMap<(String, &'static str), u64>>,
    /// By `STEP_STATUSES`.
    workflow_steps: [AtomicU64; 3],
}

/// The calls to one provider: a latency histogram, and its errors by class.
#[derive(Default)]
struct Calls {
    buckets: [u64; CALL_BUCKETS.len()],
    count: u64,
    seconds: f64,
    errors: BTreeMap<&'static str, u64>,
}

impl RunMetrics {
    /// A run was stored and started.
    pub fn run_started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    /// `count` runs ended with `status` (one of `RUN_STATUSES`; anything else is ignored).
    pub fn runs_finished(&self, status: &str, count: u64) {
        if let Some(i) = RUN_STATUSES.iter().position(|s| *s == status) {
            self.finished[i].fetch_add(count, Ordering::Relaxed);
        }
    }

    /// A call to `provider` (a configured provider's name) answered after `elapsed`, with an
    /// error of `error_class` or none.
    pub fn model_call(&self, provider: &str, elapsed: Duration, error_class: Option<&'static str>) {
        let Ok(mut calls) = self.calls.lock() else {
            return;
        };
        let provider = if calls.contains_key(provider) || calls.len() < MAX_PROVIDERS { provider } else { "other" };
        let calls = calls.entry(provider.to_string()).or_default();
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in calls.buckets.iter_mut().zip(CALL_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        calls.count += 1;
        calls.seconds += secs;
        if let Some(class) = error_class {
            *calls.errors.entry(class).or_default() += 1;
        }
    }

    /// A run was refused because it did not fit the `budget` (`tokens` or `cost`) of a
    /// `principal` (`user` or `api_key`).
    pub fn budget_refused(&self, principal: &str, budget: &'static str) {
        if let Ok(mut refusals) = self.budget_refusals.lock() {
            *refusals.entry((principal.to_string(), budget)).or_default() += 1;
        }
    }

    /// A workflow step ended with `status` (one of `STEP_STATUSES`).
    pub fn workflow_step(&self, status: &str) {
        if let Some(i) = STEP_STATUSES.iter().position(|s| *s == status) {
            self.workflow_steps[i].fetch_add(1, Ordering::Relaxed);
        }
    }

    pub fn render(&self, out: &mut String) {
        help(out, "ensemble_runs_started_total", "counter", "Runs started on this instance.");
        let _ = writeln!(out, "ensemble_runs_started_total {}", self.started.load(Ordering::Relaxed));
        help(out, "ensemble_runs_finished_total", "counter", "Runs ended by this instance, by status.");
        for (status, n) in RUN_STATUSES.iter().zip(&self.finished) {
            let _ = writeln!(out, "ensemble_runs_finished_total{{status=\"{status}\"}} {}", n.load(Ordering::Relaxed));
        }
        self.render_calls(out);
        help(
            out,
            "ensemble_budget_refusals_total",
            "counter",
            "Runs refused by a daily budget, by principal and budget.",
        );
        if let Ok(refusals) = self.budget_refusals.lock() {
            for ((principal, budget), n) in refusals.iter() {
                let _ = writeln!(
                    out,
                    "ensemble_budget_refusals_total{{principal=\"{principal}\",budget=\"{budget}\"}} {n}"
                );
            }
        }
        help(out, "ensemble_workflow_steps_total", "counter", "Workflow steps ended, by status.");
        for (status, n) in STEP_STATUSES.iter().zip(&self.workflow_steps) {
            let _ = writeln!(out, "ensemble_workflow_steps_total{{status=\"{status}\"}} {}", n.load(Ordering::Relaxed));
        }
    }

    fn render_calls(&self, out: &mut String) {
        let Ok(calls) = self.calls.lock() else {
            return;
        };
        let metric = "ensemble_model_call_duration_seconds";
        help(out, metric, "histogram", "Time a model provider took to answer a call, by provider.");
        for (provider, calls) in calls.iter() {
            let provider = escape_label(provider);
            for (n, bound) in calls.buckets.iter().zip(CALL_BUCKETS) {
                let _ = writeln!(out, "{metric}_bucket{{provider=\"{provider}\",le=\"{bound}\"}} {n}");
            }
            let _ = writeln!(out, "{metric}_bucket{{provider=\"{provider}\",le=\"+Inf\"}} {}", calls.count);
            let _ = writeln!(out, "{metric}_sum{{provider=\"{provider}\"}} {}", calls.seconds);
            let _ = writeln!(out, "{metric}_count{{provider=\"{provider}\"}} {}", calls.count);
        }
        let metric = "ensemble_provider_errors_total";
        help(out, metric, "counter", "Model calls answered with an error, by provider and error class.");
        for (provider, calls) in calls.iter() {
            let provider = escape_label(provider);
            for (class, n) in &calls.errors {
                let _ = writeln!(out, "{metric}{{provider=\"{provider}\",class=\"{class}\"}} {n}");
            }
        }
    }
}

fn help(out: &mut String, metric: &str, kind: &str, text: &str) {
    let _ = writeln!(out, "# HELP {metric} {text}\n# TYPE {metric} {kind}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_fill_every_bucket_at_or_above_their_latency_and_count_errors_by_class() {
        let metrics = RunMetrics::default();
        metrics.model_call("local", Duration::from_millis(300), None);
        metrics.model_call("local", Duration::from_millis(70), Some("server_error"));
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(
            text.contains("ensemble_model_call_duration_seconds_bucket{provider=\"local\",le=\"0.05\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("ensemble_model_call_duration_seconds_bucket{provider=\"local\",le=\"0.1\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("ensemble_model_call_duration_seconds_bucket{provider=\"local\",le=\"0.5\"} 2"),
            "{text}"
        );
        assert!(text.contains("ensemble_model_call_duration_seconds_count{provider=\"local\"} 2"), "{text}");
        assert!(text.contains("ensemble_provider_errors_total{provider=\"local\",class=\"server_error\"} 1"), "{text}");
    }

    #[test]
    fn providers_past_the_cap_count_as_other_and_unknown_statuses_are_ignored() {
        let metrics = RunMetrics::default();
        for i in 0..MAX_PROVIDERS + 3 {
            metrics.model_call(&format!("p{i}"), Duration::from_millis(1), None);
        }
        metrics.runs_finished("exploded", 1);
        metrics.runs_finished("failed", 2);
        let mut text = String::new();
        metrics.render(&mut text);
        assert!(text.contains("ensemble_model_call_duration_seconds_count{provider=\"other\"} 3"), "{text}");
        assert!(text.contains("ensemble_runs_finished_total{status=\"failed\"} 2"), "{text}");
        assert!(!text.contains("exploded"), "{text}");
    }
}
