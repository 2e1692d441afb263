//! How long refusing a fragment bomb takes: Ensemble's schema (memoised fan-out check before
//! validation) against the same schema with async-graphql's own limits only (the baseline).
//!
//! `cargo bench --bench limits` prints the mean time per refusal of each and their ratio.

use std::time::{Duration, Instant};

use async_graphql::Schema;
use ensemble::{
    config::Config,
    graphql::{MutationRoot, QueryRoot, SubscriptionRoot, build_schema},
};

/// Five levels of ten spreads over nine fields: 900,000 fields once expanded.
fn fragment_bomb() -> String {
    let mut query = String::from("query { ...F5 }\n");
    query.push_str(
        "fragment F0 on Query { serverInfo { version database migrationsApplied migrationsPending latestMigration version database migrationsApplied } }\n",
    );
    for level in 1..=5 {
        let spreads = format!("...F{} ", level - 1).repeat(10);
        query.push_str(&format!("fragment F{level} on Query {{ {spreads} }}\n"));
    }
    query
}

async fn mean_time<F, Fut>(runs: u32, mut refuse: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = async_graphql::Response>,
{
    let started = Instant::now();
    for _ in 0..runs {
        let response = refuse().await;
        assert!(!response.errors.is_empty(), "the bomb must be refused");
    }
    started.elapsed() / runs
}

#[tokio::main]
async fn main() {
    let config = Config::from_env().expect("config");
    let query = fragment_bomb();
    let ensemble = build_schema(&config, None);
    let limits = &config.limits;
    let baseline = Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .limit_depth(limits.depth)
        .limit_complexity(limits.complexity)
        .limit_recursive_depth(limits.recursion)
        .limit_directives(limits.directives)
        .finish();

    let ours = mean_time(200, || ensemble.execute(query.as_str())).await;
    let theirs = mean_time(3, || baseline.execute(query.as_str())).await;
    println!("fragment bomb (900,000 fields) refused by Ensemble:            {ours:>12.2?} per request");
    println!("fragment bomb (900,000 fields) refused by async-graphql alone: {theirs:>12.2?} per request");
    println!("ratio (baseline / Ensemble): {:.0}x", theirs.as_secs_f64() / ours.as_secs_f64());
}
