// Usage: the caller's usage report (requests, runs, tokens, cost) grouped as chosen, users,
// teams and API keys by name beside their ids, and the same report as a CSV file.

import { downloadUsageCsv, gql } from '../api.js';
import { RANGES, fmt, h, named, note, rangeInput, rangePicker, show, table } from '../ui.js';

const REPORT = `query DashboardUsage($range: TimeRangeInput, $groupBy: [UsageGroup!]!) {
  usageReport(range: $range, groupBy: $groupBy) {
    firstDay lastDay groupBy
    rows { userId userName teamId teamName apiKeyId apiKeyName model day requests runs tokensIn tokensOut costUsd }
    totals { requests runs tokensIn tokensOut costUsd }
  }
}`;
/** The groups: API name, heading, the row's key field, and the name shown beside that key. */
const GROUPS = [['DAY', 'Day', 'day'], ['TEAM', 'Team', 'teamId', 'teamName'], ['MODEL', 'Model', 'model'], ['USER', 'User', 'userId', 'userName'], ['API_KEY', 'API key', 'apiKeyId', 'apiKeyName']];
const FIGURES = ['Requests', 'Runs', 'Tokens in', 'Tokens out', 'Cost'];

/** Renders the report for `?range=` (30 days by default) and `?groupBy=` (day and model). */
export async function render({ view, params }) {
  const key = RANGES[params.get('range')] ? params.get('range') : '30d';
  const groupBy = (params.get('groupBy') ?? 'DAY,MODEL').split(',').filter((g) => GROUPS.some(([name]) => name === g));
  const reload = (next) => {
    location.hash = `#/usage?${new URLSearchParams({ range: next.range ?? key, groupBy: (next.groupBy ?? groupBy).join(',') })}`;
  };
  const range = rangeInput(key);
  const status = h('div', { class: 'form-status' });
  const download = h('button', { type: 'button', onclick: () => downloadUsageCsv({ ...range, groupBy: groupBy.join(',') }).catch((e) => show(status, note('error', e.message))) }, 'Download CSV');
  const controls = h('div', { class: 'controls' },
    rangePicker(key, (next) => reload({ range: next })),
    h('fieldset', {}, h('legend', {}, 'Group by'), GROUPS.map(([name, label]) => h('label', {},
      h('input', { type: 'checkbox', checked: groupBy.includes(name), onchange: (e) => reload({ groupBy: e.target.checked ? [...groupBy, name] : groupBy.filter((g) => g !== name) }) }),
      ` ${label}`))),
    download);
  show(view, h('h1', {}, 'Usage'), controls, status, note('loading', 'Loading the report…'));
  const { usageReport: report } = await gql(REPORT, { range, groupBy });
  const keys = report.groupBy.map((g) => GROUPS.find(([name]) => name === g));
  const figures = (r) => [fmt.int(r.requests), fmt.int(r.runs), fmt.int(r.tokensIn), fmt.int(r.tokensOut), fmt.usd(r.costUsd)];
  const keyCell = (r, [, , field, name]) => (name ? named(r[name], r[field]) : r[field] ?? '–');
  const rows = report.rows.map((r) => [...keys.map((group) => keyCell(r, group)), ...figures(r)]);
  rows.push([...keys.map((_, i) => (i === 0 ? 'Total' : '')), ...figures(report.totals)]);
  if (keys.length === 0) rows[0].unshift('Total');
  const numeric = FIGURES.map((_, i) => Math.max(keys.length, 1) + i);
  show(view, h('h1', {}, 'Usage'), controls, status,
    report.rows.length === 0 && keys.length > 0 ? note('empty', 'No usage in this range.') : null,
    table(`Usage from ${report.firstDay} to ${report.lastDay} (UTC days)`, [...(keys.length ? keys.map(([, label]) => label) : ['']), ...FIGURES], rows, numeric));
}
