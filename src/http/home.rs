//! `GET /`: a small page saying what this server is and linking GraphiQL, the dashboard and the
//! health endpoints, and naming the documentation (which is in the source tree, not served).
//! Same strict Content-Security-Policy as GraphiQL; no script at all.

use axum::{
    Router,
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};

use crate::http::graphiql::html_response;

const STYLE: &str = "body { font: 15px/1.5 system-ui, sans-serif; max-width: 42rem; margin: 3rem auto; \
     padding: 0 1rem; color: #1c2330; }
h1 { font-size: 1.6rem; margin-bottom: 0; }
.tagline { margin-top: 0.25rem; color: #5a6475; }
li { margin: 0.4rem 0; }
code { font-size: 0.9em; background: #f1f3f6; padding: 0 0.25em; border-radius: 3px; }
";

/// `GET /` and its stylesheet.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/", get(page)).route("/home.css", get(style))
}

async fn page() -> Response {
    let version = env!("CARGO_PKG_VERSION");
    html_response(format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ensemble</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/home.css">
</head>
<body>
<h1>Ensemble</h1>
<p class="tagline">A GraphQL backend to build, version, share, run and watch teams of AI agents. Version {version}.</p>
<ul>
<li><a href="/graphql">GraphiQL</a>: explore the schema and run queries, mutations and subscriptions.
The API itself is <code>POST /graphql</code>, and websockets at <code>/graphql/ws</code>.</li>
<li><a href="/dashboard">Dashboard</a>: your teams' runs, latency, errors, usage and audit log.</li>
<li><a href="/healthz">/healthz</a> and <a href="/readyz">/readyz</a>: liveness and readiness.</li>
</ul>
<h2>Documentation</h2>
<p>It comes with the source: <code>README.md</code> to start, and the <code>docs/</code> folder
(<code>auth.md</code> for tokens and API keys, <code>transport.md</code> for HTTP, websockets and
limits, <code>graphiql.md</code>, <code>teams.md</code>, <code>runs.md</code>,
<code>dashboard.md</code>, <code>operations.md</code>). The schema, with every type and field
documented, is in GraphiQL's documentation explorer and in <code>schema.graphql</code>.</p>
</body>
</html>
"#
    ))
}

async fn style() -> Response {
    ([(header::CONTENT_TYPE, "text/css; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], STYLE).into_response()
}
