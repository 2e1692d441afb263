// Ensemble's own SVG charts: time axes, line and bar series, tooltips as <title>.
// Every function returns SVG markup as a string (no DOM), so node can test it.

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;
const TIME_STEPS = [MINUTE, 5 * MINUTE, 15 * MINUTE, 30 * MINUTE, HOUR, 3 * HOUR, 6 * HOUR, 12 * HOUR, DAY, 2 * DAY, 7 * DAY, 14 * DAY];
const MONTHS = ['Jan', 'Feb', 'Mar', 'Apr', 'May', 'Jun', 'Jul', 'Aug', 'Sep', 'Oct', 'Nov', 'Dec'];
const MARGIN = { top: 16, right: 16, bottom: 44, left: 60 };

let nextId = 0;

/** Escapes text for SVG/HTML content and attribute values. */
export function escapeXml(text) {
  return String(text)
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

/** Time ticks between `start` and `end` (ms since the epoch): at most `max`, on round UTC times. */
export function timeTicks(start, end, max = 6) {
  if (!(end > start)) return [start];
  const step = TIME_STEPS.find((s) => (end - start) / s <= max) ?? Math.ceil((end - start) / max / DAY) * DAY;
  const ticks = [];
  for (let t = Math.ceil(start / step) * step; t <= end; t += step) ticks.push(t);
  return ticks.length > 0 ? ticks : [start];
}

/** A UTC label for a tick: the time of day below a day's step, the date from a day up. */
export function formatTime(ms, step) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  const clock = `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}`;
  const date = `${MONTHS[d.getUTCMonth()]} ${d.getUTCDate()}`;
  return step >= DAY ? date : clock;
}

/** Round value ticks from 0 (or `min`) up to at least `max`: steps of 1, 2 or 5 × 10^k. */
export function valueTicks(min, max, count = 4) {
  const low = Math.min(0, min);
  const high = max > low ? max : low + 1;
  const rough = (high - low) / count;
  const magnitude = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 5, 10].map((m) => m * magnitude).find((s) => s >= rough);
  const first = Math.floor(low / step);
  const last = Math.ceil(round(high / step));
  return Array.from({ length: last - first + 1 }, (_, i) => round((first + i) * step));
}

/** A short number: 12345 → "12.3k", 0.5 → "0.5", 0.0012 → "0.0012". */
export function formatNumber(value) {
  const abs = Math.abs(value);
  if (abs >= 1e6) return `${round(value / 1e6, 1)}M`;
  if (abs >= 1e4) return `${round(value / 1e3, 1)}k`;
  if (abs >= 1 || abs === 0) return String(round(value, 2));
  return String(Number(value.toPrecision(2)));
}

function round(value, digits = 10) {
  return Number(value.toFixed(digits));
}

/**
 * A time chart. `series` is `[{ name, kind: 'line' | 'bar', points: [{ at, value }] }]`, `at`
 * an ISO time or ms; `from`/`to` bound the x axis (default: the points' own span). A `null`
 * value is a bucket with nothing to measure (a latency where no run finished): a gap in a line,
 * no bar. Lines and bars share the y axis, which starts at 0. A chart with no value says so
 * instead of drawing nothing.
 */
export function timeChart({ title, description, yLabel, xLabel = 'Time (UTC)', series, from, to, bucketMs, width = 640, height = 240, format = formatNumber }) {
  const id = `chart-${++nextId}`;
  const all = series.map((s) => ({ ...s, points: s.points.map((p) => ({ at: toMs(p.at), value: p.value == null ? null : Number(p.value) })) }));
  const points = all.flatMap((s) => s.points.filter(measured));
  const plot = { x: MARGIN.left, y: MARGIN.top, w: width - MARGIN.left - MARGIN.right, h: height - MARGIN.top - MARGIN.bottom };
  const parts = [
    `<svg class="chart" role="img" viewBox="0 0 ${width} ${height}" aria-labelledby="${id}-title ${id}-desc">`,
    `<title id="${id}-title">${escapeXml(title)}</title>`,
    `<desc id="${id}-desc">${escapeXml(description ?? summary(all, format))}</desc>`,
  ];
  if (points.length === 0) {
    parts.push(frame(plot), `<text class="empty" x="${plot.x + plot.w / 2}" y="${plot.y + plot.h / 2}" text-anchor="middle">No data in this range</text>`);
    return parts.concat(axisLabels(plot, xLabel, yLabel), '</svg>').join('');
  }
  const step = bucketMs ?? smallestGap(points) ?? HOUR;
  const start = from != null ? toMs(from) : Math.min(...points.map((p) => p.at));
  const end = Math.max(to != null ? toMs(to) - step : -Infinity, ...points.map((p) => p.at));
  const ticks = valueTicks(Math.min(...points.map((p) => p.value)), Math.max(...points.map((p) => p.value)));
  const scale = {
    // Half a bucket of room on each side, so a single point or bar sits in the middle.
    x: (t) => plot.x + ((t - start + step / 2) / (end - start + step)) * plot.w,
    y: (v) => plot.y + plot.h - ((v - ticks[0]) / (ticks.at(-1) - ticks[0])) * plot.h,
    band: (plot.w / ((end - start) / step + 1)) * 0.8,
  };
  parts.push(frame(plot), yAxis(plot, ticks, scale, format), xAxis(plot, start, end, scale));
  const bars = all.filter((s) => s.kind === 'bar');
  all.forEach((s, i) => {
    const cls = `series series-${i}`;
    parts.push(s.kind === 'bar' ? barSeries(s, cls, scale, bars.indexOf(s), bars.length, format) : lineSeries(s, cls, scale, format));
  });
  if (all.length > 1) parts.push(legend(all, plot));
  return parts.concat(axisLabels(plot, xLabel, yLabel), '</svg>').join('');
}

/** Whether a point has a value (a null one is a gap). */
function measured(point) {
  return point.value !== null;
}

function toMs(at) {
  return typeof at === 'number' ? at : Date.parse(at);
}

function smallestGap(points) {
  const times = [...new Set(points.map((p) => p.at))].sort((a, b) => a - b);
  const gaps = times.slice(1).map((t, i) => t - times[i]);
  return gaps.length > 0 ? Math.min(...gaps) : null;
}

function summary(series, format) {
  return series
    .map((s) => {
      const values = s.points.filter(measured).map((p) => p.value);
      if (values.length === 0) return `${s.name}: no data`;
      const count = values.length === s.points.length ? `${values.length} points` : `${values.length} of ${s.points.length} buckets`;
      return `${s.name}: ${count}, from ${format(Math.min(...values))} to ${format(Math.max(...values))}`;
    })
    .join('; ');
}

function frame(plot) {
  return `<rect class="plot" x="${plot.x}" y="${plot.y}" width="${plot.w}" height="${plot.h}"/>`;
}

function yAxis(plot, ticks, scale, format) {
  const lines = ticks.map((v) => {
    const y = fixed(scale.y(v));
    return `<line class="grid" x1="${plot.x}" x2="${plot.x + plot.w}" y1="${y}" y2="${y}"/><text x="${plot.x - 6}" y="${y}" text-anchor="end" dominant-baseline="middle">${escapeXml(format(v))}</text>`;
  });
  return `<g class="axis y-axis">${lines.join('')}</g>`;
}

function xAxis(plot, start, end, scale) {
  const ticks = timeTicks(start, end, Math.max(2, Math.floor(plot.w / 90)));
  const step = ticks.length > 1 ? ticks[1] - ticks[0] : DAY;
  const base = plot.y + plot.h;
  const marks = ticks.map((t) => {
    const x = fixed(scale.x(t));
    return `<line x1="${x}" x2="${x}" y1="${base}" y2="${base + 4}"/><text x="${x}" y="${base + 16}" text-anchor="middle">${formatTime(t, step)}</text>`;
  });
  return `<g class="axis x-axis">${marks.join('')}</g>`;
}

function axisLabels(plot, xLabel, yLabel) {
  const x = `<text class="axis-label" x="${plot.x + plot.w / 2}" y="${plot.y + plot.h + 36}" text-anchor="middle">${escapeXml(xLabel)}</text>`;
  const cy = plot.y + plot.h / 2;
  const y = `<text class="axis-label" x="14" y="${cy}" text-anchor="middle" transform="rotate(-90 14 ${cy})">${escapeXml(yLabel)}</text>`;
  return [x, y];
}

function tooltip(series, point, format) {
  return `<title>${escapeXml(`${series.name} at ${new Date(point.at).toISOString().slice(0, 16).replace('T', ' ')} UTC: ${format(point.value)}`)}</title>`;
}

/** A line through the points with a value, broken at each gap; a dot (with its tooltip) per value. */
function lineSeries(series, cls, scale, format) {
  const xy = (p) => `${fixed(scale.x(p.at))},${fixed(scale.y(p.value))}`;
  const drawn = unbroken(series.points).filter((run) => run.length > 1);
  const path = drawn.length > 0 ? `<path class="line" d="${drawn.map((run) => `M${run.map(xy).join(' L')}`).join(' ')}"/>` : '';
  const dots = series.points.filter(measured).map((p) => `<circle class="dot" cx="${fixed(scale.x(p.at))}" cy="${fixed(scale.y(p.value))}" r="3">${tooltip(series, p, format)}</circle>`);
  return `<g class="${cls}" data-series="${escapeXml(series.name)}">${path}${dots.join('')}</g>`;
}

/** The runs of consecutive points that have a value. */
function unbroken(points) {
  const found = [[]];
  for (const point of points) {
    if (measured(point)) found.at(-1).push(point);
    else if (found.at(-1).length > 0) found.push([]);
  }
  return found.filter((run) => run.length > 0);
}

function barSeries(series, cls, scale, index, count, format) {
  const width = scale.band / count;
  const zero = scale.y(0);
  const rects = series.points.filter(measured).map((p) => {
    const x = scale.x(p.at) - scale.band / 2 + index * width;
    const y = Math.min(zero, scale.y(p.value));
    return `<rect class="bar" x="${fixed(x)}" y="${fixed(y)}" width="${fixed(width)}" height="${fixed(Math.abs(zero - scale.y(p.value)))}">${tooltip(series, p, format)}</rect>`;
  });
  return `<g class="${cls}" data-series="${escapeXml(series.name)}">${rects.join('')}</g>`;
}

function legend(series, plot) {
  const items = series.map((s, i) => {
    const x = plot.x + i * 120;
    return `<g class="series series-${i}"><rect class="swatch" x="${x}" y="0" width="10" height="10"/><text x="${x + 14}" y="9">${escapeXml(s.name)}</text></g>`;
  });
  return `<g class="legend">${items.join('')}</g>`;
}

function fixed(n) {
  return Number(n.toFixed(1));
}
