//! Process metrics in Prometheus text format: HTTP requests by status, GraphQL operations by
//! name and outcome, a request latency histogram, database pool use, open websockets and
//! subscriptions, the hits, misses and evictions of every cache, and runs (`runs`).

mod runs;

pub use runs::RunMetrics;

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{
        Arc, Mutex,
        atomic::{AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 11] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];
/// Operation names are chosen by clients: past this many distinct names the rest count as `other`.
const MAX_OPERATION_NAMES: usize = 200;

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// Per operation name: (succeeded, failed).
    operations: Mutex<BTreeMap<String, (u64, u64)>>,
    latency_buckets: [AtomicU64; BUCKETS.len()],
    latency_count: AtomicU64,
    latency_micros: AtomicU64,
    open_websockets: AtomicI64,
    open_subscriptions: AtomicI64,
    pub caches: CacheStats,
    /// Runs, model calls, budget refusals and workflow steps.
    pub runs: RunMetrics,
}

impl Metrics {
    pub fn record_request(&self, method: &str, status: u16, elapsed: Duration) {
        if let Ok(mut map) = self.requests.lock() {
            *map.entry((method.to_string(), status)).or_default() += 1;
        }
        let secs = elapsed.as_secs_f64();
        for (bucket, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            if secs <= bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        self.latency_count.fetch_add(1, Ordering::Relaxed);
        self.latency_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts one GraphQL operation and whether it answered without errors.
    pub fn record_operation(&self, name: Option<&str>, ok: bool) {
        let Ok(mut map) = self.operations.lock() else {
            return;
        };
        let name = name.unwrap_or("anonymous");
        let name = if map.contains_key(name) || map.len() < MAX_OPERATION_NAMES { name } else { "other" };
        let counts = map.entry(name.to_string()).or_default();
        if ok {
            counts.0 += 1;
        } else {
            counts.1 += 1;
        }
    }

    pub fn websocket_opened(&self) {
        self.open_websockets.fetch_add(1, Ordering::Relaxed);
    }

    pub fn websocket_closed(&self) {
        self.open_websockets.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn open_websockets(&self) -> i64 {
        self.open_websockets.load(Ordering::Relaxed)
    }

    /// Counts an operation streamed over a websocket as open until the guard is dropped.
    pub fn subscription_opened(self: &Arc<Self>) -> OpenSubscription {
        self.open_subscriptions.fetch_add(1, Ordering::Relaxed);
        OpenSubscription(self.clone())
    }

    pub fn open_subscriptions(&self) -> i64 {
        self.open_subscriptions.load(Ordering::Relaxed)
    }

    /// The Prometheus exposition text; `pool` is (open, idle) database connections.
    pub fn render(&self, pool: (u32, u32)) -> String {
        let mut out = String::new();
        out.push_str("# HELP ensemble_http_requests_total HTTP requests answered, by method and status.\n");
        out.push_str("# TYPE ensemble_http_requests_total counter\n");
        if let Ok(map) = self.requests.lock() {
            for ((method, status), n) in map.iter() {
                let _ = writeln!(out, "ensemble_http_requests_total{{method=\"{method}\",status=\"{status}\"}} {n}");
            }
        }
        out.push_str("# HELP ensemble_graphql_operations_total GraphQL operations run, by name and outcome.\n");
        out.push_str("# TYPE ensemble_graphql_operations_total counter\n");
        if let Ok(map) = self.operations.lock() {
            for (name, (ok, failed)) in map.iter() {
                let name = escape_label(name);
                for (outcome, n) in [("ok", ok), ("error", failed)] {
                    let _ = writeln!(
                        out,
                        "ensemble_graphql_operations_total{{operation=\"{name}\",outcome=\"{outcome}\"}} {n}"
                    );
                }
            }
        }
        out.push_str("# HELP ensemble_http_request_duration_seconds Time to answer an HTTP request.\n");
        out.push_str("# TYPE ensemble_http_request_duration_seconds histogram\n");
        for (bucket, bound) in self.latency_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "ensemble_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {}",
                bucket.load(Ordering::Relaxed)
            );
        }
        let count = self.latency_count.load(Ordering::Relaxed);
        let _ = writeln!(out, "ensemble_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.latency_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "ensemble_http_request_duration_seconds_sum {sum}");
        let _ = writeln!(out, "ensemble_http_request_duration_seconds_count {count}");
        out.push_str("# HELP ensemble_db_pool_connections Database pool connections, by state.\n");
        out.push_str("# TYPE ensemble_db_pool_connections gauge\n");
        let _ = writeln!(out, "ensemble_db_pool_connections{{state=\"open\"}} {}", pool.0);
        let _ = writeln!(out, "ensemble_db_pool_connections{{state=\"idle\"}} {}", pool.1);
        out.push_str("# HELP ensemble_websocket_connections Open websocket connections.\n");
        out.push_str("# TYPE ensemble_websocket_connections gauge\n");
        let _ = writeln!(out, "ensemble_websocket_connections {}", self.open_websockets());
        out.push_str("# HELP ensemble_subscriptions Operations open on websockets.\n");
        out.push_str("# TYPE ensemble_subscriptions gauge\n");
        let _ = writeln!(out, "ensemble_subscriptions {}", self.open_subscriptions());
        self.caches.render(&mut out);
        self.runs.render(&mut out);
        out
    }
}

/// One open websocket operation; dropping it closes the count.
pub struct OpenSubscription(Arc<Metrics>);

impl Drop for OpenSubscription {
    fn drop(&mut self) {
        self.0.open_subscriptions.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Lookups of one named cache, counted where the cache is read.
pub struct CacheCounter {
    name: &'static str,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: Evictions,
    /// How many entries the cache holds now.
    entries: Box<dyn Fn() -> u64 + Send + Sync>,
}

impl CacheCounter {
    /// Counts one lookup: found in the cache (`true`) or not.
    pub fn record(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Entries a cache dropped on its own (expired, or to make room), counted by the cache as it
/// drops them; explicit invalidations are not evictions.
#[derive(Clone, Default)]
pub struct Evictions(Arc<AtomicU64>);

impl Evictions {
    pub fn record(&self, count: u64) {
        self.0.fetch_add(count, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// What one cache has answered since start.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheSnapshot {
    pub name: &'static str,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    pub entries: u64,
}

impl CacheSnapshot {
    /// Hits per lookup; `None` before the first lookup.
    pub fn hit_rate(&self) -> Option<f64> {
        let lookups = self.hits + self.misses;
        (lookups > 0).then(|| self.hits as f64 / lookups as f64)
    }
}

/// Every cache of the process, in the order they were made.
#[derive(Default)]
pub struct CacheStats(Mutex<Vec<Arc<CacheCounter>>>);

impl CacheStats {
    /// A counter for the cache `name`; `entries` tells how many entries it holds, `evictions`
    /// is what the cache counts as it drops entries.
    pub fn register(
        &self,
        name: &'static str,
        entries: impl Fn() -> u64 + Send + Sync + 'static,
        evictions: Evictions,
    ) -> Arc<CacheCounter> {
        let counter = Arc::new(CacheCounter {
            name,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            evictions,
            entries: Box::new(entries),
        });
        if let Ok(mut caches) = self.0.lock() {
            caches.push(counter.clone());
        }
        counter
    }

    pub fn snapshot(&self) -> Vec<CacheSnapshot> {
        let Ok(caches) = self.0.lock() else {
            return Vec::new();
        };
        caches
            .iter()
            .map(|c| CacheSnapshot {
                name: c.name,
                hits: c.hits.load(Ordering::Relaxed),
                misses: c.misses.load(Ordering::Relaxed),
                evictions: c.evictions.count(),
                entries: (c.entries)(),
            })
            .collect()
    }

    fn render(&self, out: &mut String) {
        let caches = self.snapshot();
        let mut family = |metric: &str, kind: &str, help: &str, value: fn(&CacheSnapshot) -> u64| {
            let _ = writeln!(out, "# HELP {metric} {help}\n# TYPE {metric} {kind}");
            for cache in &caches {
                let _ = writeln!(out, "{metric}{{cache=\"{}\"}} {}", cache.name, value(cache));
            }
        };
        family("ensemble_cache_hits_total", "counter", "Cache lookups answered from the cache.", |c| c.hits);
        family("ensemble_cache_misses_total", "counter", "Cache lookups that had to load.", |c| c.misses);
        family("ensemble_cache_evictions_total", "counter", "Cache entries dropped on expiry or to make room.", |c| {
            c.evictions
        });
        family("ensemble_cache_entries", "gauge", "Entries held in a cache.", |c| c.entries);
    }
}

fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operation_names_past_the_cap_count_as_other() {
        let metrics = Metrics::default();
        for i in 0..MAX_OPERATION_NAMES + 5 {
            metrics.record_operation(Some(&format!("op{i}")), true);
        }
        metrics.record_operation(Some("op0"), false);
        let text = metrics.render((0, 0));
        assert!(text.contains("operation=\"other\",outcome=\"ok\"} 5"), "{text}");
        assert!(text.contains("operation=\"op0\",outcome=\"error\"} 1"), "{text}");
    }

    #[test]
    fn latency_lands_in_every_bucket_at_or_above_it() {
        let metrics = Metrics::default();
        metrics.record_request("POST", 200, Duration::from_millis(30));
        let text = metrics.render((2, 1));
        assert!(text.contains("le=\"0.025\"} 0"), "{text}");
        assert!(text.contains("le=\"0.05\"} 1"), "{text}");
        assert!(text.contains("method=\"POST\",status=\"200\"} 1"), "{text}");
        assert!(text.contains("ensemble_db_pool_connections{state=\"idle\"} 1"), "{text}");
    }

    #[test]
    fn cache_lookups_are_counted_by_name_with_their_hit_rate() {
        let metrics = Metrics::default();
        let evictions = Evictions::default();
        let counter = metrics.caches.register("specs", || 7, evictions.clone());
        assert_eq!(metrics.caches.snapshot()[0].hit_rate(), None);
        evictions.record(2);
        counter.record(true);
        counter.record(true);
        counter.record(true);
        counter.record(false);
        let snapshot = &metrics.caches.snapshot()[0];
        assert_eq!((snapshot.hits, snapshot.misses, snapshot.evictions, snapshot.entries), (3, 1, 2, 7));
        assert_eq!(snapshot.hit_rate(), Some(0.75));
        let text = metrics.render((0, 0));
        assert!(text.contains("ensemble_cache_hits_total{cache=\"specs\"} 3"), "{text}");
        assert!(text.contains("ensemble_cache_misses_total{cache=\"specs\"} 1"), "{text}");
        assert!(text.contains("ensemble_cache_evictions_total{cache=\"specs\"} 2"), "{text}");
    }

    #[test]
    fn an_open_subscription_counts_until_dropped() {
        let metrics = Arc::new(Metrics::default());
        let open = metrics.subscription_opened();
        assert_eq!(metrics.open_subscriptions(), 1);
        drop(open);
        assert_eq!(metrics.open_subscriptions(), 0);
    }
}
