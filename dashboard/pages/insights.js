// Insights: the findings of `performanceInsights`, warnings first, with their figures.

import { gql } from '../api.js';
import { RANGES, fmt, h, note, rangeInput, rangePicker, show } from '../ui.js';

const INSIGHTS = `query DashboardInsights($teamId: ID!, $range: TimeRangeInput) {
  performanceInsights(teamId: $teamId, range: $range) {
    kind severity subject summary suggestion figures { name value unit }
  }
}`;

/** Renders the findings for `?range=` (7 days by default). */
export async function render({ view, team, params }) {
  const key = RANGES[params.get('range')] ? params.get('range') : '7d';
  const picker = rangePicker(key, (next) => {
    location.hash = `#/team/${encodeURIComponent(team.id)}/insights?range=${next}`;
  });
  show(view, picker, note('loading', 'Looking for findings…'));
  const { performanceInsights } = await gql(INSIGHTS, { teamId: team.id, range: rangeInput(key) });
  if (performanceInsights.length === 0) {
    show(view, picker, note('empty', `Nothing to report for the last ${RANGES[key].label}. A finding needs at least 10 runs behind it.`));
    return;
  }
  show(view, picker, h('div', { class: 'insights' }, performanceInsights.map(card)));
}

function card(insight) {
  return h('article', { class: `insight ${insight.severity.toLowerCase()}` },
    h('h3', {}, h('span', { class: 'badge' }, insight.severity.toLowerCase()), ' ', insight.kind.replaceAll('_', ' ').toLowerCase(), ': ', insight.subject),
    h('p', {}, insight.summary),
    h('dl', {}, insight.figures.flatMap((f) => [h('dt', {}, f.name), h('dd', {}, figure(f))])),
    h('p', { class: 'suggestion' }, insight.suggestion));
}

function figure({ value, unit }) {
  if (unit === 'ratio') return fmt.pct(value);
  if (unit === 'ms') return fmt.ms(value);
  if (unit === 'USD') return fmt.usd(value);
  return `${Number(value.toFixed(2)).toLocaleString("en")} ${unit}`;
}
