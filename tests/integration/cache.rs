//! The caches never serve a stale answer after a write: revoked and rotated keys, team specs,
//! templates and roles apply to the very next request; an unknown key prefix is remembered
//! briefly without hiding a key made right after; hits and evictions reach `/metrics` and
//! `resourceUsage`; and with `ENSEMBLE_CACHE=off` nothing is kept.

use crate::common;

use common::{TestApp, first_code};
use ensemble::{
    auth::api_key,
    config::CacheMode,
    domain::{Caller, GlobalRole, Principal, UserPrincipal},
    service::api_keys,
};
use serde_json::{Value, json};

const ME: &str = "{ me { id } }";
const CREATE_KEY: &str =
    "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id } } }";
const TEAM: &str = "query($id: ID!) { team(id: $id) { version spec } }";
const RUN: &str = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"hi\"}) { status teamVersion agent } }";

/// A key of `token`'s user with `scopes`: (secret, id).
async fn create_key(app: &TestApp, token: &str, scopes: Value) -> (String, String) {
    let made = app.must(token, CREATE_KEY, json!({"input": {"name": "ci", "scopes": scopes}})).await;
    let made = &made["createApiKey"];
    (made["secret"].as_str().unwrap().to_string(), made["apiKey"]["id"].as_str().unwrap().to_string())
}

/// A team with one `local/echo` agent named `agent`.
fn spec(agent: &str) -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": agent, "model": "local/echo"}],
        "routing": {"rules": [], "default": agent}
    })
}

/// `/metrics`' value for `metric{cache="name"}`.
async fn cache_metric(app: &TestApp, metric: &str, name: &str) -> u64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let line = format!("{metric}{{cache=\"{name}\"}} ");
    let found = text.lines().find_map(|l| l.strip_prefix(line.as_str()));
    found.unwrap_or_else(|| panic!("no {line}in {text}")).parse().unwrap()
}

#[tokio::test]
async fn a_revoked_or_rotated_key_is_refused_on_the_very_next_request() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let (revoked, id) = create_key(&app, &alice, json!(["TEAMS_READ"])).await;
    assert_eq!(app.gql_as(&revoked, ME, json!({})).await.0, 200, "now cached");
    app.must(&alice, "mutation($id: ID!) { revokeApiKey(id: $id) { id } }", json!({"id": id})).await;
    let (status, body) = app.gql_as(&revoked, ME, json!({})).await;
    assert_eq!((status, first_code(&body)), (401, "UNAUTHENTICATED"), "{body}");

    let (old, id) = create_key(&app, &alice, json!(["TEAMS_READ"])).await;
    assert_eq!(app.gql_as(&old, ME, json!({})).await.0, 200, "now cached");
    let rotate = "mutation($id: ID!) { rotateApiKey(id: $id, graceSeconds: 0) { secret } }";
    let new = app.must(&alice, rotate, json!({"id": id})).await["rotateApiKey"]["secret"].clone();
    assert_eq!(app.gql_as(&old, ME, json!({})).await.0, 401, "the old secret, without a grace");
    assert_eq!(app.gql_as(new.as_str().unwrap(), ME, json!({})).await.0, 200, "the new secret");
}

#[tokio::test]
async fn an_updated_team_spec_is_served_and_run_on_the_very_next_request() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let create = "mutation($s: JSON) { createTeam(input: {name: \"Support\", spec: $s}) { id } }";
    let team = app.must(&alice, create, json!({"s": spec("first")})).await["createTeam"]["id"].clone();
    assert_eq!(app.must(&alice, TEAM, json!({"id": team})).await["team"]["spec"]["agents"][0]["name"], "first");
    let ran = app.must(&alice, RUN, json!({"t": team})).await["runTeam"].clone();
    assert_eq!((&ran["teamVersion"], &ran["agent"]), (&json!(1), &json!("first")), "{ran}");

    let update = "mutation($id: ID!, $s: JSON) { updateTeam(id: $id, input: {spec: $s}) { version } }";
    app.must(&alice, update, json!({"id": team, "s": spec("second")})).await;
    let served = app.must(&alice, TEAM, json!({"id": team})).await["team"].clone();
    assert_eq!((&served["version"], &served["spec"]["agents"][0]["name"]), (&json!(2), &json!("second")));
    let ran = app.must(&alice, RUN, json!({"t": team})).await["runTeam"].clone();
    assert_eq!((&ran["teamVersion"], &ran["agent"]), (&json!(2), &json!("second")), "{ran}");
}

#[tokio::test]
async fn an_edited_template_is_visible_on_the_next_request() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let create = "mutation($input: TemplateInput!) { createTemplate(input: $input) { id } }";
    let input = json!({"kind": "QUERY", "name": "Greet", "body": {"prompt": "Hello {{ name }}"},
                       "variables": [{"name": "name", "type": "string", "required": true}]});
    let id = app.must(&alice, create, json!({"input": input})).await["createTemplate"]["id"].clone();
    let get = "query($id: ID!) { template(id: $id) { name version body } }";
    assert_eq!(app.must(&alice, get, json!({"id": id})).await["template"]["name"], "Greet", "now cached");

    let update = "mutation($id: ID!, $input: TemplateInput!) { updateTemplate(id: $id, input: $input) { version } }";
    let change = json!({"name": "Welcome", "body": {"prompt": "Welcome, {{ name }}"}});
    app.must(&alice, update, json!({"id": id, "input": change})).await;
    let served = app.must(&alice, get, json!({"id": id})).await["template"].clone();
    assert_eq!((&served["name"], &served["version"]), (&json!("Welcome"), &json!(2)), "{served}");
    assert_eq!(served["body"]["prompt"], "Welcome, {{ name }}");
    let render = "query($id: ID!) { renderTemplate(id: $id, variables: {name: \"Ada\"}) }";
    assert_eq!(app.must(&alice, render, json!({"id": id})).await["renderTemplate"], "Welcome, Ada");
}

#[tokio::test]
async fn a_changed_user_role_applies_on_the_next_request_by_token_and_by_key() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let bob = app.token("user_bob", GlobalRole::Member);
    let team = app.must(&bob, "mutation { createTeam(input: {name: \"Private\"}) { id } }", json!({})).await;
    let team = team["createTeam"]["id"].clone();
    let alice = app.token("user_alice", GlobalRole::Member);
    let (key, _) = create_key(&app, &alice, json!(["TEAMS_READ"])).await;
    let users = "{ users { nodes { id } } }";
    assert_eq!(first_code(&app.gql_as(&alice, users, json!({})).await.1), "FORBIDDEN");
    assert_eq!(first_code(&app.gql_as(&key, TEAM, json!({"id": team})).await.1), "NOT_FOUND", "bob's team");

    let set_role = "mutation($role: GlobalRole!) { setUserRole(userId: \"user_alice\", role: $role) { role } }";
    app.must(&admin, set_role, json!({"role": "ADMIN"})).await;
    assert!(app.gql_as(&alice, users, json!({})).await.1.get("errors").is_none(), "an admin now");
    assert!(app.must(&key, TEAM, json!({"id": team})).await["team"]["spec"].is_object(), "her key too");

    app.must(&admin, set_role, json!({"role": "MEMBER"})).await;
    assert_eq!(first_code(&app.gql_as(&alice, users, json!({})).await.1), "FORBIDDEN", "a member again");
    assert_eq!(first_code(&app.gql_as(&key, TEAM, json!({"id": team})).await.1), "NOT_FOUND");
}

#[tokio::test]
async fn an_unknown_key_prefix_is_refused_and_a_key_made_right_after_with_that_prefix_works() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    app.must(&alice, ME, json!({})).await;
    let secret = api_key::generate();
    for _ in 0..2 {
        let (status, body) = app.gql_as(&secret.full, ME, json!({})).await;
        assert_eq!((status, first_code(&body)), (401, "UNAUTHENTICATED"), "{body}");
    }
    assert_eq!(cache_metric(&app, "ensemble_cache_hits_total", "unknown_api_keys").await, 1, "refused from memory");

    let caller = Caller {
        principal: Principal::User(UserPrincipal {
            id: "user_alice".into(),
            role: GlobalRole::Member,
            email: None,
            org: None,
            expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
        }),
        meta: Default::default(),
    };
    let new = api_keys::NewKey {
        name: "ci".into(),
        scopes: vec![ensemble::domain::Scope::TeamsRead],
        team_id: None,
        expires_at: None,
        daily_token_budget: None,
        daily_cost_budget_usd: None,
    };
    let made =
        api_keys::create_with(&app.state.db, &app.state.audit, &app.state.caches, &caller, new, secret).await.unwrap();
    assert_eq!(app.must(&made.secret, ME, json!({})).await["me"]["id"], "user_alice");
}

#[tokio::test]
async fn hits_and_evictions_show_up_in_metrics_and_resource_usage() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let (key, _) = create_key(&app, &admin, json!(["TEAMS_READ"])).await;
    for _ in 0..3 {
        app.must(&key, ME, json!({})).await;
    }
    assert_eq!(cache_metric(&app, "ensemble_cache_misses_total", "api_keys").await, 1);
    assert_eq!(cache_metric(&app, "ensemble_cache_hits_total", "api_keys").await, 2);

    let unknown = api_key::generate().full;
    assert_eq!(app.gql_as(&unknown, ME, json!({})).await.0, 401);
    assert_eq!(cache_metric(&app, "ensemble_cache_evictions_total", "unknown_api_keys").await, 0);
    // Unknown prefixes are remembered for 5 s.
    let app_ref = &app;
    let evicted = move || async move {
        app_ref.state.caches.unknown_api_keys.run_pending_tasks().await;
        cache_metric(app_ref, "ensemble_cache_evictions_total", "unknown_api_keys").await == 1
    };
    common::eventually(std::time::Duration::from_secs(10), "the unknown prefix expires", evicted).await;

    let usage = "{ resourceUsage { server { caches { name hits evictions } } } }";
    let caches = app.must(&admin, usage, json!({})).await["resourceUsage"]["server"]["caches"].clone();
    let of = |name: &str| caches.as_array().unwrap().iter().find(|c| c["name"] == name).cloned().unwrap();
    assert_eq!(of("unknown_api_keys")["evictions"], 1, "{caches}");
    assert_eq!(of("api_keys")["hits"], 2, "{caches}");
}

#[tokio::test]
async fn with_the_cache_off_every_request_reads_the_database_and_nothing_is_kept() {
    let app = TestApp::spawn_with(|config| {
        config.cache = CacheMode::Off;
        // Usage counts are written in the background; not while this test counts statements.
        config.usage_flush_secs = 3600;
    })
    .await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let statements = || app.state.statements.load(std::sync::atomic::Ordering::Relaxed);
    app.must(&alice, ME, json!({})).await;
    app.until_quiet().await;
    let before = statements();
    app.must(&alice, ME, json!({})).await;
    let per_request = statements() - before;
    app.must(&alice, ME, json!({})).await;
    assert_eq!(statements() - before, 2 * per_request, "the same reads every time");
    assert!(per_request >= 1, "the user's row at least");
    assert_eq!(cache_metric(&app, "ensemble_cache_hits_total", "session_tokens").await, 0);
    assert_eq!(cache_metric(&app, "ensemble_cache_misses_total", "user_standings").await, 3);
    assert_eq!(cache_metric(&app, "ensemble_cache_entries", "user_standings").await, 0);
}
