// Run with `node --test dashboard/charts.test.mjs` (also run by `cargo test --test integration dashboard::`).
import { test } from 'node:test';
import assert from 'node:assert/strict';

import { formatNumber, formatTime, timeChart, timeTicks, valueTicks } from './charts.js';

const HOUR = 3_600_000;
const T0 = Date.parse('2025-03-01T00:00:00Z');

function points(values, step = HOUR) {
  return values.map((value, i) => ({ at: new Date(T0 + i * step).toISOString(), value }));
}

function count(svg, pattern) {
  return (svg.match(pattern) ?? []).length;
}

/** The segments of a line series' path (`M x,y L x,y …` per segment), each a list of [x, y]. */
function segments(svg, series) {
  const group = svg.match(new RegExp(`<g [^>]*data-series="${series}">(.*?)</g>`))?.[1] ?? '';
  const d = group.match(/<path class="line" d="([^"]*)"/)?.[1] ?? '';
  return d.split('M').filter(Boolean).map((segment) => segment.trim().split(/\s*L\s*/).map((xy) => xy.split(',').map(Number)));
}

test('an empty chart says there is no data and draws no series', () => {
  const svg = timeChart({ title: 'Runs', yLabel: 'runs', series: [{ name: 'Runs', kind: 'bar', points: [] }] });
  assert.match(svg, /No data in this range/);
  assert.equal(count(svg, /class="bar"/g), 0);
  assert.doesNotMatch(svg, /NaN|Infinity|undefined/);
});

test('a single point is drawn as a dot in the middle of the plot, without a line', () => {
  const svg = timeChart({ title: 'p95', yLabel: 'ms', series: [{ name: 'p95', kind: 'line', points: points([120]) }] });
  assert.equal(count(svg, /<circle /g), 1);
  assert.equal(count(svg, /<path /g), 0);
  const cx = Number(svg.match(/<circle class="dot" cx="([\d.]+)"/)[1]);
  assert.equal(cx, 60 + (640 - 60 - 16) / 2);
  assert.doesNotMatch(svg, /NaN|Infinity|undefined/);
});

test('a single bar has a positive width and height', () => {
  const svg = timeChart({ title: 'Runs', yLabel: 'runs', series: [{ name: 'Runs', kind: 'bar', points: points([4]) }] });
  const [, width, height] = svg.match(/<rect class="bar" x="[\d.]+" y="[\d.]+" width="([\d.]+)" height="([\d.]+)"/);
  assert.ok(Number(width) > 0 && Number(height) > 0, svg);
});

test('a series of zeros (a team with no runs) draws flat bars on a 0–1 axis', () => {
  const svg = timeChart({ title: 'Runs', yLabel: 'runs', series: [{ name: 'Runs', kind: 'bar', points: points([0, 0, 0]) }] });
  assert.equal(count(svg, /class="bar"/g), 3);
  assert.equal(count(svg, /height="0"/g), 3);
  assert.match(svg, />1<\/text>/);
  assert.doesNotMatch(svg, /NaN|Infinity|undefined/);
});

test('every point of every series is drawn, with its value in a tooltip', () => {
  const svg = timeChart({
    title: 'Runs and failures',
    yLabel: 'runs',
    series: [
      { name: 'Runs', kind: 'bar', points: points([3, 10, 7, 0]) },
      { name: 'Failures', kind: 'line', points: points([0, 2, 1, 0]) },
    ],
  });
  assert.equal(count(svg, /class="bar"/g), 4);
  assert.equal(count(svg, /<circle /g), 4);
  assert.deepEqual(segments(svg, 'Failures').map((s) => s.length), [4]);
  assert.match(svg, /<title>Runs at 2025-03-01 01:00 UTC: 10<\/title>/);
  assert.match(svg, /<title>Failures at 2025-03-01 02:00 UTC: 1<\/title>/);
  assert.match(svg, /class="legend"/);
});

test('buckets without a value (null) are gaps in a line, not zeros', () => {
  const svg = timeChart({ title: 'p95', yLabel: 'ms', series: [{ name: 'p95', kind: 'line', points: points([120, 130, null, null, 200, null, 90, 95, 100]) }] });
  const drawn = segments(svg, 'p95');
  assert.deepEqual(drawn.map((s) => s.length), [2, 3], 'two segments around the gaps; the lone 200 is a dot');
  assert.equal(count(svg, /<circle /g), 6, 'a dot per value, none for the gaps');
  const zero = Number(svg.match(/<line class="grid" [^>]*y1="([\d.]+)"[^>]*\/><text [^>]*>0<\/text>/)[1]);
  const ys = [...svg.matchAll(/<circle class="dot" cx="[\d.]+" cy="([\d.]+)"/g)].map((m) => Number(m[1]));
  assert.ok(ys.every((y) => y < zero), `no point sits on 0 ms: ${ys} vs ${zero}`);
  assert.match(svg, /<desc [^>]*>p95: 6 of 9 buckets, from 90 to 200<\/desc>/);
  assert.doesNotMatch(svg, /NaN|Infinity|undefined/);
});

test('a line with no value at all says there is no data', () => {
  const svg = timeChart({ title: 'p95', yLabel: 'ms', series: [{ name: 'p95', kind: 'line', points: points([null, null, null]) }] });
  assert.match(svg, /No data in this range/);
  assert.equal(count(svg, /<path |<circle /g), 0);
});

test('bars skip the buckets without a value', () => {
  const svg = timeChart({ title: 'Cost', yLabel: 'USD', series: [{ name: 'Cost', kind: 'bar', points: points([1, null, 2]) }] });
  assert.equal(count(svg, /class="bar"/g), 2);
  assert.doesNotMatch(svg, /NaN/);
});

test('higher values are drawn higher', () => {
  const svg = timeChart({ title: 'Cost', yLabel: 'USD', series: [{ name: 'Cost', kind: 'line', points: points([1, 5]) }] });
  const ys = [...svg.matchAll(/<circle class="dot" cx="[\d.]+" cy="([\d.]+)"/g)].map((m) => Number(m[1]));
  assert.ok(ys[1] < ys[0], `${ys}`);
});

test('charts are images with a title, a description and labelled axes', () => {
  const svg = timeChart({ title: 'Latency <p95>', description: 'Latency by hour', yLabel: 'ms', series: [{ name: 'p95', kind: 'line', points: points([1, 2]) }] });
  assert.match(svg, /^<svg [^>]*role="img"/);
  const [, labelled] = svg.match(/aria-labelledby="([^"]+)"/);
  for (const id of labelled.split(' ')) assert.match(svg, new RegExp(`id="${id}"`));
  assert.match(svg, /<title id="[^"]+">Latency &lt;p95&gt;<\/title>/);
  assert.match(svg, /<desc id="[^"]+">Latency by hour<\/desc>/);
  assert.match(svg, /class="axis-label"[^>]*>Time \(UTC\)</);
  assert.match(svg, /class="axis-label"[^>]*>ms</);
});

test('without a description the chart describes its series', () => {
  const svg = timeChart({ title: 'Runs', yLabel: 'runs', series: [{ name: 'Runs', kind: 'bar', points: points([2, 8]) }] });
  assert.match(svg, /<desc [^>]*>Runs: 2 points, from 2 to 8<\/desc>/);
});

test('time ticks fall on round UTC times and never exceed the maximum', () => {
  assert.deepEqual(timeTicks(T0, T0 + 24 * HOUR, 6), [0, 6, 12, 18, 24].map((h) => T0 + h * HOUR));
  const hour = timeTicks(T0 + 7 * 60_000, T0 + HOUR, 6);
  assert.deepEqual(hour, [15, 30, 45, 60].map((m) => T0 + m * 60_000));
  const month = timeTicks(T0, T0 + 30 * 24 * HOUR, 6);
  assert.ok(month.length <= 6 && month.length >= 2, `${month.length}`);
  assert.deepEqual(timeTicks(T0, T0), [T0]);
});

test('tick labels show the time of day, or the date for day steps', () => {
  assert.equal(formatTime(T0 + 6 * HOUR + 30 * 60_000, HOUR), '06:30');
  assert.equal(formatTime(T0 + 24 * HOUR, 24 * HOUR), 'Mar 2');
});

test('value ticks are round, start at 0 and reach the maximum', () => {
  assert.deepEqual(valueTicks(0, 10), [0, 5, 10]);
  assert.deepEqual(valueTicks(0, 0), [0, 0.5, 1]);
  assert.deepEqual(valueTicks(3, 7), [0, 2, 4, 6, 8]);
  assert.deepEqual(valueTicks(0, 0.0003), [0, 0.0001, 0.0002, 0.0003]);
});

test('numbers are short', () => {
  assert.equal(formatNumber(12345), '12.3k');
  assert.equal(formatNumber(2_500_000), '2.5M');
  assert.equal(formatNumber(0.00123), '0.0012');
  assert.equal(formatNumber(0), '0');
});
