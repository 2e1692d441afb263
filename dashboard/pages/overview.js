// Team overview: the last 24 hours in panels, kept fresh by `liveMetrics`, and an activity
// feed of the team's runs from `teamActivity`, each linking to its run's page.

import { gql } from '../api.js';
import { fmt, h, note, rangeInput, show, table } from '../ui.js';

const OVERVIEW_FIELDS = `
    runs failures successRate tokensIn tokensOut costUsd activeConversations
    retries fallbacks retryRate fallbackRate
    latency { p50Ms p95Ms p99Ms }
    topErrors { fingerprint agent code message count lastSeen resolvedAt }`;
const OVERVIEW = `query DashboardOverview($teamId: ID!, $range: TimeRangeInput) {
  teamOverview(teamId: $teamId, range: $range) {${OVERVIEW_FIELDS}
  }
}`;
const LIVE = `subscription DashboardLiveMetrics($teamId: ID!) {
  liveMetrics(teamId: $teamId, intervalSeconds: 2) {${OVERVIEW_FIELDS}
  }
}`;
const ACTIVITY = `subscription DashboardActivity($teamId: ID!) {
  teamActivity(teamId: $teamId) { runId kind at agent model attempt errorClass error }
}`;
const FEED_LENGTH = 50;

/** The panels, each a label and how to read it from an overview. */
const PANELS = [
  ['Runs', (o) => fmt.int(o.runs)],
  ['Success rate', (o) => fmt.pct(o.successRate)],
  ['p50 latency', (o) => fmt.ms(o.latency.p50Ms)],
  ['p95 latency', (o) => fmt.ms(o.latency.p95Ms)],
  ['p99 latency', (o) => fmt.ms(o.latency.p99Ms)],
  ['Tokens', (o) => fmt.int(o.tokensIn + o.tokensOut)],
  ['Cost', (o) => fmt.usd(o.costUsd)],
  ['Retry rate', (o) => fmt.pct(o.retryRate)],
  ['Fallback rate', (o) => fmt.pct(o.fallbackRate)],
  ['Active conversations', (o) => fmt.int(o.activeConversations)],
];

/** Renders the overview and starts its two subscriptions; returns what stops them. */
export async function render({ view, team, live }) {
  show(view, note('loading', 'Loading the overview…'));
  const { teamOverview } = await gql(OVERVIEW, { teamId: team.id, range: rangeInput('24h') });
  const panels = h('div', { class: 'panels', 'aria-label': 'Last 24 hours' });
  const quiet = h('div', {});
  const errors = h('div', {});
  const feed = h('ol', { class: 'feed', 'aria-live': 'polite', 'aria-label': 'Activity' });
  const feedEmpty = note('empty', 'No activity since this page opened. New runs appear here as they happen.');
  const update = (overview) => {
    show(quiet, overview.runs === 0 ? note('empty', 'No runs finished in the last 24 hours.') : null);
    show(panels, PANELS.map(([label, read]) => h('div', { class: 'panel', 'data-panel': label }, h('span', { class: 'label' }, label), h('span', { class: 'value' }, read(overview)))));
    show(errors, topErrors(overview));
  };
  update(teamOverview);
  show(view,
    h('h2', {}, 'Last 24 hours'),
    quiet,
    panels,
    h('h2', {}, 'Top errors'), errors,
    h('h2', {}, 'Activity'), feedEmpty, feed);
  const stopMetrics = live.subscribe(LIVE, { teamId: team.id }, {
    next: (data) => update(data.liveMetrics),
    error: (error) => show(errors, note('error', `Live updates stopped: ${error.message}`)),
  });
  const stopActivity = live.subscribe(ACTIVITY, { teamId: team.id }, {
    next: ({ teamActivity: event }) => {
      if (event.kind === 'DELTA') return;
      feedEmpty.remove();
      feed.prepend(activity(team, event));
      while (feed.children.length > FEED_LENGTH) feed.lastElementChild.remove();
    },
    error: (error) => feed.before(note('error', `The activity feed stopped: ${error.message}`)),
  });
  return () => {
    stopMetrics();
    stopActivity();
  };
}

function topErrors(overview) {
  if (overview.topErrors.length === 0) return note('empty', 'No errors in the last 24 hours.');
  const rows = overview.topErrors.map((e) => [e.agent, e.code, e.message, fmt.int(e.count), fmt.time(e.lastSeen), e.resolvedAt ? 'resolved' : 'open']);
  return table('Error groups seen in the last 24 hours', ['Agent', 'Code', 'Message', 'Count', 'Last seen', 'State'], rows, [3]);
}

/** One event of the feed; its run links to the run's page. */
function activity(team, event) {
  const detail = [event.agent, event.model, event.attempt ? `attempt ${event.attempt}` : null, event.errorClass, event.error].filter(Boolean).join(' · ');
  const page = `#/team/${encodeURIComponent(team.id)}/run/${encodeURIComponent(event.runId)}`;
  return h('li', { class: `event ${event.kind.toLowerCase()}`, 'data-run': event.runId },
    h('time', { datetime: event.at }, fmt.time(event.at)),
    h('span', { class: 'kind' }, event.kind.replaceAll('_', ' ').toLowerCase()),
    h('a', { class: 'run', href: page, title: `Open run ${event.runId}` }, `run ${event.runId.slice(-8)}`),
    detail ? h('span', { class: 'detail' }, detail) : null);
}
