// The guard mechanism of the batch-shaped write path (docs/write-path.md), proven on the engines
// it runs on: local D1 (Miniflare, workerd's own D1), plain SQLite (python3's sqlite3, and the
// SQLite sqlx bundles when `scripts/d1-guard-check` could build it) and PostgreSQL (psql).
// `scripts/d1-guard-check` runs it:
//   WRANGLER_DIR=… [SQLITE_LIB_DIRS=dir:dir] [GUARD_PG_URL=postgres://…] node --test scripts/d1-guards.test.mjs
//
// A batch is a list of statements run in order as one transaction: D1's `batch()`, or BEGIN
// IMMEDIATE … COMMIT on SQLite. A guard is the statement
//   INSERT INTO write_guard (reason) SELECT ?1 WHERE changes() <> 1    (or `= 0`)
// placed right after the statement it guards; a trigger on write_guard raises the reason, so
// the whole batch rolls back and the caller reads `write_guard:<index>:<code>` in the error.

import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';

const { Miniflare } = createRequire(path.join(process.env.WRANGLER_DIR, 'node_modules', 'wrangler', 'package.json'))(
  'miniflare',
);
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'd1-guards-'));
after(() => fs.rmSync(tmp, { recursive: true, force: true }));

const SCHEMA = [
  'CREATE TABLE teams (id TEXT PRIMARY KEY, name TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL)',
  'CREATE TABLE team_versions (team_id TEXT NOT NULL REFERENCES teams (id), version INTEGER NOT NULL, spec TEXT NOT NULL, PRIMARY KEY (team_id, version))',
  'CREATE TABLE audit_logs (seq INTEGER PRIMARY KEY, action TEXT NOT NULL, prev_hash TEXT NOT NULL, hash TEXT NOT NULL)',
  'CREATE TABLE audit_head (id INTEGER PRIMARY KEY, seq INTEGER NOT NULL, hash TEXT NOT NULL)',
  'CREATE TABLE leases (name TEXT PRIMARY KEY, holder TEXT, expires_at INTEGER NOT NULL)',
  'CREATE TABLE events (id INTEGER PRIMARY KEY, what TEXT NOT NULL)',
  "CREATE TRIGGER teams_event AFTER UPDATE ON teams BEGIN INSERT INTO events (what) VALUES ('team ' || NEW.id); END",
  // The guard: a table that never holds a row, whose trigger raises the reason it is given.
  'CREATE TABLE write_guard (reason TEXT NOT NULL)',
  'CREATE TRIGGER write_guard_abort BEFORE INSERT ON write_guard BEGIN SELECT RAISE(ABORT, NEW.reason); END',
  // A CHECK-constraint guard, for comparison.
  'CREATE TABLE write_check (ok INTEGER NOT NULL CHECK (ok))',
];
const SEED = [
  ["INSERT INTO teams (id, name, version, spec) VALUES ('team_a', 'A', 1, '{\"v\":1}')"],
  ["INSERT INTO team_versions (team_id, version, spec) VALUES ('team_a', 1, '{\"v\":1}')"],
  ["INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, 'genesis')"],
  ["INSERT INTO leases (name, holder, expires_at) VALUES ('audit', NULL, 0)"],
];

/** A guard on the statement just before it: `one` = exactly one row, `some` = at least one. */
const guard = (index, code, expect = 'one') => [
  `INSERT INTO write_guard (reason) SELECT ?1 WHERE changes() ${expect === 'one' ? '<> 1' : '= 0'}`,
  `write_guard:${index}:${code}`,
];
const GUARD_ERROR = /write_guard:(\d+):([a-z_]+)/;

/** The batch of `updateTeam` with a new spec: the version bump, the version row and the audit row. */
function teamUpdate({ expectedVersion, headSeq, spec = '{"v":2}' }) {
  return [
    ['UPDATE teams SET version = version + 1, spec = ?1 WHERE id = ?2 AND version = ?3', spec, 'team_a', expectedVersion],
    guard(0, 'team_version'),
    ['INSERT INTO team_versions (team_id, version, spec) VALUES (?1, ?2, ?3)', 'team_a', expectedVersion + 1, spec],
    // The head first: a stale head would otherwise surface as the log's primary key taken.
    ['UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1 AND seq = ?3', headSeq + 1, 'h' + (headSeq + 1), headSeq],
    guard(3, 'audit_head'),
    ['INSERT INTO audit_logs (seq, action, prev_hash, hash) VALUES (?1, ?2, ?3, ?4)', headSeq + 1, 'team.update', 'h' + headSeq, 'h' + (headSeq + 1)],
  ];
}

const STATE = [
  ['SELECT version, spec FROM teams'],
  ['SELECT count(*) AS n FROM team_versions'],
  ['SELECT count(*) AS n FROM audit_logs'],
  ['SELECT seq FROM audit_head'],
  ['SELECT count(*) AS n FROM write_guard'],
];

// ---------------------------------------------------------------------------------------------
// Engines: each runs a batch as one transaction and answers one result list per statement.
// ---------------------------------------------------------------------------------------------

async function d1Engine() {
  const mf = new Miniflare({
    modules: true,
    script: 'export default { fetch() { return new Response(null, { status: 404 }) } }',
    d1Databases: ['DB'],
  });
  after(() => mf.dispose());
  const db = await mf.getD1Database('DB');
  return {
    name: 'D1 (Miniflare)',
    async batch(statements) {
      const answers = await db.batch(statements.map(([sql, ...params]) => db.prepare(sql).bind(...params)));
      return answers.map((a) => a.results);
    },
    async rejects(sql) {
      return db.prepare(sql).run().then(() => null, (e) => e.message);
    },
  };
}

// python3 runs the batch with its sqlite3 module (LD_LIBRARY_PATH picks the library).
const PY_BATCH = `
import json, sqlite3, sys
path, statements = sys.argv[1], json.loads(sys.stdin.read())
con = sqlite3.connect(path, isolation_level=None)
con.row_factory = sqlite3.Row
try:
    con.execute("BEGIN IMMEDIATE")
    out = [[dict(r) for r in con.execute(s[0], s[1:]).fetchall()] for s in statements]
    con.execute("COMMIT")
    print(json.dumps({"results": out, "version": sqlite3.sqlite_version}))
except sqlite3.Error as e:
    if con.in_transaction:
        con.execute("ROLLBACK")
    print(json.dumps({"error": str(e), "version": sqlite3.sqlite_version}))
`;

function sqliteEngine(libDir) {
  const file = path.join(tmp, `sqlite-${libDir ? path.basename(libDir) : 'system'}.db`);
  const env = { ...process.env, ...(libDir ? { LD_LIBRARY_PATH: libDir } : {}) };
  const run = (statements) => {
    const p = spawnSync('python3', ['-c', PY_BATCH, file], { input: JSON.stringify(statements), env, encoding: 'utf8' });
    assert.equal(p.status, 0, p.stderr);
    return JSON.parse(p.stdout);
  };
  const version = run([]).version;
  return {
    name: `SQLite ${version}${libDir ? ' (bundled by sqlx)' : ' (python3)'}`,
    version,
    async batch(statements) {
      const answer = run(statements);
      if (answer.error) throw new Error(answer.error);
      return answer.results;
    },
  };
}

/** SQLite accepts an expression as RAISE's message from 3.47.0 on. */
const raisesExpressions = (version) => version.split('.').map(Number).reduce((a, n) => a * 1000 + n) >= 3_047_000;

const engines = [await d1Engine(), sqliteEngine(null)];
for (const dir of (process.env.SQLITE_LIB_DIRS || '').split(':').filter(Boolean)) engines.push(sqliteEngine(dir));

for (const engine of engines) {
  const guarded = engine.version === undefined || raisesExpressions(engine.version);
  describe(engine.name, () => {
    const fresh = async () => {
      const drops = ['DROP TRIGGER IF EXISTS teams_event', 'DROP TRIGGER IF EXISTS write_guard_abort'].concat(
        ['write_check', 'write_guard', 'events', 'leases', 'audit_head', 'audit_logs', 'team_versions', 'teams'].map(
          (t) => `DROP TABLE IF EXISTS ${t}`,
        ),
      );
      const schema = guarded ? SCHEMA : SCHEMA.filter((s) => !s.includes('RAISE(ABORT, NEW.reason)'));
      await engine.batch([...drops.map((sql) => [sql]), ...schema.map((sql) => [sql]), ...SEED]);
    };
    const state = async () => (await engine.batch(STATE)).map((rows) => rows[0]);

    test('a statement that fails rolls back the statements before it in the batch', async () => {
      await fresh();
      const failing = [
        ["UPDATE teams SET name = 'changed' WHERE id = 'team_a'"],
        ["INSERT INTO audit_logs (seq, action, prev_hash, hash) VALUES (1, 'x', 'h0', 'h1')"],
        ["INSERT INTO team_versions (team_id, version, spec) VALUES ('team_a', 1, '{}')"], // primary key taken
      ];
      await assert.rejects(engine.batch(failing), /UNIQUE constraint failed: team_versions/);
      const [[team], [logs]] = await engine.batch([['SELECT name FROM teams'], ['SELECT count(*) AS n FROM audit_logs']]);
      assert.deepEqual([team.name, logs.n], ['A', 0]);
    });

    test('changes() reports the last INSERT/UPDATE/DELETE before it in the batch', async () => {
      await fresh();
      const results = await engine.batch([
        ["UPDATE teams SET name = 'B' WHERE id = 'team_a'"], // 1 row (its trigger's row is not counted)
        ['SELECT changes() AS c'],
        ["UPDATE teams SET name = 'B' WHERE id = 'nobody'"], // 0 rows
        ['SELECT changes() AS c'],
        ["INSERT INTO events (what) VALUES ('x'), ('y')"], // 2 rows
        ['SELECT 1 AS unrelated'], // a SELECT in between does not reset it
        ['SELECT changes() AS c'],
        ["INSERT INTO teams (id, name, version, spec) VALUES ('team_a', 'dup', 1, '{}') ON CONFLICT (id) DO NOTHING"],
        ['SELECT changes() AS c'],
        ["DELETE FROM events WHERE what IN ('x', 'y')"],
        ['SELECT changes() AS c'],
        // A conditional upsert (a budget hold): 0 when its WHERE refuses the update, 1 when it updates.
        ["INSERT INTO teams (id, name, version, spec) VALUES ('team_a', 'B', 1, '{}') ON CONFLICT (id) DO UPDATE SET version = teams.version + 1 WHERE teams.version > 5"],
        ['SELECT changes() AS c'],
        ["INSERT INTO teams (id, name, version, spec) VALUES ('team_a', 'B', 1, '{}') ON CONFLICT (id) DO UPDATE SET version = teams.version + 1 WHERE teams.version < 5"],
        ['SELECT changes() AS c'],
      ]);
      const counts = results.filter((rows) => rows[0] && 'c' in rows[0]).map((rows) => rows[0].c);
      assert.deepEqual(counts, [1, 0, 2, 0, 2, 0, 1]);
    });

    test('the write_guard trigger needs SQLite 3.47+ (RAISE with an expression)', { skip: guarded && 'it has it' }, async () => {
      await assert.rejects(engine.batch([[SCHEMA.find((s) => s.includes('RAISE(ABORT, NEW.reason)'))]]), /syntax error/);
    });

    test('a stale team version aborts the whole batch; the reason reaches the caller', { skip: !guarded }, async () => {
      await fresh();
      const error = await engine.batch(teamUpdate({ expectedVersion: 7, headSeq: 0 })).then(() => null, (e) => e);
      assert.ok(error, 'the batch was refused');
      assert.deepEqual(error.message.match(GUARD_ERROR).slice(1), ['0', 'team_version'], error.message);
      assert.deepEqual(await state(), [{ version: 1, spec: '{"v":1}' }, { n: 1 }, { n: 0 }, { seq: 0 }, { n: 0 }]);
    });

    test('the current version commits the bump, the version row and the audit row', { skip: !guarded }, async () => {
      await fresh();
      await engine.batch(teamUpdate({ expectedVersion: 1, headSeq: 0 }));
      assert.deepEqual(await state(), [{ version: 2, spec: '{"v":2}' }, { n: 2 }, { n: 1 }, { seq: 1 }, { n: 0 }]);
    });

    test('a moved audit head aborts the team change too', { skip: !guarded }, async () => {
      await fresh();
      await engine.batch(teamUpdate({ expectedVersion: 1, headSeq: 0 }));
      const error = await engine.batch(teamUpdate({ expectedVersion: 2, headSeq: 0 })).then(() => null, (e) => e);
      assert.deepEqual(error.message.match(GUARD_ERROR).slice(1), ['3', 'audit_head'], error.message);
      assert.deepEqual(await state(), [{ version: 2, spec: '{"v":2}' }, { n: 2 }, { n: 1 }, { seq: 1 }, { n: 0 }]);
    });

    test('a constraint failure is told apart from a guard', { skip: !guarded }, async () => {
      await fresh();
      const batch = teamUpdate({ expectedVersion: 1, headSeq: 0 });
      batch[2] = ['INSERT INTO team_versions (team_id, version, spec) VALUES (?1, ?2, ?3)', 'team_a', 1, '{}'];
      const error = await engine.batch(batch).then(() => null, (e) => e);
      assert.match(error.message, /UNIQUE constraint failed/);
      assert.doesNotMatch(error.message, GUARD_ERROR);
    });

    test('"at least one row" guards a statement that may change several', { skip: !guarded }, async () => {
      await fresh();
      await engine.batch([["INSERT INTO events (what) VALUES ('a'), ('a')"]]);
      await engine.batch([["DELETE FROM events WHERE what = 'a'"], guard(0, 'events', 'some')]);
      const again = await engine.batch([["DELETE FROM events WHERE what = 'a'"], guard(0, 'events', 'some')]).then(
        () => null,
        (e) => e.message,
      );
      assert.match(again, /write_guard:0:events/);
    });

    test('an assertion on the state aborts the batch after the write it checks', { skip: !guarded }, async () => {
      await fresh();
      // "Someone still owns the team": checked on the state the batch's own writes left.
      const assertion = (code) => [
        "INSERT INTO write_guard (reason) SELECT ?1 WHERE NOT EXISTS (SELECT 1 FROM teams WHERE id = 'team_a' AND version = 1)",
        `write_guard:1:${code}`,
      ];
      await engine.batch([["UPDATE teams SET name = 'kept' WHERE id = 'team_a'"], assertion('still_one')]);
      const broken = [["UPDATE teams SET version = 2 WHERE id = 'team_a'"], assertion('still_one')];
      await assert.rejects(engine.batch(broken), /write_guard:1:still_one/);
      assert.deepEqual((await state())[0], { version: 1, spec: '{"v":1}' });
    });

    test('UPDATE … RETURNING claims a lease in a batch; a second claimant gets no row', async () => {
      await fresh();
      const claim = (holder, now) => [
        'UPDATE leases SET holder = ?1, expires_at = ?2 WHERE name = ?3 AND (holder IS NULL OR holder = ?1 OR expires_at < ?4) RETURNING holder, expires_at',
        holder,
        now + 30,
        'audit',
        now,
      ];
      const [first] = await engine.batch([claim('instance-1', 100)]);
      assert.deepEqual(first, [{ holder: 'instance-1', expires_at: 130 }]);
      const [second] = await engine.batch([claim('instance-2', 110)]);
      assert.deepEqual(second, []);
      const [renewed] = await engine.batch([claim('instance-1', 120)]);
      assert.deepEqual(renewed, [{ holder: 'instance-1', expires_at: 150 }]);
      const [taken] = await engine.batch([claim('instance-2', 200)]); // expired: taken over
      assert.deepEqual(taken, [{ holder: 'instance-2', expires_at: 230 }]);
      if (guarded) {
        // Guarded, a lost claim aborts what was to be written under it.
        const lost = [claim('instance-1', 210), guard(0, 'lease'), ["INSERT INTO events (what) VALUES ('under lease')"]];
        await assert.rejects(engine.batch(lost), /write_guard:0:lease/);
        const [[n]] = await engine.batch([["SELECT count(*) AS n FROM events WHERE what = 'under lease'"]]);
        assert.equal(n.n, 0);
      }
    });

    test('INSERT … SELECT … WHERE inserts nothing but does not abort the batch', async () => {
      await fresh();
      await engine.batch([
        ["UPDATE teams SET version = version + 1 WHERE id = 'team_a' AND version = 9"],
        ["INSERT INTO team_versions (team_id, version, spec) SELECT 'team_a', 10, '{}' WHERE changes() = 1"],
        ["INSERT INTO audit_logs (seq, action, prev_hash, hash) VALUES (1, 'team.update', 'h0', 'h1')"],
      ]);
      const [[versions], [logs]] = await engine.batch([
        ['SELECT count(*) AS n FROM team_versions'],
        ['SELECT count(*) AS n FROM audit_logs'],
      ]);
      assert.deepEqual([versions.n, logs.n], [1, 1], 'the audit row committed although the change did not happen');
    });

    test('a CHECK-constraint guard aborts but loses the reason and keeps a row when it holds', async () => {
      await fresh();
      const check = ['INSERT INTO write_check (ok) SELECT changes() = 1'];
      await assert.rejects(
        engine.batch([["UPDATE teams SET name = 'x' WHERE id = 'nobody'"], check]),
        (e) => /CHECK constraint failed/.test(e.message) && !/team/.test(e.message),
      );
      await engine.batch([["UPDATE teams SET name = 'x' WHERE id = 'team_a'"], check]);
      const [[rows]] = await engine.batch([['SELECT count(*) AS n FROM write_check']]);
      assert.equal(rows.n, 1);
    });

    if (engine.rejects) {
      test('D1 refuses BEGIN and SAVEPOINT; RAISE outside a trigger is refused too', async () => {
        for (const sql of ['BEGIN', 'BEGIN IMMEDIATE', 'SAVEPOINT s1']) {
          assert.match((await engine.rejects(sql)) ?? 'accepted', /use the state\.storage\.transaction\(\)/, sql);
        }
        assert.match(await engine.rejects("SELECT RAISE(ABORT, 'x')"), /may only be used within a trigger-program/);
      });
    }
  });
}

// ---------------------------------------------------------------------------------------------
// PostgreSQL: no changes(). The executor runs the batch in a transaction and checks each guarded
// statement's row count itself (psql's :ROW_COUNT stands in for sqlx's rows_affected here).
// ---------------------------------------------------------------------------------------------

const PG = process.env.GUARD_PG_URL;
describe('PostgreSQL', { skip: PG ? false : 'GUARD_PG_URL is not set' }, () => {
  const schema = `ensemble_guards_${process.pid}`;
  const psql = (script) => {
    const p = spawnSync('psql', [PG, '-X', '-q', '-A', '-t', '-v', 'ON_ERROR_STOP=1'], {
      input: `SET search_path TO ${schema};\n${script}`,
      encoding: 'utf8',
    });
    return { status: p.status, out: p.stdout.trim(), err: p.stderr.trim() };
  };
  const ok = (script) => {
    const r = psql(script);
    assert.equal(r.status, 0, r.err);
    return r.out;
  };
  const reset = () =>
    ok(`DROP SCHEMA IF EXISTS ${schema} CASCADE; CREATE SCHEMA ${schema}; SET search_path TO ${schema};
        CREATE TABLE teams (id text PRIMARY KEY, version int NOT NULL, spec text NOT NULL);
        CREATE TABLE team_versions (team_id text REFERENCES teams (id), version int, spec text, PRIMARY KEY (team_id, version));
        CREATE TABLE audit_logs (seq bigint PRIMARY KEY, action text NOT NULL);
        CREATE TABLE leases (name text PRIMARY KEY, holder text, expires_at bigint NOT NULL);
        INSERT INTO teams VALUES ('team_a', 1, 'v1'); INSERT INTO team_versions VALUES ('team_a', 1, 'v1');
        INSERT INTO leases VALUES ('audit', NULL, 0);`);
  after(() => PG && psql(`DROP SCHEMA IF EXISTS ${schema} CASCADE`));

  // The batch as the sqlx executor runs it: a guarded statement whose count is not 1 rolls back.
  const teamUpdate = (expected) => `
    BEGIN;
    UPDATE teams SET version = version + 1, spec = 'v2' WHERE id = 'team_a' AND version = ${expected};
    SELECT :ROW_COUNT = 1 AS held \\gset
    \\if :held
      INSERT INTO team_versions VALUES ('team_a', ${expected + 1}, 'v2');
      INSERT INTO audit_logs VALUES (1, 'team.update');
      COMMIT;
      SELECT 'committed';
    \\else
      ROLLBACK;
      SELECT 'write_guard:0:team_version';
    \\endif
    SELECT version || ' ' || (SELECT count(*) FROM team_versions) || ' ' || (SELECT count(*) FROM audit_logs) FROM teams;`;

  test('a stale version changes no row; the executor rolls the batch back', () => {
    reset();
    assert.deepEqual(ok(teamUpdate(7)).split('\n'), ['write_guard:0:team_version', '1 1 0']);
    assert.deepEqual(ok(teamUpdate(1)).split('\n'), ['committed', '2 2 1']);
  });

  test('a guarded UPDATE that waited for a concurrent writer sees its commit and changes no row', async () => {
    reset();
    const holder = spawn('psql', [PG, '-X', '-q', '-v', 'ON_ERROR_STOP=1'], { stdio: ['pipe', 'ignore', 'inherit'] });
    holder.stdin.end(
      `SET search_path TO ${schema}; BEGIN; UPDATE teams SET version = 2 WHERE id = 'team_a' AND version = 1; SELECT pg_sleep(1.5); COMMIT;`,
    );
    const held = new Promise((resolve) => holder.on('exit', resolve));
    await new Promise((r) => setTimeout(r, 500)); // the holder has the row lock by now
    const started = Date.now();
    const answer = ok(`UPDATE teams SET version = version + 1 WHERE id = 'team_a' AND version = 1; SELECT :ROW_COUNT;`);
    const waited = Date.now() - started;
    assert.equal(await held, 0);
    assert.equal(answer, '0', 'READ COMMITTED re-checks the WHERE on the committed row: no lost update');
    assert.ok(waited > 500, `the guarded UPDATE waited for the row lock (${waited} ms)`);
    assert.equal(ok('SELECT version FROM teams'), '2');
  });

  test('UPDATE … RETURNING claims a lease; a second claimant gets no row', () => {
    reset();
    const claim = (holder, now) =>
      `UPDATE leases SET holder = '${holder}', expires_at = ${now + 30} WHERE name = 'audit' AND (holder IS NULL OR holder = '${holder}' OR expires_at < ${now}) RETURNING holder || ' ' || expires_at;`;
    assert.equal(ok(claim('instance-1', 100)), 'instance-1 130');
    assert.equal(ok(claim('instance-2', 110)), '');
    assert.equal(ok(claim('instance-2', 200)), 'instance-2 230');
  });

  test('in one statement instead: a data-modifying CTE and a function that raises the reason', () => {
    reset();
    ok(`CREATE FUNCTION write_guard(changed bigint, expected text, reason text) RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
          IF (expected = 'one' AND changed <> 1) OR (expected = 'some' AND changed = 0) THEN
            RAISE EXCEPTION USING MESSAGE = reason, ERRCODE = 'P0001';
          END IF;
        END $$;`);
    const r = psql(`BEGIN;
      WITH changed AS (UPDATE teams SET version = version + 1 WHERE id = 'team_a' AND version = 7 RETURNING 1)
      SELECT write_guard((SELECT count(*) FROM changed), 'one', 'write_guard:0:team_version');
      INSERT INTO audit_logs VALUES (1, 'team.update');
      COMMIT;`);
    assert.notEqual(r.status, 0);
    assert.match(r.err, GUARD_ERROR);
    assert.equal(ok('SELECT version || \' \' || (SELECT count(*) FROM audit_logs) FROM teams'), '1 0');
  });
});
