// The team picker: the teams the signed-in user belongs to (every team for an admin).

import { gql } from '../api.js';
import { h, note, show, table } from '../ui.js';

const TEAMS = `query DashboardTeams($after: String) {
  teams(first: 100, after: $after) {
    nodes { id name slug description myRole archivedAt }
    pageInfo { hasNextPage endCursor }
  }
}`;

/** Lists the teams, each linking to its overview. */
export async function render({ view }) {
  show(view, h('h1', {}, 'Teams'), note('loading', 'Loading your teams…'));
  const nodes = [];
  let after = null;
  do {
    const { teams } = await gql(TEAMS, { after });
    nodes.push(...teams.nodes);
    after = teams.pageInfo.hasNextPage ? teams.pageInfo.endCursor : null;
  } while (after);
  if (nodes.length === 0) {
    show(view, h('h1', {}, 'Teams'), note('empty', 'You belong to no team yet. Create one with the createTeam mutation.'));
    return;
  }
  const rows = nodes.map((team) => [
    h('a', { href: `#/team/${encodeURIComponent(team.id)}/overview` }, team.name),
    team.slug,
    team.myRole ?? 'public',
    team.archivedAt ? 'archived' : 'active',
    team.description ?? '',
  ]);
  show(view, h('h1', {}, 'Teams'), table('Pick a team to watch', ['Team', 'Slug', 'Your role', 'State', 'Description'], rows));
}
