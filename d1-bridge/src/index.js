// The D1 bridge: a Worker that lets a server outside Cloudflare run SQL on a D1 database.
// It answers exactly two signed requests, POST /query (one statement) and POST /batch (an
// all-or-nothing list of statements carrying an idempotency key); everything else is 404/405.
// The wire contract (signing, idempotency, error codes) is in ../README.md.
// Only the default export may be exported here: the runtime treats named exports as entrypoints.
import { BridgeError, d1Error } from "./errors.js";

/** Largest clock difference accepted between the caller's timestamp and the bridge's clock. */
const MAX_SKEW_SECONDS = 300;
/** D1's limits: bytes per SQL statement, bound parameters per statement. */
const MAX_SQL_BYTES = 100_000;
const MAX_PARAMS = 100;
/** The bridge's own cap on statements per batch (each one counts as a D1 query). */
const MAX_STATEMENTS = 500;
/** How long an idempotency key is remembered, unless BRIDGE_KEY_TTL_SECONDS says otherwise. */
const DEFAULT_KEY_TTL_SECONDS = 24 * 3600;
/** Pruning of expired keys runs at most this often per Worker isolate. */
const PRUNE_EVERY_MS = 10 * 60 * 1000;
/** Outcomes larger than this are not stored; a replay then answers `results: null`. */
const MAX_STORED_OUTCOME_BYTES = 1_000_000;
const MIN_SECRET_LENGTH = 32;

const ROUTES = new Map([
  ["/query", runQuery],
  ["/batch", runBatch],
]);

export default {
  async fetch(request, env) {
    try {
      return await handle(request, env);
    } catch (err) {
      if (err instanceof BridgeError) return err.response();
      console.error("d1-bridge: unexpected error", err);
      return new BridgeError("INTERNAL", "unexpected error in the bridge").response();
    }
  },
};

async function handle(request, env) {
  // The endpoint is the path's last segment, so the Worker can be mounted on a route under a
  // prefix (a route `example.com/ensemble-d1/*` answers `/ensemble-d1/query`). The signature
  // covers the whole path.
  const path = new URL(request.url).pathname;
  const route = ROUTES.get(path.slice(path.lastIndexOf("/")));
  if (!route) throw new BridgeError("NOT_FOUND", `no such endpoint: ${path.slice(0, 100)}`);
  if (request.method !== "POST") {
    throw new BridgeError("METHOD_NOT_ALLOWED", `${path} accepts POST only`, { Allow: "POST" });
  }
  const body = new Uint8Array(await request.arrayBuffer());
  await authenticate(request.method, path, request.headers, body, env.ENSEMBLE_D1_SECRET);
  let input;
  try {
    input = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body));
  } catch {
    throw new BridgeError("BAD_REQUEST", "the body is not valid UTF-8 JSON");
  }
  return Response.json(await route(env, input));
}

// ---------------------------------------------------------------------------------------------
// Authentication: HMAC-SHA256(secret, METHOD "\n" PATH "\n" TIMESTAMP "\n" BODY), hex encoded.
// ---------------------------------------------------------------------------------------------

let cachedKey = { secret: null, key: null };

async function hmacKey(secret) {
  if (cachedKey.secret !== secret) {
    const raw = new TextEncoder().encode(secret);
    const key = await crypto.subtle.importKey("raw", raw, { name: "HMAC", hash: "SHA-256" }, false, [
      "verify",
    ]);
    cachedKey = { secret, key };
  }
  return cachedKey.key;
}

async function authenticate(method, path, headers, body, secret) {
  if (typeof secret !== "string" || secret.length < MIN_SECRET_LENGTH) {
    // Say what is wrong with the configuration, never what the value is.
    throw new BridgeError(
      "INTERNAL",
      `the bridge is not configured: ENSEMBLE_D1_SECRET must be set to at least ${MIN_SECRET_LENGTH} characters`,
    );
  }
  const timestamp = headers.get("x-ensemble-timestamp");
  const signature = headers.get("x-ensemble-signature");
  if (!timestamp || !signature) {
    throw new BridgeError("UNAUTHORIZED", "missing X-Ensemble-Timestamp or X-Ensemble-Signature header");
  }
  if (!/^[0-9]{1,12}$/.test(timestamp) || !/^[0-9a-fA-F]{64}$/.test(signature)) {
    throw new BridgeError("UNAUTHORIZED", "malformed X-Ensemble-Timestamp or X-Ensemble-Signature header");
  }
  const prefix = new TextEncoder().encode(`${method}\n${path}\n${timestamp}\n`);
  const message = new Uint8Array(prefix.length + body.length);
  message.set(prefix);
  message.set(body, prefix.length);
  // crypto.subtle.verify compares the MACs in constant time.
  const valid = await crypto.subtle.verify("HMAC", await hmacKey(secret), hexBytes(signature), message);
  if (!valid) throw new BridgeError("UNAUTHORIZED", "bad signature");
  const now = Math.floor(Date.now() / 1000);
  const skew = Number(timestamp) - now;
  if (Math.abs(skew) > MAX_SKEW_SECONDS) {
    throw new BridgeError(
      "UNAUTHORIZED",
      `stale timestamp: ${timestamp} is ${Math.abs(skew)} s ${skew < 0 ? "behind" : "ahead of"} the bridge clock (${now}); at most ${MAX_SKEW_SECONDS} s allowed`,
    );
  }
}

function hexBytes(hex) {
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return out;
}

// ---------------------------------------------------------------------------------------------
// Input: parsed once into {sql, params}; everything D1 would refuse is refused here first.
// ---------------------------------------------------------------------------------------------

function statement(value, where, index) {
  const fail = (msg) => {
    throw new BridgeError("BAD_REQUEST", `${where}: ${msg}`, undefined, index);
  };
  if (!isObject(value)) fail("must be an object {sql, params}");
  onlyKeys(value, ["sql", "params"], fail);
  const { sql, params = [] } = value;
  if (typeof sql !== "string" || sql.trim() === "") fail("sql must be a non-empty string");
  const bytes = new TextEncoder().encode(sql).length;
  if (bytes > MAX_SQL_BYTES) fail(`sql is ${bytes} bytes; D1 accepts at most ${MAX_SQL_BYTES}`);
  if (!Array.isArray(params)) fail("params must be an array");
  if (params.length > MAX_PARAMS) fail(`${params.length} params; D1 accepts at most ${MAX_PARAMS}`);
  params.forEach((p, i) => {
    const ok = p === null || ["string", "boolean"].includes(typeof p) || typeof p === "number";
    if (!ok) fail(`params[${i}] must be a string, number, boolean or null`);
    if (Number.isInteger(p) && !Number.isSafeInteger(p)) {
      fail(`params[${i}] is an integer beyond ±2^53, which D1 cannot hold exactly; send it as a string`);
    }
  });
  return { sql, params };
}

function isObject(v) {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function onlyKeys(obj, allowed, fail) {
  const extra = Object.keys(obj).filter((k) => !allowed.includes(k));
  if (extra.length) fail(`unknown field(s) ${extra.join(", ")}; allowed: ${allowed.join(", ")}`);
}

// ---------------------------------------------------------------------------------------------
// POST /query
// ---------------------------------------------------------------------------------------------

// The answer is {columns, rows}: the column names in order and each row as an array, from D1's
// raw() (rows as objects would lose the order, which positional reads need, and a second column
// of the same name, as in `SELECT a.id, b.id`). raw() gives no meta: writes belong in /batch.
async function runQuery(env, input) {
  const { sql, params } = statement(input, "body");
  let answer;
  try {
    answer = await env.DB.prepare(sql).bind(...params).raw({ columnNames: true });
  } catch (err) {
    throw d1Error(err);
  }
  const [columns = [], ...rows] = answer;
  return { columns, rows };
}

function result(r) {
  const { changes, last_row_id, duration } = r.meta ?? {};
  return { results: r.results ?? [], meta: { changes, last_row_id, duration } };
}

// ---------------------------------------------------------------------------------------------
// POST /batch and idempotency.
//
// The batch sent to D1 is [INSERT INTO _bridge_writes (key, …), ...statements]: D1 runs it as
// one transaction, so the key is recorded if and only if the statements were applied. A retry
// with the same key fails on the key's primary key before any of its statements runs, and the
// bridge answers the outcome stored for the first attempt (`replayed: true`). The outcome is
// stored right after the batch; if that write is lost, the replay says `results: null`.
// ---------------------------------------------------------------------------------------------

const KEY_TABLE = "_bridge_writes";
let tableReady = false;
let lastPrune = 0;

async function ensureKeyTable(db) {
  if (tableReady) return;
  await db.batch([
    db.prepare(
      `CREATE TABLE IF NOT EXISTS ${KEY_TABLE} (key TEXT PRIMARY KEY, request_hash TEXT NOT NULL, outcome TEXT, created_at INTEGER NOT NULL)`,
    ),
    db.prepare(`CREATE INDEX IF NOT EXISTS ${KEY_TABLE}_created_at ON ${KEY_TABLE} (created_at)`),
  ]);
  tableReady = true;
}

async function runBatch(env, input) {
  const fail = (msg) => {
    throw new BridgeError("BAD_REQUEST", msg);
  };
  if (!isObject(input)) fail("the body must be an object {statements, idempotencyKey}");
  onlyKeys(input, ["statements", "idempotencyKey"], fail);
  const { statements: raw, idempotencyKey: key } = input;
  if (key === undefined) fail("idempotencyKey is required: every batch carries one");
  if (typeof key !== "string" || !/^[\x21-\x7e]{1,200}$/.test(key)) {
    fail("idempotencyKey must be 1-200 printable ASCII characters without spaces");
  }
  if (!Array.isArray(raw) || raw.length === 0) fail("statements must be a non-empty array");
  if (raw.length > MAX_STATEMENTS) fail(`${raw.length} statements; the bridge accepts at most ${MAX_STATEMENTS}`);
  const statements = raw.map((s, i) => statement(s, `statements[${i}]`, i));

  const db = env.DB;
  const requestHash = await sha256Hex(JSON.stringify(statements));
  const now = Math.floor(Date.now() / 1000);
  try {
    await ensureKeyTable(db);
  } catch (err) {
    throw d1Error(err);
  }
  const prepared = statements.map(({ sql, params }) => db.prepare(sql).bind(...params));
  const claim = db
    .prepare(`INSERT INTO ${KEY_TABLE} (key, request_hash, created_at) VALUES (?, ?, ?)`)
    .bind(key, requestHash, now);

  let results;
  try {
    results = (await batchWithKey(db, claim, prepared)).slice(1).map(result);
  } catch (err) {
    if (String(err?.message).includes(`${KEY_TABLE}.key`)) return replay(db, key, requestHash);
    const error = d1Error(err);
    if (error.code === "CONSTRAINT" || error.code === "SQL") {
      error.index = await failingIndex(db, prepared, err);
      if (error.index !== null) error.message = `statement ${error.index}: ${error.message}`;
    }
    throw error;
  }

  const outcome = JSON.stringify(results);
  try {
    if (outcome.length <= MAX_STORED_OUTCOME_BYTES) {
      await db.prepare(`UPDATE ${KEY_TABLE} SET outcome = ? WHERE key = ?`).bind(outcome, key).run();
    }
  } catch (err) {
    // The batch is applied; only a later replay loses its results (it answers results: null).
    console.error("d1-bridge: could not store a batch outcome", err);
  }
  await pruneKeys(db, env, now);
  return { results, replayed: false };
}

/**
 * Runs [claim, ...prepared] as one batch. The key table is made once per isolate; a database
 * that has none (dropped since, restored with Time Travel to before it, or another database
 * bound to the same isolate) gets it now, and the batch runs again: it applied nothing.
 */
async function batchWithKey(db, claim, prepared) {
  try {
    return await db.batch([claim, ...prepared]);
  } catch (err) {
    if (!String(err?.message).includes(`no such table: ${KEY_TABLE}`)) throw err;
    tableReady = false;
    await ensureKeyTable(db);
    return await db.batch([claim, ...prepared]);
  }
}

async function replay(db, key, requestHash) {
  let row;
  try {
    row = await db.prepare(`SELECT request_hash, outcome FROM ${KEY_TABLE} WHERE key = ?`).bind(key).first();
  } catch (err) {
    throw d1Error(err);
  }
  if (!row) throw new BridgeError("INTERNAL", "idempotency key collided but is not stored; retry");
  if (row.request_hash !== requestHash) {
    throw new BridgeError(
      "IDEMPOTENCY_KEY_REUSED",
      "this idempotencyKey was already used for a different batch; nothing was applied",
    );
  }
  return { results: row.outcome === null ? null : JSON.parse(row.outcome), replayed: true };
}

/**
 * D1 does not say which statement of a batch failed. Find it by bisection: re-run a prefix of
 * the batch followed by a statement that always fails at run time, so D1 rolls every probe
 * back; the prefix reproduces the original error if and only if it contains the failing
 * statement. Returns null when the failure does not reproduce (e.g. a concurrent write).
 */
async function failingIndex(db, prepared, original) {
  if (prepared.length === 1) return 0;
  if (/malformed JSON/i.test(original?.message)) return null; // the probe's own error: ambiguous
  const sentinel = db.prepare("SELECT json('bridge probe: always fails')");
  const reproduces = async (end) => {
    try {
      await db.batch([...prepared.slice(0, end + 1), sentinel]);
    } catch (err) {
      return err?.message === original?.message;
    }
    return false;
  };
  let lo = 0;
  let hi = prepared.length - 1;
  if (!(await reproduces(hi))) return null;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (await reproduces(mid)) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

/** Delete keys older than the TTL, at most once per PRUNE_EVERY_MS in this isolate. */
async function pruneKeys(db, env, now) {
  if (Date.now() - lastPrune < PRUNE_EVERY_MS) return;
  lastPrune = Date.now();
  const configured = Number(env.BRIDGE_KEY_TTL_SECONDS);
  const ttl = Number.isFinite(configured) && configured >= 0 ? configured : DEFAULT_KEY_TTL_SECONDS;
  try {
    await db.prepare(`DELETE FROM ${KEY_TABLE} WHERE created_at < ?`).bind(now - ttl).run();
  } catch (err) {
    console.error("d1-bridge: pruning old idempotency keys failed", err);
  }
}

async function sha256Hex(text) {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}
