// The dashboard in a real browser (headless Chromium driven by playwright-core), against the
// real server binary: sign-in and its refusals, the overview's numbers against `teamOverview`,
// a graph's points against `metricsSeries`, a new run in the activity feed within two seconds,
// a non-member's "team not found", empty states, and recovery after the server goes away — with
// no console error. `scripts/dashboard-browser-test` installs what it needs and runs it:
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
  ENSEMBLE_DATABASE_URL: `sqlite://${dir}/ensemble.db?mode=rwc`,
  ENSEMBLE_LISTEN: `127.0.0.1:${port}`,
  ENSEMBLE_RATE_LIMIT_PER_MINUTE: '0',
  RUST_LOG: 'warn',
};
let server;
let browser;
let alice;
let desk;
let quiet;
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

const run = (teamId, content) =>
  gql(alice, 'mutation($t: ID!, $c: String!) { runTeam(teamId: $t, input: {content: $c}) { id status } }', { t: teamId, c: content });

/**
 * Whether runs started now appear in the page's activity feed. The page subscribes just after
 * it renders (and again just after a reconnect), and a run that races that is not replayed, so
 * a few runs are tried, two seconds each.
 */
async function feedShowsNewRuns(page, content) {
  for (let attempt = 0; attempt < 5; attempt++) {
    const { runTeam } = await run(desk, `${content} (${attempt})`);
    const shown = await page.waitForSelector(`.feed li[data-run="${runTeam.id}"]`, { timeout: 2000 }).then(() => true, () => false);
    if (shown) return true;
  }
  return false;
}

async function signedInPage() {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
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
  await page.screenshot({ path: process.env.SCREENSHOT, fullPage: true });
  assert.ok(await feedShowsNewRuns(page, 'Warming up'), 'the activity feed is live');
  const started = Date.now();
  const { runTeam } = await run(desk, 'One more question');
  await page.waitForSelector(`.feed li[data-run="${runTeam.id}"]`, { timeout: 2000 });
  assert.ok(Date.now() - started < 2000 + 500);
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
