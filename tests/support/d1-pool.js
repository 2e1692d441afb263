// Test-only Worker (tests/support/d1_bridge.rs, `Pool`): the D1 bridge of d1-bridge/src, as it
// is, mounted under `/db/<n>/` over the binding `DB_<n>`, so that one `wrangler dev --local`
// serves a local D1 database to every test of a process. Signing, limits and idempotency are
// the bridge's own; the bridge answers under a route prefix as it would on Cloudflare.
import bridge from "./bridge/index.js";

export default {
  async fetch(request, env, ctx) {
    const match = /^\/db\/(\d+)\//.exec(new URL(request.url).pathname);
    const db = match && env[`DB_${match[1]}`];
    if (!db) return Response.json({ error: { code: "NOT_FOUND", message: "no such test database" } }, { status: 404 });
    return bridge.fetch(request, { ...env, DB: db }, ctx);
  },
};
