//! The dashboard at `/dashboard`: its files, their headers, the GraphQL it sends (pinned to
//! schema.graphql and run against a team with no runs), and the chart module's node tests.

use crate::common;

use std::collections::{BTreeMap, BTreeSet, HashMap};

use async_graphql::parser::{
    parse_query, parse_schema,
    types::{BaseType, OperationType, Selection, SelectionSet, Type, TypeKind, TypeSystemDefinition},
};
use common::{TestApp, first_code};
use ensemble::domain::GlobalRole;
use regex::Regex;
use serde_json::json;

/// Every file the page loads, by URL path, crawled from the HTML through the modules' imports.
async fn crawl(app: &TestApp) -> BTreeMap<String, (String, String)> {
    let mut files = BTreeMap::new();
    let mut queue = vec!["/dashboard".to_string()];
    let references = Regex::new(r#"(?:src|href)="(/dashboard/[^"]+)"|(?:from|import)\s*\(?\s*'([^']+)'"#).unwrap();
    while let Some(path) = queue.pop() {
        if files.contains_key(&path) {
            continue;
        }
        let response = app.client.get(app.url(&path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let content_type = response.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().to_string();
        let body = response.text().await.unwrap();
        let base = url::Url::parse(&app.url(&path)).unwrap();
        for found in references.captures_iter(&body) {
            let reference = found.get(1).or(found.get(2)).unwrap().as_str();
            queue.push(base.join(reference).unwrap().path().to_string());
        }
        files.insert(path, (content_type, body));
    }
    files
}

#[tokio::test]
async fn the_page_is_served_with_a_strict_content_security_policy() {
    let app = TestApp::spawn().await;
    for path in ["/dashboard", "/dashboard/"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let headers = response.headers();
        assert_eq!(headers["content-type"], "text/html; charset=utf-8");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        let policy = headers["content-security-policy"].to_str().unwrap();
        for directive in
            ["default-src 'self'", "script-src 'self'", "connect-src 'self' ws: wss:", "frame-ancestors 'none'"]
        {
            assert!(policy.contains(directive), "{policy} lacks {directive}");
        }
        assert!(!policy.contains("unsafe"), "{policy}");
        assert!(response.text().await.unwrap().contains(r#"<script type="module" src="/dashboard/app.js">"#));
    }
}

#[tokio::test]
async fn every_module_the_page_loads_is_javascript_from_this_server() {
    let app = TestApp::spawn().await;
    let files = crawl(&app).await;
    for page in ["overview", "performance", "agents", "errors", "insights", "usage", "audit", "teams", "signin", "run"]
    {
        assert!(files.contains_key(&format!("/dashboard/pages/{page}.js")), "{page} is not loaded: {:?}", files.keys());
    }
    assert_eq!(files["/dashboard/dashboard.css"].0, "text/css; charset=utf-8");
    for (path, (content_type, body)) in &files {
        if path.ends_with(".js") {
            assert_eq!(content_type, "text/javascript; charset=utf-8", "{path}");
        }
        for external in ["http://", "https://", "//cdn"] {
            assert!(!body.contains(external), "{path} refers to {external}");
        }
        assert!(!body.contains("style=\""), "{path} has an inline style, which the CSP refuses");
    }
}

#[tokio::test]
async fn unknown_dashboard_files_are_not_found() {
    let app = TestApp::spawn().await;
    for path in
        ["/dashboard/nope.js", "/dashboard/charts.test.mjs", "/dashboard/pages/", "/dashboard/%2e%2e/Cargo.toml"]
    {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 404, "{path}");
    }
}

/// The GraphQL documents of the dashboard's modules: every `const NAME = \`…\`` whose text is an
/// operation, with `${OTHER}` replaced by the constant it names.
fn documents(files: &BTreeMap<String, (String, String)>) -> Vec<(String, String)> {
    let constant = Regex::new(r"const ([A-Z_]+) = `([^`]*)`").unwrap();
    let operation = Regex::new(r"^\s*(query|mutation|subscription)\b").unwrap();
    let anywhere = Regex::new(r"`\s*(query|mutation|subscription)\s*\w*\s*[({]").unwrap();
    let mut found = Vec::new();
    for (path, (_, body)) in files.iter().filter(|(path, _)| path.ends_with(".js")) {
        let constants: HashMap<&str, &str> =
            constant.captures_iter(body).map(|c| (c.get(1).unwrap().as_str(), c.get(2).unwrap().as_str())).collect();
        let mut operations = 0;
        for (name, text) in &constants {
            if !operation.is_match(text) {
                continue;
            }
            let mut document = text.to_string();
            for (other, value) in &constants {
                document = document.replace(&format!("${{{other}}}"), value);
            }
            assert!(!document.contains("${"), "{path} {name}: an interpolation the test cannot follow");
            found.push((format!("{path} {name}"), document));
            operations += 1;
        }
        let written = anywhere.find_iter(body).count();
        assert_eq!(operations, written, "{path}: write each operation as `const NAME = \\`…\\`` so it is checked");
    }
    found
}

/// Field name → (its arguments, the named type it returns), per object type of the schema.
type Fields = HashMap<String, HashMap<String, (BTreeSet<String>, String)>>;

fn schema_fields() -> (Fields, BTreeSet<String>) {
    let sdl = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.graphql")).unwrap();
    let mut fields = Fields::new();
    let mut types = BTreeSet::from(["String", "Int", "Float", "Boolean", "ID"].map(String::from));
    for definition in parse_schema(&sdl).unwrap().definitions {
        let TypeSystemDefinition::Type(ty) = definition else { continue };
        let ty = ty.node;
        types.insert(ty.name.node.to_string());
        let defined = match ty.kind {
            TypeKind::Object(object) => object.fields,
            TypeKind::Interface(interface) => interface.fields,
            _ => continue,
        };
        let entry = fields.entry(ty.name.node.to_string()).or_default();
        for field in defined {
            let args = field.node.arguments.iter().map(|a| a.node.name.node.to_string()).collect();
            entry.insert(field.node.name.node.to_string(), (args, named(&field.node.ty.node).to_string()));
        }
    }
    (fields, types)
}

fn named(ty: &Type) -> &str {
    match &ty.base {
        BaseType::Named(name) => name.as_str(),
        BaseType::List(inner) => named(inner),
    }
}

/// Every field and argument selected must exist on the type it is selected from.
fn check(fields: &Fields, on: &str, set: &SelectionSet, at: &str, problems: &mut Vec<String>) {
    for selection in &set.items {
        let Selection::Field(field) = &selection.node else {
            problems.push(format!("{at}: fragments are not checked; select fields directly"));
            continue;
        };
        let name = field.node.name.node.as_str();
        if name.starts_with("__") {
            continue;
        }
        let Some((args, ty)) = fields.get(on).and_then(|f| f.get(name)) else {
            problems.push(format!("{at}: {on} has no field `{name}`"));
            continue;
        };
        for (arg, _) in &field.node.arguments {
            if !args.contains(arg.node.as_str()) {
                problems.push(format!("{at}: {on}.{name} has no argument `{}`", arg.node));
            }
        }
        check(fields, ty, &field.node.selection_set.node, &format!("{at}.{name}"), problems);
    }
}

#[tokio::test]
async fn the_dashboard_asks_only_for_what_the_schema_has() {
    let app = TestApp::spawn().await;
    let documents = documents(&crawl(&app).await);
    let (fields, types) = schema_fields();
    let mut problems = Vec::new();
    let mut roots = BTreeSet::new();
    for (name, text) in &documents {
        let document = parse_query(text).unwrap_or_else(|e| panic!("{name} does not parse: {e}"));
        for (_, operation) in document.operations.iter() {
            let root = match operation.node.ty {
                OperationType::Query => "Query",
                OperationType::Mutation => "Mutation",
                OperationType::Subscription => "Subscription",
            };
            for variable in &operation.node.variable_definitions {
                let ty = named(&variable.node.var_type.node);
                if !types.contains(ty) {
                    problems.push(format!("{name}: ${} has the unknown type {ty}", variable.node.name));
                }
            }
            for selection in &operation.node.selection_set.node.items {
                if let Selection::Field(field) = &selection.node {
                    roots.insert(field.node.name.node.to_string());
                }
            }
            check(&fields, root, &operation.node.selection_set.node, name, &mut problems);
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
    let expected = [
        "me",
        "teams",
        "team",
        "teamOverview",
        "metricsSeries",
        "performanceInsights",
        "errorGroups",
        "resolveErrorGroup",
        "usageReport",
        "auditLogs",
        "verifyAuditLog",
        "liveMetrics",
        "teamActivity",
        "run",
        "runEvents",
    ];
    for root in expected {
        assert!(roots.contains(root), "no dashboard page uses {root}: {roots:?}");
    }
}

#[tokio::test]
async fn every_dashboard_query_answers_without_errors_for_a_team_with_no_runs() {
    let app = TestApp::spawn().await;
    let admin = app.token("alice", GlobalRole::Admin);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "triage", "model": "local/echo"}], "routing": {"default": "triage"}});
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Quiet\", spec: $spec}) { id } }";
    let (_, created) = app.gql_as(&admin, create, json!({"spec": spec})).await;
    let team = created["data"]["createTeam"]["id"].clone();
    // The run page needs a run: one of another team.
    let busy = "mutation($spec: JSON) { createTeam(input: {name: \"Busy\", spec: $spec}) { id } }";
    let (_, busy) = app.gql_as(&admin, busy, json!({"spec": spec})).await;
    let run = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"hello\"}) { id } }";
    let (_, run) = app.gql_as(&admin, run, json!({"t": busy["data"]["createTeam"]["id"]})).await;
    let now = chrono::Utc::now();
    let variables = json!({
        "id": team, "teamId": team, "runId": run["data"]["runTeam"]["id"], "after": null, "bucket": "HOUR", "groupBy": ["DAY", "MODEL"],
        "range": {"from": (now - chrono::Duration::hours(24)).to_rfc3339(), "to": now.to_rfc3339()},
        "filter": {"teamId": team},
    });
    let documents = documents(&crawl(&app).await);
    let queries = documents.iter().filter(|(_, text)| text.trim_start().starts_with("query"));
    let mut ran = 0;
    for (name, text) in queries {
        let (status, body) = app.gql_as(&admin, text, variables.clone()).await;
        assert!(status == 200 && body.get("errors").is_none(), "{name}: {body}");
        ran += 1;
    }
    assert!(ran >= 10, "only {ran} queries found");
}

#[tokio::test]
async fn the_answers_the_page_relies_on_for_strangers_and_bad_tokens() {
    let app = TestApp::spawn().await;
    let owner = app.token("alice", GlobalRole::Member);
    let (_, created) =
        app.gql_as(&owner, "mutation { createTeam(input: {name: \"Private\"}) { id } }", json!({})).await;
    let team = created["data"]["createTeam"]["id"].clone();
    let query = "query($id: ID!) { team(id: $id) { id name } }";

    let stranger = app.token("bob", GlobalRole::Member);
    let (_, body) = app.gql_as(&stranger, query, json!({"id": team})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "the page says 'team not found': {body}");

    let (_, body) = app.gql_as("not-a-token", query, json!({"id": team})).await;
    assert_eq!(first_code(&body), "UNAUTHENTICATED", "the page returns to sign-in: {body}");
}

#[test]
fn the_chart_module_passes_its_node_tests() {
    let root = env!("CARGO_MANIFEST_DIR");
    let Ok(output) =
        std::process::Command::new("node").args(["--test", "dashboard/charts.test.mjs"]).current_dir(root).output()
    else {
        println!("skipped: `node` is not on PATH, so dashboard/charts.test.mjs cannot run");
        return;
    };
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{report}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(report.contains("# fail 0"), "{report}");
}
