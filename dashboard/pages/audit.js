// Audit log: rows filtered by team, actor, action, resource and result, newest first and paged,
// actors, teams and API keys by name beside their ids, with the hash chain's verification for
// admins.

import { gql } from '../api.js';
import { fmt, h, named, note, scrolling, show } from '../ui.js';

const LOGS = `query DashboardAuditLogs($filter: AuditLogFilter, $after: String) {
  auditLogs(filter: $filter, first: 50, after: $after) {
    nodes { seq ts actorId actorName actorKind apiKeyId apiKeyName action resourceType resourceId teamId teamName result reason }
    pageInfo { hasNextPage endCursor }
  }
}`;
const VERIFY = `query DashboardVerifyAuditLog {
  verifyAuditLog { ok checkedRows firstBrokenSeq problem }
}`;
const FILTERS = [['team', 'teamId', 'Team id'], ['actor', 'actor', 'Actor (user id)'], ['action', 'action', 'Action'], ['resourceType', 'resourceType', 'Resource type'], ['resourceId', 'resourceId', 'Resource id']];
const HEADINGS = ['Seq', 'Time', 'Actor', 'Action', 'Resource', 'Team', 'Result'];

/** Renders the filters, the first page of rows and the chain's status. */
export async function render({ view, me, params }) {
  const filter = filterFrom(params);
  const form = filterForm(params);
  const verification = h('div', { class: 'verification' }, chainStatus(me));
  const rows = h('tbody', {});
  const more = h('div', {});
  show(view, h('h1', {}, 'Audit log'), verification, form, note('loading', 'Loading the log…'));
  let first;
  try {
    first = await gql(LOGS, { filter, after: null });
  } catch (error) {
    // A refusal (a team the user does not own) keeps the form, so the filter can be changed.
    show(view, h('h1', {}, 'Audit log'), verification, form, note('error', error.message));
    return;
  }
  const list = scrolling(h('table', {}, h('caption', {}, 'Audit log rows, newest first'),
    h('thead', {}, h('tr', {}, HEADINGS.map((title) => h('th', { scope: 'col' }, title)))), rows));
  show(view, h('h1', {}, 'Audit log'), verification, form,
    first.auditLogs.nodes.length === 0 ? note('empty', 'No rows match these filters in the last 30 days.') : list, more);
  append(first.auditLogs, rows, more, filter);
}

function filterFrom(params) {
  const filter = {};
  for (const [param, field] of FILTERS) if (params.get(param)) filter[field] = params.get(param);
  if (['ALLOWED', 'DENIED'].includes(params.get('result'))) filter.result = params.get('result');
  return filter;
}

function filterForm(params) {
  const inputs = FILTERS.map(([param, , label]) => h('label', {}, label, h('input', { name: param, value: params.get(param) ?? '' })));
  const result = h('select', { name: 'result' }, ['', 'ALLOWED', 'DENIED'].map((v) => h('option', { value: v, selected: params.get('result') === v }, v || 'any')));
  const apply = (event) => {
    event.preventDefault();
    const query = new URLSearchParams([...new FormData(event.target)].filter(([, v]) => v !== ''));
    location.hash = `#/audit?${query}`;
  };
  return h('form', { class: 'filters', onsubmit: apply }, inputs, h('label', {}, 'Result', result), h('button', { type: 'submit' }, 'Filter'));
}

function append(page, rows, more, filter) {
  rows.append(...page.nodes.map((row) => h('tr', { class: row.result === 'DENIED' ? 'denied' : null, 'data-seq': row.seq },
    [String(row.seq), fmt.time(row.ts), actor(row), row.action, [row.resourceType, row.resourceId].filter(Boolean).join(' '), named(row.teamName, row.teamId), row.reason ? `${row.result}: ${row.reason}` : row.result]
      .map((cell, i) => h('td', { class: i === 0 ? 'num' : null }, cell)))));
  const next = async (event) => {
    event.target.disabled = true;
    try {
      const { auditLogs } = await gql(LOGS, { filter, after: page.pageInfo.endCursor });
      append(auditLogs, rows, more, filter);
    } catch (error) {
      show(more, note('error', error.message));
    }
  };
  show(more, page.pageInfo.hasNextPage ? h('button', { type: 'button', onclick: next }, 'Older rows') : null);
}

/** Who acted: the user by name and id (a server task or `anonymous` by its kind), and the API key it came through. */
function actor(row) {
  const who = row.actorId ? named(row.actorName, row.actorId) : row.actorKind;
  if (!row.apiKeyId) return who;
  const via = ['via key', row.apiKeyName].filter(Boolean).join(' ');
  return h('span', {}, who, h('span', { class: 'via' }, via, h('code', { class: 'id', title: row.apiKeyId }, row.apiKeyId)));
}

function chainStatus(me) {
  if (me.role !== 'ADMIN') return note('empty', 'Chain verification: admins only.');
  const holder = h('div', {});
  const verify = async () => {
    show(holder, note('loading', 'Verifying the chain…'));
    try {
      const { verifyAuditLog: v } = await gql(VERIFY);
      show(holder, v.ok
        ? h('p', { class: 'ok' }, `Chain verified: ${fmt.int(v.checkedRows)} rows hold.`, ' ', button())
        : note('error', `Chain broken at row ${v.firstBrokenSeq}: ${v.problem}`));
    } catch (error) {
      show(holder, note('error', error.message));
    }
  };
  const button = () => h('button', { type: 'button', onclick: verify }, 'Verify again');
  verify();
  return holder;
}
