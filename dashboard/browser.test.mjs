// The dashboard in a real browser (headless Chromium driven by playwright-core), against the
// real server binary: sign-in and its refusals, the overview's numbers against `teamOverview`,
// a graph's points against `metricsSeries`, latency gaps and chart titles, a new run in the
// activity feed within two seconds and its run page, names beside ids on the usage and audit
// pages, a 420 px wide screen, a non-member's "team not found", empty states, and recovery
// after the server goes away — with no console error. `scripts/browser-tests`
// installs what it needs and runs it:
//   ENSEMBLE_BIN=… PLAYWRIGHT_CORE=…/index.mjs CHROMIUM=/usr/bin/chromium SCREENSHOT=… node --test …

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { fmt } from './ui.js';

const { chromium } = await import(process.env.PLAYWRIGHT_CORE);
const BIN = process.env.ENSEMBLE_BIN;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ensemble-dashboard-'));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const env = {
  ...process.env,
  ENSEMBLE_DATA_DIR: path.join(dir, 'data'),
  DATABASE_URL: `sqlite://${dir}/ensemble.db?mode=rwc`,
  ENSEMBLE_LISTEN: `127.0.0.1:${port}`,
  ENSEMBLE_RATE_LIMIT_PER_MINUTE: '0',
  ENSEMBLE_USAGE_FLUSH_SECS: '1',
  RUST_LOG: 'warn',
};
let server;
let browser;
let alice;
let desk;
let quiet;
/** A team whose `status` questions go to an agent that is down, then fall back to a slow one. */
let relay;
/** An API key of alice's, restricted to `relay`: `{ id, secret }`. */
let key;
/** Console errors and warnings, with the time they were logged. */
const logged = [];

function freePort() {
  return new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

async function startServer() {
  server = spawn(BIN, ['serve'], { env, stdio: 'ignore' });
  for (let i = 0; i < 100; i++) {
    if (await fetch(`${base}/healthz`).then((r) => r.ok, () => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the server did not start');
}

async function stopServer() {
  const exited = new Promise((resolve) => server.once('exit', resolve));
  server.kill('SIGTERM');
  await exited;
}

function token(user) {
  return execFileSync(BIN, ['token', '--user', user], { env, encoding: 'utf8' }).trim().split('\n').pop();
}

async function gql(bearer, query, variables = {}) {
  const response = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${bearer}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data;
}

const run = (teamId, content, wait = true) =>
  gql(alice, 'mutation($t: ID!, $c: String!, $w: Boolean!) { runTeam(teamId: $t, input: {content: $c}, wait: $w) { id status } }', { t: teamId, c: content, w: wait });

const RELAY_SPEC = {
  format: 'ensemble.team/v1',
  agents: [{ name: 'triage', model: 'local/slow-800' }, { name: 'outage', model: 'local/down' }],
  routing: { rules: [{ name: 'status', when: { contains: 'status' }, routeTo: 'outage' }], default: 'triage' },
  fallbacks: { outage: ['triage'] },
  retry: { maxAttempts: 2, initialBackoffMs: 5, maxBackoffMs: 5, jitter: false },
};

/** Waits until the page has drawn what it loads: something shown, and no "Loading…" note. */
async function settled(page) {
  await page.waitForFunction(() => {
    const view = document.querySelector('main .view');
    const body = view?.querySelector('section.page') ?? view;
    return body?.childElementCount > 0 && !view.querySelector('.note.loading');
  });
}

/**
 * Whether runs started now appear in the page's activity feed. The page subscribes just after
 * it renders (and again just after a reconnect), and a run that races that is not replayed, so
 * a few runs are tried, two seconds each.
 */
async function feedShowsNewRuns(page, content, team = desk) {
  for (let attempt = 0; attempt < 5; attempt++) {
    const { runTeam } = await run(team, `${content} (${attempt})`);
    const shown = await page.waitForSelector(`.feed li[data-run="${runTeam.id}"]`, { timeout: 2000 }).then(() => true, () => false);
    if (shown) return true;
  }
  return false;
}

async function signedInPage(viewport = { width: 1280, height: 900 }) {
  const page = await browser.newPage({ viewport });
  page.on('console', (m) => ['error', 'warning'].includes(m.type()) && logged.push({ at: Date.now(), text: m.text() }));
  page.on('pageerror', (e) => logged.push({ at: Date.now(), text: e.message }));
  await page.goto(`${base}/dashboard`);
  await page.fill('#token', alice);
  await page.click('button[type=submit]');
  await page.waitForURL(/#\/teams/);
  return page;
}

before(async () => {
  await startServer();
  alice = token('alice');
  const made = await gql(alice, 'mutation { instantiateTemplate(id: "support-triage", input: {name: "Desk", variables: {company: "Acme"}}) { id } }');
  desk = made.instantiateTemplate.id;
  for (const text of ['My invoice is wrong', 'The app crashes', 'Where is my parcel?']) await run(desk, text);
  quiet = (await gql(alice, 'mutation { createTeam(input: {name: "Quiet"}) { id } }')).createTeam.id;
  await gql(alice, 'mutation { updateProfile(input: {displayName: "Alice Liddell"}) { id } }');
  relay = (await gql(alice, 'mutation($s: JSON) { createTeam(input: {name: "Relay", spec: $s}) { id } }', { s: RELAY_SPEC })).createTeam.id;
  const created = await gql(alice, `mutation($t: ID!) { createApiKey(input: {name: "deploy bot", scopes: [RUNS_EXECUTE, TEAMS_WRITE], teamId: $t}) {
    secret apiKey { id } } }`, { t: relay });
  key = { id: created.createApiKey.apiKey.id, secret: created.createApiKey.secret };
  await gql(key.secret, 'mutation($t: ID!) { runTeam(teamId: $t, input: {content: "Hello from the deploy"}) { id } }', { t: relay });
  await gql(key.secret, 'mutation($t: ID!) { updateTeam(id: $t, input: {description: "Set by the deploy"}) { id } }', { t: relay });
  // Each launch gets a fresh, empty profile from playwright.
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  if (server?.exitCode === null) await stopServer();
  fs.rmSync(dir, { recursive: true, force: true });
});

test('no data without a valid token', async () => {
  const page = await browser.newPage();
  await page.goto(`${base}/dashboard#/team/${desk}/overview`);
  await page.waitForSelector('#token');
  assert.equal(await page.locator('.panel').count(), 0);
  await page.fill('#token', 'garbage');
  await page.click('button[type=submit]');
  await page.waitForSelector('.form-status .error');
  assert.match(await page.innerText('.form-status'), /\S/);
  assert.equal(await page.locator('.panel').count(), 0);
  await page.close();
});

test('the overview shows what teamOverview answers, and new runs arrive live', async () => {
  const page = await signedInPage();
  await page.goto(`${base}/dashboard#/team/${desk}/overview`);
  await page.waitForSelector('.panel');
  const range = { from: new Date(Date.now() - 24 * 3600e3).toISOString(), to: new Date().toISOString() };
  const { teamOverview: o } = await gql(alice, `query($t: ID!, $r: TimeRangeInput) { teamOverview(teamId: $t, range: $r) {
    runs successRate tokensIn tokensOut costUsd retryRate fallbackRate activeConversations latency { p50Ms p95Ms p99Ms } } }`, { t: desk, r: range });
  const expected = {
    'Runs': fmt.int(o.runs), 'Success rate': fmt.pct(o.successRate), 'p50 latency': fmt.ms(o.latency.p50Ms),
    'p95 latency': fmt.ms(o.latency.p95Ms), 'p99 latency': fmt.ms(o.latency.p99Ms), 'Tokens': fmt.int(o.tokensIn + o.tokensOut),
    'Cost': fmt.usd(o.costUsd), 'Retry rate': fmt.pct(o.retryRate), 'Fallback rate': fmt.pct(o.fallbackRate),
    'Active conversations': fmt.int(o.activeConversations),
  };
  for (const [label, value] of Object.entries(expected)) {
    assert.equal(await page.innerText(`.panel[data-panel="${label}"] .value`), value, label);
  }
  assert.equal(expected.Runs, '3');
  assert.ok(await feedShowsNewRuns(page, 'Warming up'), 'the activity feed is live');
  const started = Date.now();
  const { runTeam } = await run(desk, 'One more question');
  await page.waitForSelector(`.feed li[data-run="${runTeam.id}"]`, { timeout: 2000 });
  assert.ok(Date.now() - started < 2000 + 500);
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  await page.close();
});

test('a graph has a point for every point metricsSeries answers', async () => {
  const page = await signedInPage();
  await page.goto(`${base}/dashboard#/team/${desk}/performance`);
  await page.waitForSelector('svg g[data-series="Runs"]');
  const range = { from: new Date(Date.now() - 24 * 3600e3).toISOString(), to: new Date().toISOString() };
  const { metricsSeries } = await gql(alice, 'query($t: ID!, $r: TimeRangeInput) { metricsSeries(teamId: $t, metric: RUNS, bucket: HOUR, range: $r) { points { at value } } }', { t: desk, r: range });
  const drawn = await page.locator('svg g[data-series="Runs"] rect.bar').count();
  assert.ok(Math.abs(drawn - metricsSeries.points.length) <= 1, `${drawn} bars for ${metricsSeries.points.length} points`);
  assert.ok(!(await page.content()).includes('NaN'));
  await page.close();
});

test('latency charts leave a gap where no run finished, and every chart has a title', async () => {
  const page = await signedInPage();
  // The page's own answer, read off the wire, so the drawing is compared with what it was given.
  const answered = page.waitForResponse(async (r) => r.url().endsWith('/graphql') && (r.request().postData() ?? '').includes('DashboardSeries'));
  await page.goto(`${base}/dashboard#/team/${desk}/performance?range=1h`);
  const { data } = await (await answered).json();
  await page.waitForSelector('svg g[data-series="p95"]');
  const values = data.p95.points.map((p) => p.value);
  assert.ok(values.some((v) => v === null), `the hour has minutes without runs: ${values}`);
  assert.ok(values.some((v) => v !== null), 'and minutes with runs');
  // Expected: one path segment per stretch of two or more minutes with a value; a dot per value.
  const stretches = values.reduce((all, v) => (v === null ? all.push([]) : all.at(-1).push(v), all), [[]]).filter((r) => r.length > 1);
  const drawn = await page.$eval('svg g[data-series="p95"]', (g) => ({
    segments: (g.querySelector('path.line')?.getAttribute('d') ?? '').split('M').filter(Boolean).map((seg) => seg.split('L').length),
    dots: [...g.querySelectorAll('circle.dot')].map((c) => Number(c.getAttribute('cy'))),
    zero: Number([...g.closest('svg').querySelectorAll('.y-axis text')].find((t) => t.textContent === '0').getAttribute('y')),
  }));
  assert.deepEqual(drawn.segments, stretches.map((r) => r.length), 'the line breaks at every minute without runs');
  assert.equal(drawn.dots.length, values.filter((v) => v !== null).length);
  assert.ok(drawn.dots.every((y) => y < drawn.zero), `no point is drawn at 0 ms: ${drawn.dots} (0 at ${drawn.zero})`);

  const titles = await page.$$eval('.charts figure.chart-holder', (figures) => figures.map((f) => ({
    shown: f.querySelector('figcaption.chart-title')?.innerText, svg: f.querySelector('svg > title')?.textContent,
  })));
  assert.deepEqual(titles.map((t) => t.shown), ['Runs and failures', 'Latency percentiles', 'Cost', 'Tokens'].map((t) => `${t}, last 1 hour`));
  assert.ok(titles.every((t) => t.shown === t.svg), JSON.stringify(titles));
  await page.close();
});

test('a run in the activity feed opens its page: routing, every attempt, output and cost', async () => {
  const page = await signedInPage();
  await page.goto(`${base}/dashboard#/team/${relay}/overview`);
  assert.ok(await feedShowsNewRuns(page, 'Hello', relay), 'the activity feed is live');
  // Routed to an agent that is down: a retry, then the fallback answers after 800 ms.
  const { runTeam } = await run(relay, 'What is the status of my order?', false);
  await page.click(`.feed li[data-run="${runTeam.id}"] a.run`);
  await page.waitForURL(new RegExp(`#/team/${relay}/run/${runTeam.id}$`));
  await page.waitForFunction(() => document.querySelector('[data-fact="Status"]')?.textContent === 'succeeded', null, { timeout: 10000 });
  const { run: r } = await gql(alice, `query($id: ID!) { run(id: $id) { status output costUsd tokensIn tokensOut latencyMs
    attempts { agent model attempt outcome } } }`, { id: runTeam.id });
  const fact = (name) => page.innerText(`[data-fact="${name}"]`);
  assert.equal(await fact('Routed to'), 'outage');
  assert.equal(await fact('Routing rule'), 'status');
  assert.match(await fact('Reason'), /status/);
  assert.equal(await fact('Answered by'), 'triage · local/slow-800');
  assert.equal(await fact('Attempts'), '3 (1 retry, 1 fallback)');
  assert.ok((await fact('Cost')).startsWith(fmt.usd(r.costUsd)), await fact('Cost'));
  assert.equal(await fact('Latency'), fmt.ms(r.latencyMs));
  assert.match(await fact('Tokens'), new RegExp(`^${fmt.int(r.tokensIn + r.tokensOut)} `));
  const attempts = await page.$$eval('.attempts tbody tr', (rows) => rows.map((row) => [...row.cells].map((c) => c.innerText)));
  assert.deepEqual(attempts.map((cells) => [cells[1], cells[2], Number(cells[3]), cells[4]]), r.attempts.map((a) => [a.agent, a.model, a.attempt, a.outcome]));
  assert.deepEqual(attempts.map((cells) => cells[4]), ['server_error', 'server_error', 'ok']);
  assert.equal(await page.innerText('pre.output'), r.output);
  // A run of another team, or none at all, is not shown under this team.
  const { runTeam: other } = await run(desk, 'Elsewhere');
  for (const id of [other.id, 'run_missing']) {
    await page.goto(`${base}/dashboard#/team/${relay}/run/${id}`);
    await page.waitForSelector('text=Run not found');
  }
  await page.close();
});

test('usage and audit pages show names beside the ids', async () => {
  const page = await signedInPage();
  // Usage reaches the report when the server flushes it (every second here).
  let row;
  for (let i = 0; i < 20 && !row; i++) {
    await page.goto(`${base}/dashboard#/usage?range=30d&groupBy=TEAM,USER,API_KEY`);
    await page.reload();
    await settled(page);
    row = await page.$$eval('table tbody tr', (rows, id) => rows.map((r) => [...r.cells].map((c) => c.innerText)).find((cells) => cells[2].includes(id)), key.id);
    if (!row) await new Promise((r) => setTimeout(r, 250));
  }
  assert.ok(row, 'the key\'s usage is reported');
  assert.deepEqual(row.slice(0, 3).map((cell) => cell.split('\n')), [['Relay', relay], ['Alice Liddell', 'alice'], ['deploy bot', key.id]]);

  await page.goto(`${base}/dashboard#/audit?team=${relay}`);
  await settled(page);
  const rows = await page.$$eval('table tbody tr', (trs) => trs.map((tr) => [...tr.cells].map((c) => c.innerText)));
  const update = rows.find((cells) => cells[3] === 'team.update');
  assert.ok(update, JSON.stringify(rows));
  assert.deepEqual(update[2].split('\n'), ['Alice Liddell', 'alice', `via key deploy bot`, key.id]);
  assert.deepEqual(update[5].split('\n'), ['Relay', relay]);
  await page.close();
});

test('at 420 px wide no page scrolls sideways and the navigation stays usable', async () => {
  const page = await signedInPage({ width: 420, height: 800 });
  const { runs } = await gql(alice, 'query($t: ID!) { runs(teamId: $t, first: 1) { nodes { id } } }', { t: relay });
  const views = ['#/teams', '#/usage?groupBy=DAY,TEAM,USER,API_KEY,MODEL', `#/audit?team=${relay}`,
    ...['overview', 'performance', 'agents', 'errors', 'insights'].map((tab) => `#/team/${relay}/${tab}`),
    `#/team/${relay}/run/${runs.nodes[0].id}`];
  for (const view of views) {
    await page.goto(`${base}/dashboard${view}`);
    await settled(page);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 420, `${view} is ${width} px wide`);
  }
  const links = await page.$$eval('header.top nav a', (as) => as.map((a) => ({ text: a.innerText, href: a.getAttribute('href'), right: a.getBoundingClientRect().right })));
  assert.deepEqual(links.map((l) => l.text), ['Teams', 'Usage', 'Audit log', 'GraphiQL']);
  assert.equal(links.find((l) => l.text === 'GraphiQL').href, '/graphql');
  assert.ok(links.every((l) => l.right <= 420), JSON.stringify(links));
  await page.click('header.top nav a[href="#/usage"]');
  await page.waitForSelector('h1:text("Usage")');
  await page.close();
});

test('empty teams show empty states and strangers learn nothing', async () => {
  const page = await signedInPage();
  await page.goto(`${base}/dashboard#/team/${quiet}/overview`);
  await page.waitForSelector('.panel');
  assert.equal(await page.innerText('.panel[data-panel="Runs"] .value'), '0');
  await page.goto(`${base}/dashboard#/team/${quiet}/performance`);
  await page.waitForSelector('svg');
  assert.ok(!(await page.content()).includes('NaN'));
  await page.evaluate((t) => sessionStorage.setItem('ensemble.token', t), token('mallory'));
  await page.goto(`${base}/dashboard#/team/${desk}/overview`);
  await page.reload();
  await page.waitForSelector('text=Team not found');
  await page.close();
});

test('the page says it is reconnecting while the server is away, and recovers', async () => {
  const page = await signedInPage();
  await page.goto(`${base}/dashboard#/team/${desk}/overview`);
  assert.ok(await feedShowsNewRuns(page, 'Before the outage'), 'the activity feed is live');
  const away = Date.now();
  await stopServer();
  await page.waitForFunction(() => document.getElementById('live-status')?.dataset.status === 'reconnecting');
  await startServer();
  await page.waitForFunction(() => document.getElementById('live-status')?.dataset.status === 'live', null, { timeout: 20000 });
  const back = Date.now();
  assert.ok(await feedShowsNewRuns(page, 'Are you back?'), 'the activity feed resumed after the server came back');
  // The browser reports the refused connections while the server was away; nothing else.
  const errors = logged.filter((e) => e.at < away || e.at > back + 1000);
  assert.deepEqual(errors.map((e) => e.text), []);
  await page.close();
});
