// The dashboard's shell: sign-in, the header, and routing between pages by the URL's hash
// (`#/teams`, `#/team/<id>/<page>`, `#/team/<id>/run/<run id>`, `#/usage`, `#/audit`).

import { ApiError, LiveSocket, gql, onSignedOut, session } from './api.js';
import { h, note, show } from './ui.js';
import * as agents from './pages/agents.js';
import * as audit from './pages/audit.js';
import * as errors from './pages/errors.js';
import * as insights from './pages/insights.js';
import * as overview from './pages/overview.js';
import * as performance from './pages/performance.js';
import * as run from './pages/run.js';
import * as signin from './pages/signin.js';
import * as teams from './pages/teams.js';
import * as usage from './pages/usage.js';

const TEAM_PAGES = [
  ['overview', 'Overview', overview],
  ['performance', 'Performance', performance],
  ['agents', 'Agents', agents],
  ['errors', 'Errors', errors],
  ['insights', 'Insights', insights],
];
const LIVE_LABELS = { connecting: 'Connecting…', live: 'Live', reconnecting: 'Reconnecting…', closed: '' };

const REFUSED = 'The server refused the token: it has expired or is not valid. Paste a new one from `ensemble token`.';
const ME = `query DashboardMe { me { id displayName email role } }`;
const TEAM = `query DashboardTeam($id: ID!) { team(id: $id) { id name slug myRole archivedAt } }`;

const main = document.getElementById('main');
const header = document.querySelector('header.top');
const state = { me: null, live: null, cleanup: null, ticket: 0, message: '' };

onSignedOut(() => signOut(REFUSED));
document.getElementById('sign-out').addEventListener('click', () => signOut('You signed out.'));
window.addEventListener('hashchange', route);
route();

/** Checks a token with `me`; stores it only when it signs someone in. */
async function signInWith(token) {
  session.save(token);
  const { me } = await gql(ME);
  if (!me) {
    signOut(REFUSED);
    throw new ApiError(REFUSED, 'UNAUTHENTICATED');
  }
  Object.assign(state, { me, message: '' });
  state.live = new LiveSocket(showLiveStatus);
  header.hidden = false;
  document.getElementById('who').textContent = me.displayName ?? me.email ?? me.id;
}

function signOut(message) {
  session.clear();
  state.live?.close();
  Object.assign(state, { me: null, live: null, message });
  header.hidden = true;
  history.replaceState(null, '', '#/signin');
  route();
}

function showLiveStatus(status) {
  const element = document.getElementById('live-status');
  element.textContent = LIVE_LABELS[status];
  element.dataset.status = status;
}

async function route() {
  const ticket = ++state.ticket;
  state.cleanup?.();
  state.cleanup = null;
  const view = h('div', { class: 'view' });
  show(main, view);
  const cleanup = await render(view).catch((error) => {
    if (ticket === state.ticket) show(view, note('error', error.message));
  });
  if (ticket === state.ticket) state.cleanup = cleanup;
  else cleanup?.();
}

async function render(view) {
  const [path, query = ''] = location.hash.replace(/^#\/?/, '').split('?');
  const [section, id, tab, item] = path.split('/');
  const params = new URLSearchParams(query);
  if (!state.me && session.token()) await signInWith(session.token());
  if (!state.me) return showSignIn(view);
  const context = { view, me: state.me, live: state.live, params };
  if (section === 'team' && id) return renderTeam({ ...context, teamId: decodeURIComponent(id), item: item && decodeURIComponent(item) }, tab ?? 'overview');
  if (section === 'usage') return usage.render(context);
  if (section === 'audit') return audit.render(context);
  if (section !== 'teams') history.replaceState(null, '', '#/teams');
  return teams.render(context);
}

function showSignIn(view) {
  if (location.hash !== '#/signin') history.replaceState(null, '', '#/signin');
  signin.render({
    view,
    message: state.message,
    signIn: async (token) => {
      await signInWith(token);
      location.hash = '#/teams';
    },
  });
}

async function renderTeam(context, tab) {
  const runPage = tab === 'run' && context.item ? ['run', 'Run', run] : null;
  const page = runPage ?? TEAM_PAGES.find(([key]) => key === tab) ?? TEAM_PAGES[0];
  let team;
  try {
    ({ team } = await gql(TEAM, { id: context.teamId }));
  } catch (error) {
    if (error.code !== 'NOT_FOUND') throw error;
    show(context.view, h('h1', {}, 'Team not found'),
      note('error', 'There is no such team, or you are not a member of it.'),
      h('p', {}, h('a', { href: '#/teams' }, 'Pick one of your teams')));
    return undefined;
  }
  const base = `#/team/${encodeURIComponent(team.id)}`;
  const tabs = h('nav', { class: 'tabs', 'aria-label': 'Team pages' },
    TEAM_PAGES.map(([key, label]) => h('a', { href: `${base}/${key}`, 'aria-current': key === page[0] ? 'page' : null }, label)),
    h('a', { href: `#/audit?team=${encodeURIComponent(team.id)}` }, 'Audit log'));
  const body = h('section', { class: 'page' });
  show(context.view, h('h1', {}, team.name, team.archivedAt ? h('span', { class: 'badge' }, 'archived') : null), tabs, body);
  return page[2].render({ ...context, view: body, team, runId: context.item });
}
