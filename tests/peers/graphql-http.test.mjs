// The GraphQL-over-HTTP audit of the `graphql-http` package (its `serverAudits`, what
// https://graphql-http.com runs) against the real server binary: every audit passes, none
// fails and none warns. `scripts/peer-tests` installs the pinned packages and runs it:
//   ENSEMBLE_BIN=… GRAPHQL_HTTP=…/graphql-http/lib/index.mjs node --test tests/peers/

import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

const { serverAudits } = await import(process.env.GRAPHQL_HTTP);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ensemble-peers-'));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
let server;

function freePort() {
  return new Promise((resolve) => {
    const probe = net.createServer().listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

before(async () => {
  const env = {
    ...process.env,
    DATABASE_URL: `sqlite://${dir}/ensemble.db`,
    ENSEMBLE_DATA_DIR: path.join(dir, 'data'),
    ENSEMBLE_LISTEN: `127.0.0.1:${port}`,
    RUST_LOG: 'warn',
  };
  server = spawn(process.env.ENSEMBLE_BIN, ['serve'], { env, stdio: 'ignore' });
  for (let i = 0; i < 300; i++) {
    if (await fetch(`${base}/healthz`).then((r) => r.ok, () => false)) return;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error('the server did not start within 30 s');
});

after(async () => {
  if (server && server.exitCode === null) {
    const exited = new Promise((resolve) => server.once('exit', resolve));
    server.kill('SIGTERM');
    await exited;
  }
  fs.rmSync(dir, { recursive: true, force: true });
});

test('the GraphQL-over-HTTP audit of graphql-http passes without a warning', async () => {
  const audits = serverAudits({ url: `${base}/graphql`, fetchFn: fetch });
  const notOk = [];
  for (const audit of audits) {
    const result = await audit.fn();
    if (result.status !== 'ok') notOk.push(`${result.status} ${audit.id} ${audit.name}: ${result.reason}`);
  }
  assert.ok(audits.length > 40, `only ${audits.length} audits ran`);
  assert.deepEqual(notOk, [], `${notOk.length} of ${audits.length} audits did not pass`);
});
