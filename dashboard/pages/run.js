// One run: its status, how routing chose the agent, every call to a model (retries and
// fallbacks), the input and output, cost, tokens and latency, and the error. A run still under
// way is read again on each of its `runEvents` until it ends.

import { gql } from '../api.js';
import { fmt, h, note, show, table } from '../ui.js';

const RUN = `query DashboardRun($runId: ID!) {
  run(id: $runId) {
    id teamId teamVersion status input output
    routedAgent rule ruleReason agent model
    attemptCount retries fallbacks tokensIn tokensOut costUsd estimatedCostUsd latencyMs
    errorCode error conversationId createdAt startedAt finishedAt
    attempts { seq agent model attempt outcome latencyMs tokensIn tokensOut costUsd backoffMs error startedAt }
  }
}`;
const EVENTS = `subscription DashboardRunEvents($runId: ID!) {
  runEvents(runId: $runId) { kind }
}`;
const FINISHED = ['SUCCEEDED', 'FAILED', 'CANCELLED'];

/** Renders the run `runId` of `team`; returns what stops following it. */
export async function render({ view, team, runId, live }) {
  show(view, note('loading', 'Loading the run…'));
  const run = await load(runId);
  if (!run || run.teamId !== team.id) {
    show(view, h('h2', {}, 'Run not found'), note('error', 'There is no such run in this team, or you may not see it.'));
    return undefined;
  }
  draw(view, run);
  if (FINISHED.includes(run.status)) return undefined;
  let reading = Promise.resolve();
  const stop = live.subscribe(EVENTS, { runId }, {
    next: ({ runEvents }) => {
      if (runEvents.kind === 'DELTA') return;
      reading = reading.then(async () => draw(view, await load(runId))).catch((error) => view.append(note('error', error.message)));
    },
    error: (error) => view.append(note('error', `Live updates stopped: ${error.message}`)),
  });
  return stop;
}

/** The run, or null when it does not exist for this caller. */
async function load(id) {
  try {
    return (await gql(RUN, { runId: id })).run;
  } catch (error) {
    if (error.code === 'NOT_FOUND') return null;
    throw error;
  }
}

function draw(view, run) {
  show(view,
    h('h2', { class: 'run-title' }, 'Run ', h('code', { class: 'id' }, run.id), ' ', h('span', { class: `badge status ${run.status.toLowerCase()}` }, run.status.toLowerCase())),
    run.error ? note('error', `${run.errorCode ?? 'error'}: ${run.error}`) : null,
    h('dl', { class: 'facts' }, facts(run).flatMap(([term, value]) => [h('dt', {}, term), h('dd', { 'data-fact': term }, value)])),
    h('h3', {}, 'Attempts'),
    attempts(run),
    h('h3', {}, 'Input'),
    h('pre', { class: 'message' }, run.input),
    h('h3', {}, 'Output'),
    run.output == null ? note('empty', FINISHED.includes(run.status) ? 'No output: the run did not succeed.' : 'No output yet.') : h('pre', { class: 'message output' }, run.output));
}

function facts(run) {
  return [
    ['Status', run.status.toLowerCase()],
    ['Routed to', run.routedAgent ?? '–'],
    ['Routing rule', run.rule ?? (run.routedAgent ? 'default agent' : '–')],
    ['Reason', run.ruleReason ?? '–'],
    ['Answered by', [run.agent, run.model].filter(Boolean).join(' · ') || '–'],
    ['Attempts', `${run.attemptCount} (${plural(run.retries, 'retry', 'retries')}, ${plural(run.fallbacks, 'fallback', 'fallbacks')})`],
    ['Latency', fmt.ms(run.latencyMs)],
    ['Tokens', `${fmt.int(run.tokensIn + run.tokensOut)} (${fmt.int(run.tokensIn)} in, ${fmt.int(run.tokensOut)} out)`],
    ['Cost', run.estimatedCostUsd == null ? fmt.usd(run.costUsd) : `${fmt.usd(run.costUsd)} (estimated ${fmt.usd(run.estimatedCostUsd)})`],
    ['Spec version', String(run.teamVersion)],
    ['Created', fmt.time(run.createdAt)],
    ['Finished', fmt.time(run.finishedAt)],
    ['Conversation', run.conversationId ?? '–'],
  ];
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

function attempts(run) {
  if (run.attempts.length === 0) return note('empty', 'No model was called.');
  const rows = run.attempts.map((a) => [
    String(a.seq), a.agent, a.model, String(a.attempt), h('span', { class: a.outcome === 'ok' ? 'ok' : 'bad' }, a.outcome), fmt.ms(a.latencyMs),
    fmt.int(a.tokensIn + a.tokensOut), fmt.usd(a.costUsd), a.backoffMs == null ? '–' : fmt.ms(a.backoffMs), a.error ?? '',
  ]);
  const list = table('Every call to a model, in order: retries of an agent, then its fallbacks', ['#', 'Agent', 'Model', 'Try', 'Outcome', 'Latency', 'Tokens', 'Cost', 'Backoff', 'Error'], rows, [0, 3, 5, 6, 7, 8]);
  list.classList.add('attempts');
  return list;
}
