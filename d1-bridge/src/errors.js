// The bridge's errors: the JSON shape {"error": {"code", "message", "index"?}}, an HTTP status per
// code, and the mapping of D1's error messages (D1 has no structured codes) onto those codes.

export const STATUS = {
  BAD_REQUEST: 400,
  UNAUTHORIZED: 401,
  NOT_FOUND: 404,
  METHOD_NOT_ALLOWED: 405,
  CONSTRAINT: 409,
  IDEMPOTENCY_KEY_REUSED: 409,
  SQL: 422,
  INTERNAL: 500,
  OVERLOADED: 503,
  UNAVAILABLE: 503,
};

export class BridgeError extends Error {
  constructor(code, message, headers = undefined, index = undefined) {
    super(message);
    this.code = code;
    this.headers = headers;
    this.index = index;
  }

  response() {
    const error = { code: this.code, message: this.message };
    if (this.index !== undefined) error.index = this.index;
    return Response.json({ error }, { status: STATUS[this.code] ?? 500, headers: this.headers });
  }
}

/** Transient D1 failures (per Cloudflare's D1 error list): the same request may be retried. */
const UNAVAILABLE_PATTERNS = [
  /Network connection lost/i,
  /caused object to be reset/i,
  /reset because its code was updated/i,
  /Cannot resolve D1 DB due to transient issue/i,
  /exceeded its (memory|CPU time) limit/i,
  /exceeded timeout/i,
];

/** Map an error thrown by the D1 binding to a BridgeError the client can act on. */
export function d1Error(err) {
  const message = String(err?.message ?? err);
  if (/overloaded|too many requests queued/i.test(message)) return new BridgeError("OVERLOADED", message);
  if (UNAVAILABLE_PATTERNS.some((p) => p.test(message))) return new BridgeError("UNAVAILABLE", message);
  if (/SQLITE_CONSTRAINT|constraint failed/i.test(message)) return new BridgeError("CONSTRAINT", message);
  if (/^D1_(ERROR|TYPE_ERROR|COLUMN_NOTFOUND)|SQLITE_/.test(message)) return new BridgeError("SQL", message);
  console.error("d1-bridge: unclassified D1 error", err);
  return new BridgeError("INTERNAL", message);
}
