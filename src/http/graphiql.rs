//! GraphiQL, for a browser at `GET /graphql`: a small page and the assets built from `graphiql/`
//! (pinned versions, minified), embedded in the binary and served by it under a strict
//! Content-Security-Policy, so the page works offline (docs/graphiql.md).

use std::sync::LazyLock;

use axum::{
    Router,
    extract::Path,
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use sha2::{Digest, Sha256};

/// Everything from this server and nothing else: no inline script or style, no outside URL.
/// Images and fonts may be `data:` URLs (GraphiQL's stylesheet inlines its fonts); `'self'`
/// covers the websocket to this server in current browsers (Chrome 71, Firefox, Safari 16).
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; font-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; \
     frame-ancestors 'none'";

/// One embedded file, served at `/graphiql/<VERSION>/<name>`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const ASSETS: &[Asset] = &[
    Asset {
        name: "graphiql.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../graphiql/dist/graphiql.js"),
    },
    Asset {
        name: "graphiql.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../graphiql/dist/graphiql.css"),
    },
    Asset {
        name: "THIRD-PARTY-LICENSES.txt",
        content_type: "text/plain; charset=utf-8",
        body: include_bytes!("../../graphiql/dist/THIRD-PARTY-LICENSES.txt"),
    },
];

/// The assets' folder: the start of the SHA-256 of their contents, so a browser may keep them
/// for a year and still fetches a new build at once.
static VERSION: LazyLock<String> = LazyLock::new(|| {
    let mut hash = Sha256::new();
    for asset in ASSETS {
        hash.update(asset.name.as_bytes());
        hash.update(asset.body);
    }
    hex::encode(&hash.finalize()[..8])
});

/// The path of the assets' folder, e.g. `/graphiql/0123456789abcdef`.
pub fn assets_path() -> String {
    format!("/graphiql/{}", *VERSION)
}

/// `GET /graphiql/<version>/<file>`.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new().route("/graphiql/{version}/{file}", get(asset))
}

async fn asset(Path((version, file)): Path<(String, String)>) -> Response {
    let found = ASSETS.iter().find(|asset| asset.name == file);
    match found {
        Some(asset) if version == *VERSION => (
            [
                (header::CONTENT_TYPE, asset.content_type),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            ],
            asset.body,
        )
            .into_response(),
        _ => (
            StatusCode::NOT_FOUND,
            [(header::CACHE_CONTROL, "no-store")],
            "No such GraphiQL file in this build; reload /graphql.",
        )
            .into_response(),
    }
}

/// How to act as someone when the server issues its own tokens.
const DEV_AUTH_NOTE: &str = r#"<p class="dev-auth">Dev auth: run <code>ensemble token --user alice --role admin</code>
and paste <code>{"Authorization": "Bearer &lt;token&gt;"}</code> into the Headers tab below.</p>
"#;

/// The page: it loads the script and stylesheet and nothing else. `no-cache` so that a new
/// binary's asset folder is picked up at once.
pub fn page(dev_auth: bool) -> Response {
    let assets = assets_path();
    let note = if dev_auth { DEV_AUTH_NOTE } else { "" };
    let html = format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Ensemble · GraphiQL</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="{assets}/graphiql.css">
<script defer src="{assets}/graphiql.js"></script>
</head>
<body>
{note}<div id="graphiql"><p>Loading GraphiQL…</p></div>
<noscript>GraphiQL needs JavaScript.</noscript>
</body>
</html>
"#
    );
    html_response(html)
}

/// An HTML page of this server: strict CSP, never framed, never cached without asking.
pub fn html_response(html: String) -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        html,
    )
        .into_response()
}
