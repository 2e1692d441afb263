// Tests of the D1 bridge Worker on the real D1 engine (Miniflare/workerd, offline).
// Run by scripts/d1-bridge-tests: `node --test d1-bridge/bridge.test.mjs` with
// ENSEMBLE_WRANGLER_DIR set to a wrangler install (Miniflare comes with it), and optionally
// BRIDGE_D1_PERSIST pointing at a local D1 the repository's migrations were applied to.
import { createHmac } from "node:crypto";
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { join } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { d1Error } from "./src/errors.js";

const here = fileURLToPath(new URL(".", import.meta.url));
const SECRET = "test-secret-0123456789abcdef-0123456789abcdef";
const config = readFileSync(join(here, "wrangler.toml"), "utf8");
const compatibilityDate = config.match(/^compatibility_date\s*=\s*"([^"]+)"/m)[1];
const databaseId = config.match(/^database_id\s*=\s*"([^"]+)"/m)[1];

const wranglerDir = process.env.ENSEMBLE_WRANGLER_DIR;
assert.ok(wranglerDir, "set ENSEMBLE_WRANGLER_DIR to a wrangler install");
const fromWrangler = createRequire(join(wranglerDir, "node_modules", "wrangler", "package.json"));
const { Miniflare } = await import(pathToFileURL(fromWrangler.resolve("miniflare")).href);

/** A bridge in Miniflare; `bindings` replace the defaults (secret, key TTL). */
function startBridge(bindings = { ENSEMBLE_D1_SECRET: SECRET }, d1Persist = false) {
  return new Miniflare({
    modules: true,
    modulesRules: [{ type: "ESModule", include: ["**/*.js"] }],
    scriptPath: join(here, "src", "index.js"),
    compatibilityDate,
    d1Databases: { DB: databaseId },
    d1Persist,
    bindings,
  });
}

let mf;
const answers = []; // every status line, header and body the bridge sent, for the secret check

before(async () => {
  mf = startBridge(undefined, process.env.BRIDGE_D1_PERSIST || false);
  await mf.ready;
});
after(() => mf?.dispose());

/** The signing scheme of README.md, written independently of the Worker's code. */
function sign(method, path, timestamp, body, secret = SECRET) {
  return createHmac("sha256", secret).update(`${method}\n${path}\n${timestamp}\n`).update(body).digest("hex");
}

async function call(path, body, { method = "POST", skew = 0, headers, bridge = mf } = {}) {
  const text = body === undefined ? "" : typeof body === "string" ? body : JSON.stringify(body);
  const timestamp = String(Math.floor(Date.now() / 1000) + skew);
  const signed = {
    "content-type": "application/json",
    "x-ensemble-timestamp": timestamp,
    "x-ensemble-signature": sign(method, path, timestamp, text),
  };
  const res = await bridge.dispatchFetch(`http://bridge.test${path}`, {
    method,
    headers: headers ?? signed,
    body: method === "GET" || method === "HEAD" ? undefined : text,
  });
  const raw = await res.text();
  answers.push(`${res.status} ${JSON.stringify([...res.headers])} ${raw}`);
  return { status: res.status, headers: res.headers, json: raw ? JSON.parse(raw) : null };
}

const query = (sql, params = []) => call("/query", { sql, params });
const batch = (statements, idempotencyKey = crypto.randomUUID()) =>
  call("/batch", { statements, idempotencyKey });
/** A /query answer's rows as objects keyed by column name. */
const rowsOf = (res) => res.json.rows.map((row) => Object.fromEntries(res.json.columns.map((c, i) => [c, row[i]])));
const count = async (table) => rowsOf(await query(`SELECT count(*) AS n FROM ${table}`))[0].n;

test("a batch creates tables and answers each statement's rows and meta", async () => {
  const res = await batch([
    { sql: "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL UNIQUE)" },
    { sql: "INSERT INTO notes (body) VALUES (?), (?)", params: ["first", "second"] },
    { sql: "SELECT body FROM notes ORDER BY id" },
  ]);
  assert.equal(res.status, 200, JSON.stringify(res.json));
  assert.equal(res.json.replayed, false);
  assert.equal(res.json.results.length, 3);
  assert.deepEqual(res.json.results[1].meta.changes, 2);
  assert.equal(res.json.results[1].meta.last_row_id, 2);
  assert.equal(typeof res.json.results[1].meta.duration, "number");
  assert.deepEqual(res.json.results[2].results, [{ body: "first" }, { body: "second" }]);
});

test("a query binds its params and answers its columns in order and each row as an array", async () => {
  const res = await query("SELECT id, body FROM notes WHERE body = ? OR id = ? ORDER BY id", ["second", 1]);
  assert.equal(res.status, 200, JSON.stringify(res.json));
  assert.deepEqual(res.json, {
    columns: ["id", "body"],
    rows: [
      [1, "first"],
      [2, "second"],
    ],
  });
});

test("a query keeps columns that share a name, and columns JavaScript would reorder", async () => {
  const res = await query("SELECT 'b' AS z, 2 AS \"1\", a.body, b.body FROM notes a JOIN notes b ON b.id = a.id + 1 WHERE a.id = 1");
  assert.equal(res.status, 200, JSON.stringify(res.json));
  assert.deepEqual(res.json.columns, ["z", "1", "body", "body"]);
  assert.deepEqual(res.json.rows, [["b", 2, "first", "second"]]);
});

test("a query that writes is applied and answers no rows", async () => {
  const res = await query("INSERT INTO notes (body) VALUES (?)", ["third"]);
  assert.equal(res.status, 200, JSON.stringify(res.json));
  assert.deepEqual(res.json.rows, []);
  assert.deepEqual(rowsOf(await query("SELECT id FROM notes WHERE body = 'third'")), [{ id: 3 }]);
});

test("a batch whose second statement fails applies nothing and names the statement", async () => {
  const before = await count("notes");
  const res = await batch([
    { sql: "INSERT INTO notes (body) VALUES (?)", params: ["applied only with the rest"] },
    { sql: "INSERT INTO notes (body) VALUES (?)", params: ["first"] }, // UNIQUE violation
    { sql: "INSERT INTO notes (body) VALUES (?)", params: ["never reached"] },
  ]);
  assert.equal(res.status, 409);
  assert.equal(res.json.error.code, "CONSTRAINT");
  assert.equal(res.json.error.index, 1);
  assert.match(res.json.error.message, /^statement 1: .*UNIQUE constraint failed: notes\.body/);
  assert.equal(await count("notes"), before);
});

test("a SQL error in a batch is reported with its index and applies nothing", async () => {
  const before = await count("notes");
  const res = await batch([
    { sql: "INSERT INTO notes (body) VALUES ('x1')" },
    { sql: "INSERT INTO notes (body) VALUES ('x2')" },
    { sql: "SELEC oops" },
  ]);
  assert.equal(res.status, 422);
  assert.equal(res.json.error.code, "SQL");
  assert.equal(res.json.error.index, 2);
  assert.equal(await count("notes"), before);
});

test("a failing query answers CONSTRAINT or SQL", async () => {
  const dup = await query("INSERT INTO notes (body) VALUES ('first')");
  assert.equal(dup.status, 409);
  assert.equal(dup.json.error.code, "CONSTRAINT");
  const bad = await query("SELECT * FROM no_such_table");
  assert.equal(bad.status, 422);
  assert.equal(bad.json.error.code, "SQL");
  assert.match(bad.json.error.message, /no such table/);
});

test("a replayed batch is applied once and answers the first outcome", async () => {
  const key = "replay-" + crypto.randomUUID();
  const statements = [
    { sql: "INSERT INTO notes (body) VALUES (?)", params: ["once"] },
    { sql: "SELECT count(*) AS n FROM notes WHERE body = 'once'" },
  ];
  const first = await batch(statements, key);
  const again = await batch(statements, key);
  assert.equal(first.status, 200);
  assert.equal(again.status, 200);
  assert.equal(first.json.replayed, false);
  assert.equal(again.json.replayed, true);
  assert.deepEqual(again.json.results, first.json.results);
  assert.deepEqual(rowsOf(await query("SELECT count(*) AS n FROM notes WHERE body = 'once'")), [{ n: 1 }]);
});

test("a key reused for a different batch is refused and applies nothing", async () => {
  const key = "reuse-" + crypto.randomUUID();
  await batch([{ sql: "INSERT INTO notes (body) VALUES ('reuse a')" }], key);
  const res = await batch([{ sql: "INSERT INTO notes (body) VALUES ('reuse b')" }], key);
  assert.equal(res.status, 409);
  assert.equal(res.json.error.code, "IDEMPOTENCY_KEY_REUSED");
  assert.equal(rowsOf(await query("SELECT * FROM notes WHERE body = 'reuse b'")).length, 0);
});

test("a failed batch does not use up its key", async () => {
  const key = "retry-after-failure-" + crypto.randomUUID();
  const failed = await batch([{ sql: "INSERT INTO notes (body) VALUES ('first')" }], key);
  assert.equal(failed.json.error.code, "CONSTRAINT");
  const ok = await batch([{ sql: "INSERT INTO notes (body) VALUES ('fresh')" }], key);
  assert.equal(ok.status, 200);
  assert.equal(ok.json.replayed, false);
});

test("a batch without an idempotency key is refused", async () => {
  const res = await call("/batch", { statements: [{ sql: "INSERT INTO notes (body) VALUES ('nokey')" }] });
  assert.equal(res.status, 400);
  assert.equal(res.json.error.code, "BAD_REQUEST");
  assert.match(res.json.error.message, /idempotencyKey is required/);
  assert.equal(rowsOf(await query("SELECT * FROM notes WHERE body = 'nokey'")).length, 0);
});

test("missing, malformed and wrong signatures are refused", async () => {
  const body = JSON.stringify({ sql: "INSERT INTO notes (body) VALUES ('unsigned')" });
  const ts = String(Math.floor(Date.now() / 1000));
  const cases = [
    {},
    { "x-ensemble-timestamp": ts },
    { "x-ensemble-timestamp": ts, "x-ensemble-signature": "not-hex" },
    { "x-ensemble-timestamp": ts, "x-ensemble-signature": sign("POST", "/query", ts, body, "another-secret-of-enough-length-000") },
    { "x-ensemble-timestamp": ts, "x-ensemble-signature": sign("POST", "/batch", ts, body) }, // other path
    { "x-ensemble-timestamp": ts, "x-ensemble-signature": sign("POST", "/query", ts, body + " ") }, // other body
  ];
  for (const headers of cases) {
    const res = await call("/query", body, { headers });
    assert.equal(res.status, 401, JSON.stringify(headers));
    assert.equal(res.json.error.code, "UNAUTHORIZED");
  }
  assert.equal(rowsOf(await query("SELECT * FROM notes WHERE body = 'unsigned'")).length, 0);
});

test("a timestamp more than 300 s away is refused, saying so", async () => {
  for (const skew of [-301, 301, -3600]) {
    const res = await call("/query", { sql: "SELECT 1" }, { skew });
    assert.equal(res.status, 401);
    assert.equal(res.json.error.code, "UNAUTHORIZED");
    assert.match(res.json.error.message, /stale timestamp/);
  }
  assert.equal((await call("/query", { sql: "SELECT 1" }, { skew: -250 })).status, 200);
});

test("unknown paths and other methods answer 404/405 and touch nothing", async () => {
  const statements = [{ sql: "INSERT INTO notes (body) VALUES ('elsewhere')" }];
  const body = { statements, idempotencyKey: "elsewhere" };
  for (const path of ["/", "/exec", "/batch/", "/query/x", "/admin", "/batch%20", "/d1/exec", "/query/"]) {
    const res = await call(path, body);
    assert.equal(res.status, 404, path);
    assert.equal(res.json.error.code, "NOT_FOUND");
  }
  for (const method of ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"]) {
    const res = await call("/batch", body, { method });
    assert.equal(res.status, 405, method);
    assert.equal(res.json.error.code, "METHOD_NOT_ALLOWED");
    assert.equal(res.headers.get("allow"), "POST");
  }
  assert.equal(rowsOf(await query("SELECT * FROM notes WHERE body = 'elsewhere'")).length, 0);
});

test("mounted on a route, the bridge answers under the route's path, signed with that path", async () => {
  const res = await call("/ensemble/d1/query", { sql: "SELECT 7 AS n" });
  assert.equal(res.status, 200);
  assert.deepEqual(res.json, { columns: ["n"], rows: [[7]] });
  const written = await call("/ensemble/d1/batch", {
    statements: [{ sql: "INSERT INTO notes (body) VALUES ('routed')" }],
    idempotencyKey: crypto.randomUUID(),
  });
  assert.equal(written.status, 200);
  assert.equal(rowsOf(await query("SELECT * FROM notes WHERE body = 'routed'")).length, 1);
  // A signature made for another path does not carry over.
  const timestamp = String(Math.floor(Date.now() / 1000));
  const body = JSON.stringify({ sql: "SELECT 1" });
  const headers = {
    "content-type": "application/json",
    "x-ensemble-timestamp": timestamp,
    "x-ensemble-signature": sign("POST", "/query", timestamp, body),
  };
  const moved = await call("/ensemble/d1/query", body, { headers });
  assert.equal(moved.status, 401);
});

test("a database whose key table was dropped gets it again, and the batch is applied once", async () => {
  assert.equal((await batch([{ sql: "INSERT INTO notes (body) VALUES ('before drop')" }])).status, 200);
  assert.equal((await query("DROP TABLE _bridge_writes")).status, 200);
  const key = crypto.randomUUID();
  const statements = [{ sql: "INSERT INTO notes (body) VALUES ('after drop')" }];
  assert.equal((await batch(statements, key)).status, 200);
  const again = await batch(statements, key);
  assert.equal(again.json.replayed, true);
  assert.equal(rowsOf(await query("SELECT * FROM notes WHERE body = 'after drop'")).length, 1);
});

test("an oversize statement is refused before it reaches D1", async () => {
  const huge = "INSERT INTO notes (body) VALUES ('huge') -- " + "x".repeat(100_000);
  const one = await query(huge);
  assert.equal(one.status, 400);
  assert.equal(one.json.error.code, "BAD_REQUEST");
  assert.match(one.json.error.message, /D1 accepts at most 100000/);
  const res = await batch([{ sql: "INSERT INTO notes (body) VALUES ('before huge')" }, { sql: huge }]);
  assert.equal(res.status, 400);
  assert.equal(res.json.error.index, 1);
  assert.match(res.json.error.message, /^statements\[1\]: sql is 1000\d\d bytes/);
  const rows = await query("SELECT * FROM notes WHERE body IN ('huge', 'before huge')");
  assert.equal(rows.json.rows.length, 0);
});

test("too many or unsupported params are refused before they reach D1", async () => {
  const tooMany = await query("INSERT INTO notes (body) SELECT 'many' WHERE ? IS NOT NULL", Array(101).fill(1));
  assert.equal(tooMany.status, 400);
  assert.match(tooMany.json.error.message, /101 params; D1 accepts at most 100/);
  for (const bad of [{ a: 1 }, [1], 2 ** 53 + 2]) {
    const res = await query("SELECT ?", [bad]);
    assert.equal(res.status, 400, JSON.stringify(bad));
    assert.equal(res.json.error.code, "BAD_REQUEST");
  }
  const exact = await query("SELECT ? AS n", [2 ** 53 - 1]);
  assert.deepEqual(rowsOf(exact), [{ n: 2 ** 53 - 1 }]);
  assert.equal(rowsOf(await query("SELECT * FROM notes WHERE body = 'many'")).length, 0);
});

test("malformed bodies are refused with BAD_REQUEST", async () => {
  for (const [path, body] of [
    ["/query", "{not json"],
    ["/query", { sql: "" }],
    ["/query", { sql: "SELECT 1", extra: true }],
    ["/batch", { statements: [], idempotencyKey: "k" }],
    ["/batch", { statements: [{ sql: "SELECT 1" }], idempotencyKey: "has space" }],
    ["/batch", { statements: "SELECT 1", idempotencyKey: "k" }],
  ]) {
    const res = await call(path, body);
    assert.equal(res.status, 400, JSON.stringify(body));
    assert.equal(res.json.error.code, "BAD_REQUEST");
  }
});

test("a bridge without its secret refuses everything without saying more", async () => {
  const bare = startBridge({});
  try {
    const res = await call("/query", { sql: "SELECT 1" }, { bridge: bare });
    assert.equal(res.status, 500);
    assert.equal(res.json.error.code, "INTERNAL");
    assert.match(res.json.error.message, /ENSEMBLE_D1_SECRET must be set/);
  } finally {
    await bare.dispose();
  }
});

test("keys older than BRIDGE_KEY_TTL_SECONDS are pruned after a batch", async () => {
  const bridge = startBridge({ ENSEMBLE_D1_SECRET: SECRET, BRIDGE_KEY_TTL_SECONDS: "3600" });
  const opts = { bridge };
  try {
    // A key stored two hours ago, before this isolate's first batch (which prunes).
    await call("/query", { sql: "CREATE TABLE _bridge_writes (key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, outcome TEXT, created_at INTEGER NOT NULL)" }, opts);
    const old = Math.floor(Date.now() / 1000) - 7200;
    await call("/query", { sql: "INSERT INTO _bridge_writes (key, request_hash, created_at) VALUES ('old', '-', ?)", params: [old] }, opts);
    const res = await call("/batch", { statements: [{ sql: "SELECT 1" }], idempotencyKey: "new" }, opts);
    assert.equal(res.status, 200);
    const keys = await call("/query", { sql: "SELECT key FROM _bridge_writes ORDER BY key" }, opts);
    assert.deepEqual(rowsOf(keys), [{ key: "new" }]);
  } finally {
    await bridge.dispose();
  }
});

test("D1's overload and transient errors map to OVERLOADED and UNAVAILABLE", () => {
  const code = (message) => d1Error(new Error(message)).code;
  assert.equal(code("D1_ERROR: D1 DB is overloaded. Requests queued for too long."), "OVERLOADED");
  assert.equal(code("D1 DB is overloaded. Too many requests queued."), "OVERLOADED");
  assert.equal(code("D1_ERROR: Network connection lost."), "UNAVAILABLE");
  assert.equal(code("D1 DB storage operation exceeded timeout which caused object to be reset."), "UNAVAILABLE");
  assert.equal(code("D1_ERROR: UNIQUE constraint failed: t.id: SQLITE_CONSTRAINT"), "CONSTRAINT");
  assert.equal(code('D1_ERROR: near "SELEC": syntax error at offset 0: SQLITE_ERROR'), "SQL");
});

test("the migrated schema is there when the bridge runs on it", { skip: !process.env.BRIDGE_D1_PERSIST }, async () => {
  const res = await query("SELECT count(*) AS n FROM d1_migrations");
  assert.equal(res.status, 200);
  assert.ok(rowsOf(res)[0].n > 0, "wrangler d1 migrations apply recorded no migration");
});

test("no answer carried the secret", () => {
  assert.ok(answers.length > 50, `only ${answers.length} answers recorded`);
  for (const answer of answers) assert.ok(!answer.includes(SECRET), answer.slice(0, 300));
});
