// Small helpers the pages share: building elements (text is never parsed as HTML), number
// formats, time ranges and the states a panel can be in (loading, empty, error).

const MINUTE = 60_000;
const HOUR = 60 * MINUTE;
const DAY = 24 * HOUR;

/** Time ranges the pages offer, each with the bucket that draws it in 24–168 points. */
export const RANGES = {
  '1h': { label: '1 hour', ms: HOUR, bucket: 'MINUTE', bucketMs: MINUTE },
  '24h': { label: '24 hours', ms: DAY, bucket: 'HOUR', bucketMs: HOUR },
  '7d': { label: '7 days', ms: 7 * DAY, bucket: 'HOUR', bucketMs: HOUR },
  '30d': { label: '30 days', ms: 30 * DAY, bucket: 'DAY', bucketMs: DAY },
};

/** `{from, to}` for the last `key` of `RANGES`, ending now. */
export function rangeInput(key) {
  const to = new Date();
  return { from: new Date(to.getTime() - RANGES[key].ms).toISOString(), to: to.toISOString() };
}

/**
 * An element: `h('td', { class: 'num', onclick }, 'text', child)`. Strings become text nodes;
 * `on…` props become listeners; `null`/`false` children are skipped.
 */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value === true ? '' : String(value));
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return element;
}

/** An SVG chart from `charts.js` markup (which escapes every text it holds), under its title. */
export function chart(title, markup) {
  const drawing = h('div', { class: 'chart-drawing' });
  drawing.innerHTML = markup;
  return h('figure', { class: 'chart-holder' }, h('figcaption', { class: 'chart-title' }, title), drawing);
}

/** A name with its id after it (smaller); the id alone without a name, a dash without an id. */
export function named(name, id) {
  if (id == null) return '–';
  return h('span', { class: 'named' }, name ? h('span', { class: 'name' }, name) : null, h('code', { class: 'id', title: id }, id));
}

/** A message in place of data: `kind` is `empty`, `loading` or `error`. */
export function note(kind, text) {
  return h('p', { class: `note ${kind}`, role: kind === 'error' ? 'alert' : null }, text);
}

/**
 * A table from column headings and rows of cells; numeric columns are right-aligned. It scrolls
 * sideways inside its own box when it is wider than the screen, never the page.
 */
export function table(caption, headings, rows, numeric = []) {
  const head = h('tr', {}, headings.map((title, i) => h('th', { scope: 'col', class: numeric.includes(i) ? 'num' : null }, title)));
  const body = rows.map((cells) => h('tr', {}, cells.map((cell, i) => h('td', { class: numeric.includes(i) ? 'num' : null }, cell))));
  return scrolling(h('table', {}, h('caption', {}, caption), h('thead', {}, head), h('tbody', {}, body)));
}

/** `element` in a box that scrolls sideways when it is wider than the screen. */
export function scrolling(element) {
  return h('div', { class: 'table-scroll' }, element);
}

/** A range picker; `onchange(key)` hears the new key. */
export function rangePicker(current, onchange) {
  const select = h('select', { 'aria-label': 'Time range', onchange: (e) => onchange(e.target.value) },
    Object.entries(RANGES).map(([key, r]) => h('option', { value: key, selected: key === current }, r.label)));
  return h('label', { class: 'range' }, 'Range ', select);
}

/** Replaces the content of `element`. */
export function show(element, ...children) {
  element.replaceChildren(...children.flat().filter(Boolean));
}

/** Formats for panels and tables; null (no runs) shows as a dash. */
export const fmt = {
  int: (n) => (n == null ? '–' : Math.round(n).toLocaleString('en')),
  pct: (r) => (r == null ? '–' : `${(r * 100).toFixed(1)}%`),
  ms: (n) => (n == null ? '–' : n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${Math.round(n)} ms`),
  usd: (n) => (n == null ? '–' : `$${n < 1 && n > 0 ? n.toFixed(4) : n.toFixed(2)}`),
  time: (iso) => (iso == null ? '–' : `${iso.slice(0, 19).replace('T', ' ')} UTC`),
};
