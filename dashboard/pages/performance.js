// Performance graphs: runs and failures, latency percentiles, cost and tokens over 1 h, 24 h,
// 7 d or 30 d, each read from `metricsSeries` at the bucket that suits the range.

import { gql } from '../api.js';
import { timeChart } from '../charts.js';
import { RANGES, chart, h, note, rangeInput, rangePicker, show } from '../ui.js';

const SERIES = `query DashboardSeries($teamId: ID!, $bucket: Grain!, $range: TimeRangeInput) {
  runs: metricsSeries(teamId: $teamId, metric: RUNS, bucket: $bucket, range: $range) { from to points { at value } }
  failures: metricsSeries(teamId: $teamId, metric: FAILURES, bucket: $bucket, range: $range) { points { at value } }
  p50: metricsSeries(teamId: $teamId, metric: LATENCY_P50, bucket: $bucket, range: $range) { points { at value } }
  p95: metricsSeries(teamId: $teamId, metric: LATENCY_P95, bucket: $bucket, range: $range) { points { at value } }
  p99: metricsSeries(teamId: $teamId, metric: LATENCY_P99, bucket: $bucket, range: $range) { points { at value } }
  cost: metricsSeries(teamId: $teamId, metric: COST, bucket: $bucket, range: $range) { points { at value } }
  tokens: metricsSeries(teamId: $teamId, metric: TOKENS, bucket: $bucket, range: $range) { points { at value } }
}`;

/** Renders the graphs for `?range=` (24 h by default); the picker reloads them. */
export async function render({ view, team, params }) {
  const key = RANGES[params.get('range')] ? params.get('range') : '24h';
  const { bucket, bucketMs, label } = RANGES[key];
  const picker = rangePicker(key, (next) => {
    location.hash = `#/team/${encodeURIComponent(team.id)}/performance?range=${next}`;
  });
  show(view, picker, note('loading', 'Loading the graphs…'));
  const data = await gql(SERIES, { teamId: team.id, bucket, range: rangeInput(key) });
  const span = { from: data.runs.from, to: data.runs.to, bucketMs };
  const quiet = data.runs.points.every((p) => p.value === 0);
  const graph = (title, yLabel, series, format) => {
    const full = `${title}, last ${label}`;
    return chart(full, timeChart({ ...span, title: full, yLabel, series, format }));
  };
  show(view,
    picker,
    quiet ? note('empty', `No runs finished in the last ${label}: the graphs are flat.`) : null,
    h('div', { class: 'charts' },
      graph('Runs and failures', 'runs', [
        { name: 'Runs', kind: 'bar', points: data.runs.points },
        { name: 'Failures', kind: 'line', points: data.failures.points },
      ]),
      // A bucket where no run finished has no latency (null): a gap in the lines, not 0 ms.
      graph('Latency percentiles', 'milliseconds', [
        { name: 'p50', kind: 'line', points: data.p50.points },
        { name: 'p95', kind: 'line', points: data.p95.points },
        { name: 'p99', kind: 'line', points: data.p99.points },
      ]),
      graph('Cost', 'USD', [{ name: 'Cost', kind: 'bar', points: data.cost.points }], (v) => `$${Number(v.toPrecision(3))}`),
      graph('Tokens', 'tokens (in + out)', [{ name: 'Tokens', kind: 'bar', points: data.tokens.points }])));
}
