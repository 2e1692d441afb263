//! What a browser and the usual GraphQL tools meet first: GraphiQL's page and its embedded
//! assets (strict CSP, no outside URL), `GET /`, the start-up line, the standard introspection
//! query under the default limits, and the `@specifiedBy` of the custom scalars.
//! `graphiql/browser.test.mjs` drives the same page in Chromium.

use crate::common;

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::mpsc,
    time::Duration,
};

use common::{TestApp, first_code, fixture};
use regex::Regex;
use reqwest::header::{CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use serde_json::json;

/// The page GraphiQL is served as: what a browser gets at `/graphql`.
async fn graphiql_page(app: &TestApp) -> reqwest::Response {
    app.client.get(app.url("/graphql")).header("accept", "text/html").send().await.unwrap()
}

/// Every `src` and `href` of an HTML page.
fn references(html: &str) -> Vec<String> {
    let attribute = Regex::new(r#"(?:src|href)="([^"]*)""#).unwrap();
    attribute.captures_iter(html).map(|c| c[1].to_string()).collect()
}

/// The directives of a page's Content-Security-Policy that a browser enforces strictly.
fn assert_strict_policy(policy: &str) {
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "frame-ancestors 'none'",
    ] {
        assert!(policy.split(';').any(|d| d.trim() == directive), "{policy} lacks {directive}");
    }
    assert!(!policy.contains("unsafe") && !policy.contains("http") && !policy.contains('*'), "{policy}");
}

/// A file of `graphiql/`, as committed.
fn committed(file: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("graphiql").join(file)).unwrap()
}

#[tokio::test]
async fn graphiql_loads_only_its_own_embedded_assets_under_a_strict_policy() {
    let app = TestApp::spawn().await;
    let response = graphiql_page(&app).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_eq!(response.headers()[CACHE_CONTROL], "no-cache");
    assert_strict_policy(response.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap());
    let page = response.text().await.unwrap();

    let scripts = Regex::new(r"<script[^>]*>").unwrap();
    assert!(scripts.find_iter(&page).all(|tag| tag.as_str().contains(" src=\"/")), "no inline script: {page}");
    assert!(!page.contains("style="), "no inline style: {page}");
    let assets: Vec<_> = references(&page).into_iter().filter(|r| r != "data:,").collect();
    assert_eq!(assets.len(), 2, "{page}");
    for asset in assets {
        assert!(asset.starts_with("/graphiql/"), "{asset} is this server's");
        let response = app.client.get(app.url(&asset)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{asset}");
        let name = asset.rsplit('/').next().unwrap();
        let content_type =
            if name.ends_with(".js") { "text/javascript; charset=utf-8" } else { "text/css; charset=utf-8" };
        assert_eq!(response.headers()[CONTENT_TYPE], content_type);
        let body = response.bytes().await.unwrap();
        assert!(body == committed(&format!("dist/{name}")), "{asset} is graphiql/dist/{name}, as committed");
        let text = String::from_utf8_lossy(&body);
        for outside in ["unpkg.com", "jsdelivr", "esm.sh", "googleapis", "@import"] {
            assert!(!text.contains(outside), "{asset} refers to {outside}");
        }
    }
}

#[test]
fn graphiql_bundles_production_builds_of_pinned_versions() {
    let script = String::from_utf8(committed("dist/graphiql.js")).unwrap();
    // React's production builds link their minified errors to react.dev and never check the
    // environment at run time; its development builds print "Warning: …" checks instead.
    assert!(script.contains("https://react.dev/errors/"), "React's production build");
    assert!(!script.contains("process.env.NODE_ENV") && !script.contains("react-dom.development"));
    assert!(script.len() / script.lines().count() > 1000, "minified: long lines");
    let manifest: serde_json::Value = serde_json::from_slice(&committed("package.json")).unwrap();
    for (name, version) in manifest["dependencies"].as_object().unwrap() {
        let version = version.as_str().unwrap();
        assert!(version.chars().all(|c| c.is_ascii_digit() || c == '.'), "{name} is pinned: {version}");
    }
    let licences = String::from_utf8(committed("dist/THIRD-PARTY-LICENSES.txt")).unwrap();
    for package in ["graphiql 4.1.2 (MIT)", "react 19.2.0 (MIT)", "react-dom 19.2.0 (MIT)", "graphql-ws "] {
        assert!(licences.contains(package), "the licences name {package}");
    }
}

#[tokio::test]
async fn assets_are_cached_for_a_year_under_a_content_hashed_path_and_sent_compressed() {
    let app = TestApp::spawn().await;
    let path = ensemble::http::graphiql::assets_path();
    assert!(Regex::new("^/graphiql/[0-9a-f]{16}$").unwrap().is_match(&path), "{path}");
    for file in ["graphiql.js", "graphiql.css", "THIRD-PARTY-LICENSES.txt"] {
        let response =
            app.client.get(app.url(&format!("{path}/{file}"))).header("accept-encoding", "gzip").send().await.unwrap();
        assert_eq!(response.status(), 200, "{file}");
        assert_eq!(response.headers()[CACHE_CONTROL], "public, max-age=31536000, immutable");
        assert_eq!(response.headers()["content-encoding"], "gzip", "{file}");
    }

    for stale in ["/graphiql/0000000000000000/graphiql.js", &format!("{path}/index.html")] {
        let response = app.client.get(app.url(stale)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{stale}");
        assert_eq!(response.headers()[CACHE_CONTROL], "no-store", "{stale}");
    }
}

#[tokio::test]
async fn with_dev_auth_the_page_says_how_to_get_a_token() {
    let app = TestApp::spawn().await;
    let page = graphiql_page(&app).await.text().await.unwrap();
    assert!(page.contains("ensemble token --user alice --role admin"), "{page}");
    assert!(page.contains("into the Headers tab"), "{page}");
}

#[tokio::test]
async fn the_root_links_graphiql_the_dashboard_and_the_docs() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()[CONTENT_TYPE], "text/html; charset=utf-8");
    assert_strict_policy(response.headers()[CONTENT_SECURITY_POLICY].to_str().unwrap());
    let page = response.text().await.unwrap();
    assert!(!page.contains("<script") && !page.contains("style="), "{page}");
    assert!(page.contains("README.md") && page.contains("docs/"), "the docs are named: {page}");
    let links = references(&page);
    for wanted in ["/graphql", "/dashboard", "/home.css"] {
        assert!(links.iter().any(|l| l == wanted), "{wanted} in {links:?}");
    }
    for link in links.iter().filter(|l| l.starts_with('/')) {
        let response = app.client.get(app.url(link)).header("accept", "text/html").send().await.unwrap();
        assert_eq!(response.status(), 200, "{link} answers");
    }
}

#[tokio::test]
async fn the_standard_introspection_query_passes_the_default_limits() {
    let app = TestApp::spawn().await;
    assert_eq!(app.state.config.limits.depth, 10, "the default depth limit");
    // Generated from graphql-js 16's getIntrospectionQuery() by scripts/build-graphiql.
    for file in ["introspection-query.graphql", "introspection-query-full.graphql"] {
        let query = fixture(file);
        let body = app.post_json(&json!({"query": query, "operationName": "IntrospectionQuery"})).await.1;
        assert!(body.get("errors").is_none(), "{file}: {body}");
        let types = body["data"]["__schema"]["types"].as_array().unwrap();
        assert!(types.iter().any(|t| t["name"] == "Team"), "{file}");
    }
}

#[tokio::test]
async fn a_data_query_deeper_than_the_limit_is_still_refused() {
    let app = TestApp::spawn().await;
    // Twelve fields deep, partly through a fragment, next to a harmless introspection field.
    let query = "query { __schema { queryType { name } } teams { edges { node { ...Deep } } } }
        fragment Deep on Team { members { user { a { b { c { d { e { f { g } } } } } } } } }";
    let body = app.gql(query, json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert_eq!(message, "The query nests fields 12 deep; at most 10 are allowed.");

    let app = TestApp::spawn_with(|c| c.limits.depth = 3).await;
    let body = app.gql("{ teams { edges { node { id } } } }", json!({})).await;
    assert_eq!(body["errors"][0]["message"], "The query nests fields 4 deep; at most 3 are allowed.", "{body}");
    let body = app.gql("{ serverInfo { limits { depth } } }", json!({})).await;
    assert!(body.get("errors").is_none(), "three deep passes: {body}");
}

#[tokio::test]
async fn introspection_deeper_than_its_own_bound_is_refused() {
    let app = TestApp::spawn().await;
    let of_types = |n: usize| format!("{}name{}", "ofType { ".repeat(n), " }".repeat(n));
    // `__type` and `fields` and `type`, then the chain: 3 + 17 + the leaf = 21.
    let query = format!("{{ __type(name: \"Query\") {{ fields {{ type {{ {} }} }} }} }}", of_types(17));
    let body = app.gql(&query, json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert_eq!(body["errors"][0]["message"], "The introspection query nests fields 21 deep; at most 20 are allowed.");

    let query = format!("{{ __type(name: \"Query\") {{ fields {{ type {{ {} }} }} }} }}", of_types(16));
    let body = app.gql(&query, json!({})).await;
    assert!(body.get("errors").is_none(), "twenty deep passes: {body}");
}

#[tokio::test]
async fn production_still_refuses_the_standard_introspection_query() {
    let app = TestApp::spawn_with(|c| {
        c.environment = ensemble::config::Environment::Production;
        common::clerk_pem(c);
    })
    .await;
    let body = app.gql(&fixture("introspection-query.graphql"), json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert_eq!(body["errors"][0]["message"], "Introspection is turned off on this server.");
}

#[tokio::test]
async fn custom_scalars_say_where_they_are_specified() {
    let rfc3339 = "https://datatracker.ietf.org/doc/html/rfc3339";
    let rfc8259 = "https://datatracker.ietf.org/doc/html/rfc8259";
    let sdl = ensemble::graphql::sdl(&ensemble::config::Config::from_env().unwrap());
    assert!(sdl.contains(&format!("scalar DateTime @specifiedBy(url: \"{rfc3339}\")")), "DateTime in the SDL");
    assert!(sdl.contains(&format!("scalar JSON @specifiedBy(url: \"{rfc8259}\")")), "JSON in the SDL");

    let app = TestApp::spawn().await;
    let body = app
        .gql(r#"{ dateTime: __type(name: "DateTime") { specifiedByURL } json: __type(name: "JSON") { specifiedByURL } }"#, json!({}))
        .await;
    assert_eq!(body["data"]["dateTime"]["specifiedByURL"], rfc3339, "{body}");
    assert_eq!(body["data"]["json"]["specifiedByURL"], rfc8259, "{body}");
}

#[test]
fn the_ready_line_names_graphiql_and_the_dashboard() {
    let dir = tempfile::tempdir().unwrap();
    common::install_dev_key(&dir.path().join("data"));
    let mut child = common::ensemble()
        .arg("serve")
        .env("ENSEMBLE_DATA_DIR", dir.path().join("data"))
        .env("DATABASE_URL", format!("sqlite://{}/ensemble.db", dir.path().display()))
        .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (lines, received) = mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    let stderr = child.stderr.take().unwrap();
    let to_lines = |stream: Box<dyn std::io::Read + Send>, lines: mpsc::Sender<String>| {
        std::thread::spawn(move || {
            BufReader::new(stream).lines().map_while(Result::ok).for_each(|l| drop(lines.send(l)))
        })
    };
    to_lines(Box::new(stdout), lines.clone());
    to_lines(Box::new(stderr), lines);
    let ready = std::iter::from_fn(|| received.recv_timeout(Duration::from_secs(60)).ok())
        .find(|line| line.contains("Ensemble is ready"));
    child.kill().unwrap();
    child.wait().unwrap();
    let ready = ready.expect("the server says it is ready");
    let urls =
        Regex::new(r"GraphiQL at http://127\.0\.0\.1:(\d+)/graphql, dashboard at http://127\.0\.0\.1:(\d+)/dashboard")
            .unwrap();
    let found = urls.captures(&ready).unwrap_or_else(|| panic!("{ready}"));
    assert_eq!(&found[1], &found[2]);
    assert_ne!(&found[1], "0", "the bound port");
}
