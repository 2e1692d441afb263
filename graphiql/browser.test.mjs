// GraphiQL in a real browser (headless Chromium driven by playwright-core), against the real
// server binary, with every request that is not to this machine blocked and recorded: the page
// loads from the binary alone, introspects (the documentation explorer shows the schema), runs a
// query with the Headers tab sent over HTTP, and runs a subscription that needs those headers in
// the websocket's `connection_init` — with no console error (a CSP violation is one).
// scripts/browser-tests installs what it needs and runs it:
//   ENSEMBLE_BIN=… PLAYWRIGHT_CORE=…/index.mjs CHROMIUM=/usr/bin/chromium node --test …

import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

const { chromium } = await import(process.env.PLAYWRIGHT_CORE);
const BIN = process.env.ENSEMBLE_BIN;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ensemble-graphiql-'));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
const env = {
  ...process.env,
  ENSEMBLE_DATA_DIR: path.join(dir, 'data'),
  DATABASE_URL: `sqlite://${dir}/ensemble.db?mode=rwc`,
  ENSEMBLE_LISTEN: `127.0.0.1:${port}`,
  ENSEMBLE_RATE_LIMIT_PER_MINUTE: '0',
  RUST_LOG: 'warn',
  NO_COLOR: '1',
};
let server;
let browser;
let context;
let alice;
let team;
/** Requests and websockets to anywhere but this machine: none may be attempted. */
const outside = [];
/** Console errors and uncaught exceptions of every page. */
const logged = [];

function freePort() {
  return new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

const isLoopback = (url) => ['127.0.0.1', 'localhost', '[::1]'].includes(new URL(url).hostname);

async function gql(query, variables = {}) {
  const response = await fetch(`${base}/graphql`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${alice}` },
    body: JSON.stringify({ query, variables }),
  });
  const body = await response.json();
  assert.equal(body.errors, undefined, JSON.stringify(body.errors));
  return body.data;
}

/** Waits until `check` answers true, polling, for at most `ms`. */
async function until(check, ms, what, every = 50) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (await check()) return;
    await new Promise((r) => setTimeout(r, every));
  }
  assert.fail(`timed out waiting for ${what}`);
}

/** A fresh GraphiQL page; `frames` collects what its websockets send, `posted` its POST bodies. */
async function graphiql() {
  const page = await context.newPage();
  const frames = [];
  const posted = [];
  page.on('request', (request) => request.method() === 'POST' && posted.push(request.postData()));
  page.on('console', (m) => m.type() === 'error' && logged.push(m.text()));
  page.on('pageerror', (e) => logged.push(e.message));
  page.on('websocket', (socket) => {
    if (!isLoopback(socket.url())) outside.push(socket.url());
    socket.on('framesent', (frame) => frames.push(JSON.parse(frame.payload)));
  });
  await page.goto(`${base}/graphql`);
  await page.waitForSelector('.graphiql-container .graphiql-query-editor .CodeMirror');
  return { page, frames, posted };
}

const editor = (page, selector) => page.locator(`${selector} .CodeMirror`).first();

async function setQuery(page, text) {
  await editor(page, '.graphiql-query-editor').evaluate((e, t) => e.CodeMirror.setValue(t), text);
}

/** Types `headers` into the Headers tab, as a person pasting them would. */
async function typeHeaders(page, headers) {
  await page.getByRole('button', { name: 'Headers', exact: true }).click();
  const headersEditor = editor(page, '.graphiql-editor-tool .graphiql-editor:not(.hidden)');
  await headersEditor.click();
  await page.keyboard.press('Control+A');
  await page.keyboard.insertText(JSON.stringify(headers));
  assert.deepEqual(JSON.parse(await headersEditor.evaluate((e) => e.CodeMirror.getValue())), headers);
}

const response = (page) => editor(page, '.graphiql-response').evaluate((e) => e.CodeMirror.getValue());

async function run(page) {
  await page.locator('.graphiql-execute-button').click();
}

before(async () => {
  server = spawn(BIN, ['serve'], { env, stdio: 'ignore' });
  await until(() => fetch(`${base}/healthz`).then((r) => r.ok, () => false), 30_000, 'the server');
  alice = execFileSync(BIN, ['token', '--user', 'alice', '--role', 'admin'], { env, encoding: 'utf8' }).trim().split('\n').pop();
  team = (await gql('mutation { createTeam(input: {name: "Watched"}) { id } }')).createTeam.id;
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM,
    // No name resolves but this machine's, on top of the request blocking below.
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1'],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (isLoopback(url) || url.startsWith('data:')) return route.continue();
    outside.push(url);
    return route.abort();
  });
});

after(async () => {
  await browser?.close();
  if (server?.exitCode === null) {
    const exited = new Promise((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    await exited;
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('GraphiQL loads from the server alone and its documentation explorer shows the schema', async () => {
  const { page } = await graphiql();
  await page.getByRole('button', { name: 'Show Documentation Explorer' }).click();
  const explorer = page.locator('.graphiql-doc-explorer');
  await explorer.getByText('Query', { exact: true }).first().click();
  await explorer.getByText('serverInfo', { exact: true }).waitFor();
  assert.doesNotMatch(await page.innerText('body'), /Error fetching schema|nested too deep|nests fields/);
  await page.close();
});

test('a query runs, with the Headers tab sent over HTTP', async () => {
  const { page } = await graphiql();
  await setQuery(page, '{ me { id } serverInfo { limits { depth } } }');
  await run(page);
  await until(async () => (await response(page)).includes('"depth": 10'), 10_000, 'the anonymous answer');
  assert.match(await response(page), /"me": null/);

  await typeHeaders(page, { Authorization: `Bearer ${alice}` });
  await run(page);
  await until(async () => (await response(page)).includes('"me": {'), 10_000, "alice's answer");
  await page.close();
});

test("a subscription gets the Headers tab's values in connection_init", async () => {
  const { page, frames, posted } = await graphiql();
  await setQuery(page, `subscription { auditLogAdded(teamId: "${team}") { action resourceId } }`);

  // Anonymous, the subscription is refused: headers that did not reach the socket fail here.
  await run(page);
  await until(async () => /"errors"|error/i.test(await response(page)), 10_000, 'the refusal');
  assert.doesNotMatch(await response(page), /team\.update/);

  await typeHeaders(page, { Authorization: `Bearer ${alice}`, 'X-Trace': 'graphiql-test' });
  await run(page);
  const init = () => frames.filter((f) => f.type === 'connection_init').at(-1);
  await until(() => init()?.payload?.Authorization === `Bearer ${alice}`, 10_000, 'connection_init with the headers');
  assert.equal(init().payload['X-Trace'], 'graphiql-test');
  await until(() => frames.some((f) => f.type === 'subscribe' && f.payload.query.includes('auditLogAdded')), 10_000, 'subscribe');
  // The subscription starts just after `subscribe` reaches the server: change the team until a
  // change is seen (a change made before the server follows the log is not replayed).
  await until(async () => {
    await gql('mutation($id: ID!, $d: String!) { updateTeam(id: $id, input: {description: $d}) { id } }', { id: team, d: `at ${Date.now()}` });
    return (await response(page)).includes('team.update');
  }, 10_000, 'the audit row in the response pane', 500);
  assert.match(await response(page), new RegExp(`"resourceId": "${team}"`));
  // Run at once after the editor changed, the subscription still went over the websocket only.
  assert.deepEqual(posted.filter((body) => body?.includes('auditLogAdded')), []);
  await page.close();
});

test('nothing outside this machine was requested, and nothing was logged as an error', () => {
  assert.deepEqual(outside, []);
  assert.deepEqual(logged, []);
});
