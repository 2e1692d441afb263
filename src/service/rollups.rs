//! Rollups: every finished run is added, in the batch that stores its end, to one row per
//! time grain (minute, hour, day) of `run_rollups` and to the matching latency histogram in
//! `run_latency`. Dashboards read these rows, never raw runs: a range is covered by whole days,
//! then whole hours, then minutes at its edges, and histograms merge by summing, so percentiles
//! over any range come out the same on SQLite and PostgreSQL.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use entity::{run_latency, run_rollups, runs, states::RunStatus};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, EntityTrait, Iterable, QueryTrait,
    sea_query::{Expr, OnConflict},
};

use crate::db::batch::{Batch, rows_per_insert};

/// The length of a rollup bucket.
pub use entity::states::Grain;

/// The histogram bucket of a latency: exact below 100 ms, else rounded down to two significant
/// digits (1,234 ms → 1,200 ms), so a percentile read from the histogram is the true
/// percentile rounded the same way.
pub fn latency_bucket(ms: i64) -> i64 {
    let mut step = 1;
    while ms >= 100 * step {
        step *= 10;
    }
    ms.max(0) / step * step
}

/// The nearest-rank percentile (`p` in 0–1) of a histogram given as (bucket, count) pairs in
/// any order; none for an empty histogram.
pub fn percentile(histogram: &[(i64, i64)], p: f64) -> Option<i64> {
    let total: i64 = histogram.iter().map(|(_, n)| n).sum();
    if total <= 0 {
        return None;
    }
    let mut sorted = histogram.to_vec();
    sorted.sort_unstable();
    let rank = ((p * total as f64).ceil() as i64).clamp(1, total);
    let mut seen = 0;
    sorted
        .into_iter()
        .find(|(_, n)| {
            seen += n;
            seen >= rank
        })
        .map(|(bucket, _)| bucket)
}

/// The rollup and histogram rows one finished run adds; none for a run that did not finish
/// its work (cancelled runs count nowhere but in usage).
pub fn rows_for(run: &runs::Model) -> Vec<(run_rollups::Model, run_latency::Model)> {
    let failed = match run.status {
        RunStatus::Succeeded => false,
        RunStatus::Failed => true,
        RunStatus::Queued | RunStatus::Running | RunStatus::Cancelled => return Vec::new(),
    };
    let finished = run.finished_at.unwrap_or(run.created_at).timestamp();
    let latency = run.latency_ms.unwrap_or(0);
    let agent = run.routed_agent.clone().unwrap_or_default();
    let rule = run.rule.clone().unwrap_or_default();
    let model = run.model.clone().unwrap_or_default();
    Grain::iter()
        .map(|grain| {
            let rollup = run_rollups::Model {
                team_id: run.team_id.clone(),
                grain,
                bucket_start: grain.floor(finished),
                agent: agent.clone(),
                rule: rule.clone(),
                model: model.clone(),
                runs: 1,
                failures: i64::from(failed),
                retries: i64::from(run.retries),
                fallbacks: i64::from(run.fallbacks),
                retried_runs: i64::from(run.retries > 0),
                fallback_runs: i64::from(run.fallbacks > 0),
                tokens_in: run.tokens_in,
                tokens_out: run.tokens_out,
                cost_usd: run.cost_usd,
                latency_ms_sum: latency,
            };
            let histogram = run_latency::Model {
                team_id: rollup.team_id.clone(),
                grain: rollup.grain,
                bucket_start: rollup.bucket_start,
                agent: agent.clone(),
                rule: rule.clone(),
                model: model.clone(),
                latency_ms: latency_bucket(latency),
                runs: 1,
            };
            (rollup, histogram)
        })
        .collect()
}

type RollupKey = (String, Grain, i64, String, String, String);

/// Adds finished runs to the rollups, in the caller's batch: rows with the same key are summed
/// first, then written in multi-row upserts within D1's limit on bound values.
pub fn add(mut batch: Batch, finished: &[runs::Model]) -> Batch {
    let mut rollups: HashMap<RollupKey, run_rollups::Model> = HashMap::new();
    let mut histograms: HashMap<(RollupKey, i64), run_latency::Model> = HashMap::new();
    for (rollup, histogram) in finished.iter().flat_map(rows_for) {
        let key = (
            rollup.team_id.clone(),
            rollup.grain,
            rollup.bucket_start,
            rollup.agent.clone(),
            rollup.rule.clone(),
            rollup.model.clone(),
        );
        histograms.entry((key.clone(), histogram.latency_ms)).and_modify(|h| h.runs += 1).or_insert(histogram);
        match rollups.get_mut(&key) {
            Some(sum) => {
                sum.runs += rollup.runs;
                sum.failures += rollup.failures;
                sum.retries += rollup.retries;
                sum.fallbacks += rollup.fallbacks;
                sum.retried_runs += rollup.retried_runs;
                sum.fallback_runs += rollup.fallback_runs;
                sum.tokens_in += rollup.tokens_in;
                sum.tokens_out += rollup.tokens_out;
                sum.cost_usd += rollup.cost_usd;
                sum.latency_ms_sum += rollup.latency_ms_sum;
            }
            None => drop(rollups.insert(key, rollup)),
        }
    }
    let rollups: Vec<_> = rollups.into_values().map(|r| run_rollups::ActiveModel::from(r).reset_all()).collect();
    for chunk in rollups.chunks(rows_per_insert::<run_rollups::Entity>()) {
        let upsert = run_rollups::Entity::insert_many(chunk.to_vec())
            .on_conflict(adding(ROLLUP_KEY, ROLLUP_SUMS, "run_rollups"))
            .into_query();
        batch = batch.write(&upsert);
    }
    let histograms: Vec<_> = histograms.into_values().map(|h| run_latency::ActiveModel::from(h).reset_all()).collect();
    for chunk in histograms.chunks(rows_per_insert::<run_latency::Entity>()) {
        let upsert = run_latency::Entity::insert_many(chunk.to_vec())
            .on_conflict(adding(LATENCY_KEY, [run_latency::Column::Runs], "run_latency"))
            .into_query();
        batch = batch.write(&upsert);
    }
    batch
}

const ROLLUP_KEY: [run_rollups::Column; 6] = [
    run_rollups::Column::TeamId,
    run_rollups::Column::Grain,
    run_rollups::Column::BucketStart,
    run_rollups::Column::Agent,
    run_rollups::Column::Rule,
    run_rollups::Column::Model,
];

const ROLLUP_SUMS: [run_rollups::Column; 10] = [
    run_rollups::Column::Runs,
    run_rollups::Column::Failures,
    run_rollups::Column::Retries,
    run_rollups::Column::Fallbacks,
    run_rollups::Column::RetriedRuns,
    run_rollups::Column::FallbackRuns,
    run_rollups::Column::TokensIn,
    run_rollups::Column::TokensOut,
    run_rollups::Column::CostUsd,
    run_rollups::Column::LatencyMsSum,
];

const LATENCY_KEY: [run_latency::Column; 7] = [
    run_latency::Column::TeamId,
    run_latency::Column::Grain,
    run_latency::Column::BucketStart,
    run_latency::Column::Agent,
    run_latency::Column::Rule,
    run_latency::Column::Model,
    run_latency::Column::LatencyMs,
];

/// On a key conflict, adds the new row's `sums` to the stored ones.
fn adding<C: ColumnTrait>(
    key: impl IntoIterator<Item = C>,
    sums: impl IntoIterator<Item = C>,
    table: &str,
) -> OnConflict {
    let mut on_conflict = OnConflict::columns(key);
    for column in sums {
        let name = column.as_str();
        on_conflict.value(column, Expr::cust(format!("{table}.{name} + excluded.{name}")));
    }
    on_conflict
}

/// One piece of a range read at one grain: buckets starting in `[from, to)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece {
    pub grain: Grain,
    pub from: i64,
    pub to: i64,
}

/// The fewest rollup buckets that tile `[from, to)` (Unix seconds, widened to whole minutes):
/// whole days in the middle, whole hours next to them, minutes at the edges.
pub fn cover(from: i64, to: i64) -> Vec<Piece> {
    let (from, to) = (Grain::Minute.floor(from), Grain::Minute.ceil(to));
    let mut pieces = Vec::new();
    tile(from, to, Grain::Day, &mut pieces);
    pieces.retain(|p| p.from < p.to);
    pieces
}

fn tile(from: i64, to: i64, grain: Grain, pieces: &mut Vec<Piece>) {
    let finer = match grain {
        Grain::Day => Some(Grain::Hour),
        Grain::Hour => Some(Grain::Minute),
        Grain::Minute => None,
    };
    let (start, end) = (grain.ceil(from), grain.floor(to));
    match finer {
        Some(finer) if start >= end => tile(from, to, finer, pieces),
        Some(finer) => {
            tile(from, start, finer, pieces);
            pieces.push(Piece { grain, from: start, to: end });
            tile(end, to, finer, pieces);
        }
        None => pieces.push(Piece { grain, from, to }),
    }
}

/// The condition selecting the rollup rows of `pieces` that also meet `within`, for a table's
/// grain and start columns. `within` is repeated in every piece so each piece is one index
/// range (team, grain, start) rather than a scan of the team's rows.
pub fn covering<C: ColumnTrait>(pieces: &[Piece], grain: C, start: C, within: Condition) -> Condition {
    pieces.iter().fold(Condition::any(), |any, piece| {
        any.add(within.clone().add(grain.eq(piece.grain)).add(start.gte(piece.from)).add(start.lt(piece.to)))
    })
}

/// Unix seconds as a UTC time.
pub fn time(seconds: i64) -> DateTime<Utc> {
    Utc.timestamp_opt(seconds, 0).single().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_buckets_keep_two_significant_digits() {
        let cases = [(0, 0), (7, 7), (99, 99), (100, 100), (109, 100), (1_234, 1_200), (99_999, 99_000)];
        for (ms, bucket) in cases {
            assert_eq!(latency_bucket(ms), bucket, "{ms} ms");
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let histogram = [(30, 1), (10, 1), (20, 2)];
        assert_eq!(percentile(&histogram, 0.5), Some(20));
        assert_eq!(percentile(&histogram, 0.75), Some(20));
        assert_eq!(percentile(&histogram, 0.99), Some(30));
        assert_eq!(percentile(&histogram, 0.0), Some(10));
        assert_eq!(percentile(&[], 0.5), None);
    }

    #[test]
    fn a_range_is_tiled_by_days_hours_and_minutes() {
        let day = 86_400;
        // 23:58 on day 1 to 01:02:30 on day 3.
        let (from, to) = (day - 120, 2 * day + 3_600 + 150);
        let pieces = cover(from, to);
        let expect = [
            Piece { grain: Grain::Minute, from: day - 120, to: day },
            Piece { grain: Grain::Day, from: day, to: 2 * day },
            Piece { grain: Grain::Hour, from: 2 * day, to: 2 * day + 3_600 },
            Piece { grain: Grain::Minute, from: 2 * day + 3_600, to: 2 * day + 3_600 + 180 },
        ];
        assert_eq!(pieces, expect);
        // Tiles never overlap and leave no gap.
        let within_an_hour = cover(600, 1_200);
        assert_eq!(within_an_hour, [Piece { grain: Grain::Minute, from: 600, to: 1_200 }]);
        assert!(cover(600, 600).is_empty());
    }
}
