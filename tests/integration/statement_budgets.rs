//! Statement budgets: each deep query a client sends runs a fixed number of SQL statements,
//! the same for a page of 5 as for a page of 50, because every nested list loads in one batch.
//! Each test prints the counts it measured (`cargo test --test statement_budgets -- --nocapture`).

use crate::common;

use common::TestApp;
use ensemble::{
    domain::{Caller, GlobalRole, TeamRole},
    service::{
        conversations,
        runs::RunInput,
        teams::{self, NewTeam, TeamChanges},
        templates::{TemplateInput, Visibility, body::Kind},
    },
};
use serde_json::{Value, json};

/// The page sizes every budget holds at.
const SIZES: [usize; 2] = [5, 50];

/// A signed-in user: the token to query with and the caller to seed data as.
struct Person {
    token: String,
    caller: Caller,
}

async fn sign_in(app: &TestApp, user: &str) -> Person {
    let token = app.token(user, GlobalRole::Member);
    let (_, me) = app.gql_as(&token, "{ me { id } }", json!({})).await;
    assert_eq!(me["data"]["me"]["id"], user, "{me}");
    let caller = Caller { principal: app.state.auth.from_token(&token).await.unwrap(), meta: Default::default() };
    Person { token, caller }
}

async fn new_team(app: &TestApp, owner: &Person, name: &str) -> String {
    let new = NewTeam { name: name.into(), description: None, visibility: None, spec: None };
    teams::create(&app.state.db, &app.state.audit, &app.state.config.runs.providers, &owner.caller, new)
        .await
        .unwrap()
        .id
}

/// Saves a new spec version of `team`, changing its agent's system prompt.
async fn new_version(app: &TestApp, owner: &Person, team: &str, n: usize) {
    let mut spec = teams::default_spec();
    spec["agents"][0]["systemPrompt"] = json!(format!("You are helpful, take {n}."));
    let changes = TeamChanges {
        name: None,
        description: None,
        visibility: None,
        spec: Some(spec),
        message: Some(format!("take {n}")),
        expected_version: None,
    };
    let state = &app.state;
    teams::update(&state.db, &state.audit, &state.caches, &state.config.runs.providers, &owner.caller, team, changes)
        .await
        .unwrap();
}

/// Runs `team` on a message and waits for it to finish.
async fn run(app: &TestApp, person: &Person, team: &str, conversation: Option<&str>) {
    let input =
        RunInput { content: "hello".into(), conversation_id: conversation.map(str::to_string), ..Default::default() };
    let run = app.state.runner.start(&person.caller, team, input, true).await.unwrap();
    assert_eq!(run.status, entity::states::RunStatus::Succeeded, "{run:?}");
}

/// Asserts that every count is at most `budget` and that all are equal, after printing them.
fn assert_within(what: &str, budget: u64, counts: &[u64]) {
    let database = if std::env::var(common::PG_ENV).is_ok_and(|url| !url.is_empty()) { "PostgreSQL" } else { "SQLite" };
    let measured: Vec<String> = SIZES.iter().zip(counts).map(|(size, count)| format!("{count} at {size}")).collect();
    println!("statement budget on {database}: {what}: {} (budget {budget})", measured.join(", "));
    assert!(counts.iter().all(|&count| count <= budget), "{what}: {counts:?} statements, over the budget of {budget}");
    assert!(
        counts.windows(2).all(|pair| pair[0] == pair[1]),
        "{what}: {counts:?} statements, not the same at every size"
    );
}

fn nodes(body: &Value, list: &str) -> Vec<Value> {
    body["data"][list]["nodes"].as_array().cloned().unwrap_or_else(|| panic!("{body}"))
}

const TEAMS_WITH_MEMBERS: &str = "query($first: Int) { teams(first: $first) { nodes {
    owner { id displayName } myRole members { role user { id displayName } } } } }";

#[tokio::test]
async fn teams_with_their_owners_members_and_members_users_stay_within_budget() {
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let owner = sign_in(&app, "user_owner").await;
        sign_in(&app, "user_helper").await;
        for i in 0..size {
            let team = new_team(&app, &owner, &format!("Team {i}")).await;
            teams::add_member(&app.state.db, &app.state.audit, &owner.caller, &team, "user_helper", TeamRole::Viewer)
                .await
                .unwrap();
        }
        let (count, body) = app.statements_for(&owner.token, TEAMS_WITH_MEMBERS, json!({"first": size})).await;
        let teams = nodes(&body, "teams");
        assert_eq!(teams.len(), size, "{body}");
        assert!(teams.iter().all(|t| t["members"][1]["user"]["id"] == "user_helper"), "{body}");
        counts.push(count);
    }
    assert_within("teams → owner, members → user", 3, &counts);
}

const TEAMS_WITH_VERSIONS: &str = "query($first: Int) { teams(first: $first) { nodes {
    versionCount versions(first: 2) { version message authorId } versionAt(n: 1) { version } } } }";

#[tokio::test]
async fn teams_with_their_newest_versions_stay_within_budget() {
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let owner = sign_in(&app, "user_owner").await;
        for i in 0..size {
            let team = new_team(&app, &owner, &format!("Team {i}")).await;
            new_version(&app, &owner, &team, 2).await;
            new_version(&app, &owner, &team, 3).await;
        }
        let (count, body) = app.statements_for(&owner.token, TEAMS_WITH_VERSIONS, json!({"first": size})).await;
        let teams = nodes(&body, "teams");
        assert_eq!(teams.len(), size, "{body}");
        for team in &teams {
            assert_eq!(team["versionCount"], 3, "{body}");
            let newest: Vec<&Value> = team["versions"].as_array().unwrap().iter().map(|v| &v["version"]).collect();
            assert_eq!(newest, [&json!(3), &json!(2)], "the two newest, newest first: {body}");
            assert_eq!(team["versions"][0]["message"], "take 3");
            assert_eq!(team["versionAt"]["version"], 1);
        }
        counts.push(count);
    }
    assert_within("teams → versionCount, versions, versionAt", 4, &counts);
}

const HISTORY: &str = "query($team: ID!, $first: Int) { teamVersions(teamId: $team, first: $first) {
    nodes { version message authorId } pageInfo { hasNextPage } } }";

#[tokio::test]
async fn a_team_s_version_history_stays_within_budget() {
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let owner = sign_in(&app, "user_owner").await;
        let team = new_team(&app, &owner, "Team").await;
        for n in 2..=size {
            new_version(&app, &owner, &team, n).await;
        }
        let (count, body) = app.statements_for(&owner.token, HISTORY, json!({"team": team, "first": size})).await;
        let versions = nodes(&body, "teamVersions");
        assert_eq!(versions.len(), size, "{body}");
        assert_eq!(versions[0]["version"], size, "newest first: {body}");
        counts.push(count);
    }
    assert_within("teamVersions", 3, &counts);
}

const USER_TEMPLATES: &str = "query($first: Int) { templates(filter: {starter: false}, first: $first) {
    nodes { category { slug } owner { id displayName } body } } }";

#[tokio::test]
async fn templates_with_their_categories_and_owners_stay_within_budget() {
    let authors = ["user_ann", "user_bob", "user_cyd"];
    let categories = ["language", "analysis"];
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let reader = sign_in(&app, "user_reader").await;
        let mut people = Vec::new();
        for author in authors {
            people.push(sign_in(&app, author).await);
        }
        for i in 0..size {
            let input = TemplateInput {
                kind: Some(Kind::Query),
                name: Some(format!("Summary {i}")),
                category: Some(categories[i % categories.len()].into()),
                visibility: Some(Visibility::Public),
                body: Some(json!({"prompt": "Summarise {{ text }}"})),
                variables: Some(json!([{"name": "text", "type": "string", "required": true}])),
                ..Default::default()
            };
            app.state.templates.create(&people[i % people.len()].caller, input).await.unwrap();
        }
        let (count, body) = app.statements_for(&reader.token, USER_TEMPLATES, json!({"first": size})).await;
        let templates = nodes(&body, "templates");
        assert_eq!(templates.len(), size, "{body}");
        assert_eq!(templates[0]["category"]["slug"], "language", "{body}");
        assert_eq!(templates[1]["owner"]["id"], "user_bob", "{body}");
        assert!(templates.iter().all(|t| t["owner"]["id"].is_string() && t["category"]["slug"].is_string()), "{body}");
        counts.push(count);
    }
    assert_within("templates → category, owner", 3, &counts);
}

#[tokio::test]
async fn a_starter_template_has_no_owner() {
    let app = TestApp::spawn().await;
    let reader = sign_in(&app, "user_reader").await;
    let query = "{ templates(filter: {starter: true}, first: 1) { nodes { isStarter ownerId owner { id } } } }";
    let (_, body) = app.gql_as(&reader.token, query, json!({})).await;
    assert_eq!(nodes(&body, "templates"), [json!({"isStarter": true, "ownerId": null, "owner": null})], "{body}");
}

const RUNS_WITH_ATTEMPTS: &str = "query($team: ID!, $first: Int) { runs(teamId: $team, first: $first) {
    nodes { id status attempts { seq agent model outcome } } } }";

#[tokio::test]
async fn runs_with_their_attempts_stay_within_budget() {
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let owner = sign_in(&app, "user_owner").await;
        let team = new_team(&app, &owner, "Team").await;
        for _ in 0..size {
            run(&app, &owner, &team, None).await;
        }
        let (count, body) =
            app.statements_for(&owner.token, RUNS_WITH_ATTEMPTS, json!({"team": team, "first": size})).await;
        let runs = nodes(&body, "runs");
        assert_eq!(runs.len(), size, "{body}");
        assert!(runs.iter().all(|r| r["attempts"][0]["outcome"] == "ok"), "{body}");
        counts.push(count);
    }
    assert_within("runs → attempts", 4, &counts);
}

const CONVERSATION: &str = "query($c: ID!) { conversation(id: $c) {
    title messages { id role content } branches { id } tree { id parentId } } }";

#[tokio::test]
async fn a_conversation_with_its_messages_stays_within_budget() {
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let owner = sign_in(&app, "user_owner").await;
        let team = new_team(&app, &owner, "Team").await;
        let conversation = conversations::start(&app.state.db, app.state.writer.as_ref(), &owner.caller, &team, "Chat")
            .await
            .unwrap()
            .id;
        for _ in 0..size {
            run(&app, &owner, &team, Some(&conversation)).await;
        }
        let (count, body) = app.statements_for(&owner.token, CONVERSATION, json!({"c": conversation})).await;
        let messages = body["data"]["conversation"]["messages"].as_array().unwrap_or_else(|| panic!("{body}"));
        assert_eq!(messages.len(), 2 * size, "a question and an answer per run: {body}");
        assert_eq!(body["data"]["conversation"]["tree"].as_array().map(Vec::len), Some(2 * size));
        counts.push(count);
    }
    assert_within("conversation → messages, branches, tree", 4, &counts);
}

const AUDIT_WITH_NAMES: &str = "query($first: Int) { auditLogs(first: $first) {
    nodes { seq actorId actorName teamId teamName apiKeyId apiKeyName } } }";

#[tokio::test]
async fn audit_rows_with_their_names_stay_within_budget() {
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let owner = sign_in(&app, "user_owner").await;
        let key = "mutation($t: ID!, $n: String!) { createApiKey(input: {name: $n, scopes: [TEAMS_WRITE], teamId: $t}) { secret } }";
        let rename = "mutation($t: ID!, $n: String!) { updateTeam(id: $t, input: {name: $n}) { id } }";
        for i in 0..size / 2 {
            let team = new_team(&app, &owner, &format!("Team {i}")).await;
            let (_, made) = app.gql_as(&owner.token, key, json!({"t": team, "n": format!("key {i}")})).await;
            let secret =
                made["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{made}")).to_string();
            let (_, renamed) = app.gql_as(&secret, rename, json!({"t": team, "n": format!("Renamed {i}")})).await;
            assert!(renamed.get("errors").is_none(), "{renamed}");
        }
        let (count, body) = app.statements_for(&owner.token, AUDIT_WITH_NAMES, json!({"first": size})).await;
        let rows = nodes(&body, "auditLogs");
        assert_eq!(rows.len(), size, "{body}");
        assert!(rows.iter().all(|r| r["teamName"].as_str().is_some_and(|n| n.starts_with("Renamed"))), "{body}");
        // Each team wrote three rows: its creation, its key's, and its renaming through the key.
        assert!(rows.iter().all(|r| r["apiKeyId"].is_null() == r["apiKeyName"].is_null()), "{body}");
        assert!(rows.iter().filter(|r| r["apiKeyName"].is_string()).count() >= size / 3, "{body}");
        counts.push(count);
    }
    assert_within("auditLogs → actorName, teamName, apiKeyName", 4, &counts);
}

const USAGE_WITH_NAMES: &str = "query { usageReport(groupBy: [USER, TEAM, API_KEY]) {
    rows { userId userName teamId teamName apiKeyId apiKeyName runs } } }";

#[tokio::test]
async fn usage_rows_with_their_names_stay_within_budget() {
    let mut counts = Vec::new();
    for size in SIZES {
        let app = TestApp::spawn_quiet().await;
        let owner = sign_in(&app, "user_owner").await;
        let key = "mutation($t: ID!, $n: String!) { createApiKey(input: {name: $n, scopes: [RUNS_EXECUTE], teamId: $t}) { secret } }";
        let run = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"hello\"}) { status } }";
        for i in 0..size {
            let team = new_team(&app, &owner, &format!("Team {i}")).await;
            let (_, made) = app.gql_as(&owner.token, key, json!({"t": team, "n": format!("key {i}")})).await;
            let secret =
                made["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{made}")).to_string();
            let (_, ran) = app.gql_as(&secret, run, json!({"t": team})).await;
            assert_eq!(ran["data"]["runTeam"]["status"], "SUCCEEDED", "{ran}");
        }
        app.state.usage.flush().await.unwrap();
        let (count, body) = app.statements_for(&owner.token, USAGE_WITH_NAMES, json!({})).await;
        let rows: Vec<Value> =
            body["data"]["usageReport"]["rows"].as_array().cloned().unwrap_or_else(|| panic!("{body}"));
        let keyed: Vec<&Value> = rows.iter().filter(|r| r["apiKeyId"].is_string()).collect();
        assert_eq!(keyed.len(), size, "{body}");
        assert!(keyed.iter().all(|r| r["teamName"].is_string() && r["apiKeyName"].is_string()), "{body}");
        assert!(
            rows.iter()
                .all(|r| r["userId"].is_null() || r["userName"] == "user_owner@example.com" || r["userName"].is_null()),
            "{body}"
        );
        counts.push(count);
    }
    assert_within("usageReport → userName, teamName, apiKeyName", 4, &counts);
}
