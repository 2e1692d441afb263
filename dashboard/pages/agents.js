// Agents: runs, p95, failure rate and cost of the agents routing picked most often (the API's
// `teamOverview.busiestAgents`, the five busiest) over the chosen range.

import { gql } from '../api.js';
import { RANGES, fmt, h, note, rangeInput, rangePicker, show, table } from '../ui.js';

const AGENTS = `query DashboardAgents($teamId: ID!, $range: TimeRangeInput) {
  teamOverview(teamId: $teamId, range: $range) {
    busiestAgents { agent runs failures failureRate retryRate fallbackRate tokens costUsd latency { p50Ms p95Ms } }
  }
}`;

/** Renders the table for `?range=` (24 h by default). */
export async function render({ view, team, params }) {
  const key = RANGES[params.get('range')] ? params.get('range') : '24h';
  const picker = rangePicker(key, (next) => {
    location.hash = `#/team/${encodeURIComponent(team.id)}/agents?range=${next}`;
  });
  show(view, picker, note('loading', 'Loading the agents…'));
  const { teamOverview } = await gql(AGENTS, { teamId: team.id, range: rangeInput(key) });
  const agents = teamOverview.busiestAgents;
  if (agents.length === 0) {
    show(view, picker, note('empty', `No agent ran in the last ${RANGES[key].label}.`));
    return;
  }
  const rows = agents.map((a) => [a.agent, fmt.int(a.runs), fmt.ms(a.latency.p50Ms), fmt.ms(a.latency.p95Ms), fmt.pct(a.failureRate), fmt.pct(a.retryRate), fmt.pct(a.fallbackRate), fmt.int(a.tokens), fmt.usd(a.costUsd)]);
  show(view, picker,
    table(`The busiest agents, last ${RANGES[key].label}`, ['Agent', 'Runs', 'p50', 'p95', 'Failure rate', 'Retry rate', 'Fallback rate', 'Tokens', 'Cost'], rows, [1, 2, 3, 4, 5, 6, 7, 8]),
    h('p', { class: 'hint' }, 'The five agents routing picked most often in the range.'));
}
