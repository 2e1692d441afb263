// Errors: the team's error groups, newest first, each linking to its last run, with a button
// to resolve an open one.

import { gql } from '../api.js';
import { fmt, h, note, show, table } from '../ui.js';

const GROUPS = `query DashboardErrorGroups($teamId: ID!) {
  errorGroups(teamId: $teamId, first: 100) {
    nodes { fingerprint agent code message count firstSeen lastSeen lastRunId resolvedAt }
  }
}`;
const RESOLVE = `mutation DashboardResolveErrorGroup($fingerprint: ID!) {
  resolveErrorGroup(fingerprint: $fingerprint) { fingerprint resolvedAt }
}`;

/** Renders the error groups. */
export async function render({ view, team }) {
  show(view, note('loading', 'Loading the error groups…'));
  const { errorGroups } = await gql(GROUPS, { teamId: team.id });
  if (errorGroups.nodes.length === 0) {
    show(view, note('empty', 'No errors: every run of this team succeeded, or none ran.'));
    return;
  }
  const status = h('div', { class: 'form-status' });
  const rows = errorGroups.nodes.map((group) => [
    group.agent, group.code, group.message, fmt.int(group.count), fmt.time(group.firstSeen), fmt.time(group.lastSeen),
    h('a', { href: `#/team/${encodeURIComponent(team.id)}/run/${encodeURIComponent(group.lastRunId)}` }, 'last run'),
    state(group, status),
  ]);
  show(view, status, table('Error groups', ['Agent', 'Code', 'Message', 'Count', 'First seen', 'Last seen', 'Run', 'State'], rows, [3]));
}

function state(group, status) {
  if (group.resolvedAt) return `resolved ${fmt.time(group.resolvedAt)}`;
  const cell = h('span', {});
  const button = h('button', {
    type: 'button',
    onclick: async () => {
      button.disabled = true;
      try {
        const { resolveErrorGroup } = await gql(RESOLVE, { fingerprint: group.fingerprint });
        show(cell, `resolved ${fmt.time(resolveErrorGroup.resolvedAt)}`);
        show(status);
      } catch (error) {
        show(status, note('error', error.message));
        button.disabled = false;
      }
    },
  }, 'Resolve');
  show(cell, 'open ', button);
  return cell;
}
