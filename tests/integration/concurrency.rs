//! Fifty writers at once, on one row and on many, on each database: no errors, no lost update,
//! versions numbered without gaps, counters exact, and one audit row per mutation in a chain
//! that still verifies.

use crate::common;

use common::TestApp;
use ensemble::domain::GlobalRole;
use entity::{audit_logs, runs, team_members, team_versions, template_versions, usage_daily};
use futures_util::future::join_all;
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

const PARALLEL: usize = 50;

const CREATE_TEAM: &str = "mutation($n: String!) { createTeam(input: {name: $n}) { id slug version } }";
const UPDATE_TEAM: &str =
    "mutation($id: ID!, $input: UpdateTeamInput!) { updateTeam(id: $id, input: $input) { id version } }";
const ADD_MEMBER: &str = "mutation($team: ID!, $user: ID!) { addTeamMember(teamId: $team, input: {userId: $user, role: EDITOR}) { userId role } }";
const TEAM: &str = "query($id: ID!) { team(id: $id) { name version spec members { userId role } } }";
const RUN: &str = "mutation($team: ID!, $c: String!) { runTeam(teamId: $team, input: {content: $c}) { id status } }";
const OVERVIEW: &str = "query($team: ID!) { teamOverview(teamId: $team) { runs failures } }";
const CREATE_TEMPLATE: &str = "mutation($input: TemplateInput!) { createTemplate(input: $input) { id slug version } }";
const UPDATE_TEMPLATE: &str =
    "mutation($id: ID!, $input: TemplateInput!) { updateTemplate(id: $id, input: $input) { id version } }";
const TEMPLATE: &str = "query($id: ID!) { template(id: $id) { version body } }";

/// A server without the rate limit, which would otherwise turn a burst away.
async fn spawn() -> TestApp {
    TestApp::spawn_with(|c| {
        c.rate_limit_per_minute = 0;
        // Only the test flushes the usage counts, so none are in flight when it reads them.
        c.usage_flush_secs = 3600;
    })
    .await
}

/// Sends every operation at once as the bearer of `token` and answers their `data`, in the
/// order given, after checking that none failed.
async fn all_at_once(app: &TestApp, token: &str, operations: Vec<(&str, Value)>) -> Vec<Value> {
    let answers = join_all(operations.into_iter().map(|(query, variables)| app.gql_as(token, query, variables))).await;
    let failed: Vec<&Value> = answers
        .iter()
        .filter(|(status, body)| *status != 200 || body.get("errors").is_some())
        .map(|(_, body)| body)
        .collect();
    assert!(failed.is_empty(), "{} of {} operations failed, e.g. {}", failed.len(), answers.len(), failed[0]);
    answers.into_iter().map(|(_, body)| body["data"].clone()).collect()
}

/// Runs one operation that must succeed; answers its `data`.
async fn must(app: &TestApp, token: &str, query: &str, variables: Value) -> Value {
    all_at_once(app, token, vec![(query, variables)]).await.remove(0)
}

/// A team spec told apart from the others by its system prompt.
fn spec(n: usize) -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "assistant", "model": "local/echo", "systemPrompt": format!("Prompt {n}")}],
        "routing": {"rules": [], "default": "assistant"}
    })
}

fn prompt_of(spec: &Value) -> &str {
    spec["agents"][0]["systemPrompt"].as_str().unwrap_or_default()
}

/// The audit log holds exactly one row per mutation and its hash chain verifies.
async fn assert_audited(app: &TestApp, mutations: usize) {
    let rows = audit_logs::Entity::find().count(&app.state.db).await.unwrap();
    assert_eq!(rows, mutations as u64, "one audit row per mutation");
    let admin = app.token("user_admin", GlobalRole::Admin);
    let verified = must(app, &admin, "{ verifyAuditLog { ok checkedRows } }", json!({})).await;
    assert_eq!(verified["verifyAuditLog"], json!({"ok": true, "checkedRows": mutations}));
}

#[tokio::test]
async fn parallel_spec_changes_to_one_team_number_its_versions_without_gaps() {
    let app = spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let id = must(&app, &alice, CREATE_TEAM, json!({"n": "Busy"})).await["createTeam"]["id"].clone();

    let updates = (0..PARALLEL)
        .map(|n| (UPDATE_TEAM, json!({"id": id, "input": {"spec": spec(n), "message": format!("change {n}")}})))
        .collect();
    all_at_once(&app, &alice, updates).await;

    let versions = team_versions::Entity::find()
        .filter(team_versions::Column::TeamId.eq(id.as_str().unwrap()))
        .order_by_asc(team_versions::Column::Version)
        .all(&app.state.db)
        .await
        .unwrap();
    let numbers: Vec<i32> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=PARALLEL as i32 + 1).collect::<Vec<_>>());
    let mut prompts: Vec<&str> = versions[1..].iter().map(|v| prompt_of(&v.spec)).collect();
    prompts.sort_unstable();
    let mut expected: Vec<String> = (0..PARALLEL).map(|n| format!("Prompt {n}")).collect();
    expected.sort_unstable();
    assert_eq!(prompts, expected, "every change is a version of its own");
    let team = must(&app, &alice, TEAM, json!({"id": id})).await["team"].clone();
    assert_eq!(team["version"], PARALLEL + 1);
    assert_eq!(prompt_of(&team["spec"]), prompt_of(&versions[PARALLEL].spec), "the team holds its newest version");
    assert_audited(&app, 1 + PARALLEL).await;
}

#[tokio::test]
async fn parallel_changes_to_different_teams_all_land() {
    let app = spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let bob = app.token("user_bob", GlobalRole::Member);
    must(&app, &bob, "{ me { id } }", json!({})).await;
    let creates = (0..PARALLEL).map(|n| (CREATE_TEAM, json!({"n": format!("Team {n}")}))).collect();
    let ids: Vec<Value> =
        all_at_once(&app, &alice, creates).await.into_iter().map(|data| data["createTeam"]["id"].clone()).collect();

    // Even teams get a new name and spec, odd ones a new member.
    let changes = ids
        .iter()
        .enumerate()
        .map(|(n, id)| match n % 2 {
            0 => (UPDATE_TEAM, json!({"id": id, "input": {"name": format!("Renamed {n}"), "spec": spec(n)}})),
            _ => (ADD_MEMBER, json!({"team": id, "user": "user_bob"})),
        })
        .collect();
    all_at_once(&app, &alice, changes).await;

    let teams = all_at_once(&app, &alice, ids.iter().map(|id| (TEAM, json!({"id": id}))).collect()).await;
    for (n, team) in teams.iter().map(|data| &data["team"]).enumerate() {
        if n % 2 == 0 {
            assert_eq!(
                (team["name"].as_str(), team["version"].as_i64()),
                (Some(format!("Renamed {n}").as_str()), Some(2))
            );
            assert_eq!(prompt_of(&team["spec"]), format!("Prompt {n}"));
        } else {
            assert_eq!(team["name"], format!("Team {n}"));
            assert_eq!(
                team["members"],
                json!([{"userId": "user_alice", "role": "OWNER"}, {"userId": "user_bob", "role": "EDITOR"}])
            );
        }
    }
    assert_audited(&app, 2 * PARALLEL).await;
}

#[tokio::test]
async fn parallel_teams_of_one_name_each_get_a_slug_of_their_own() {
    let app = spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let creates = (0..PARALLEL).map(|_| (CREATE_TEAM, json!({"n": "Support"}))).collect();
    let created = all_at_once(&app, &alice, creates).await;

    let mut slugs: Vec<&str> = created.iter().map(|data| data["createTeam"]["slug"].as_str().unwrap()).collect();
    slugs.sort_unstable();
    slugs.dedup();
    assert_eq!(slugs.len(), PARALLEL, "{slugs:?}");
    assert!(slugs.contains(&"support"), "one of them has the plain slug: {slugs:?}");
    let db = &app.state.db;
    assert_eq!(team_versions::Entity::find().count(db).await.unwrap(), PARALLEL as u64);
    let owners = team_members::Entity::find().filter(team_members::Column::Role.eq("owner")).count(db).await.unwrap();
    assert_eq!(owners, PARALLEL as u64);
    assert_audited(&app, PARALLEL).await;
}

#[tokio::test]
async fn parallel_templates_of_one_name_each_get_a_slug_of_their_own() {
    let app = spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let input = json!({"kind": "QUERY", "name": "Parallel Greeting", "body": {"prompt": "Hello"}});
    let creates = (0..PARALLEL).map(|_| (CREATE_TEMPLATE, json!({"input": input}))).collect();
    let created = all_at_once(&app, &alice, creates).await;

    let mut slugs: Vec<&str> = created.iter().map(|data| data["createTemplate"]["slug"].as_str().unwrap()).collect();
    slugs.sort_unstable();
    slugs.dedup();
    assert_eq!(slugs.len(), PARALLEL, "{slugs:?}");
    assert!(slugs.contains(&"parallel-greeting"), "one of them has the plain slug: {slugs:?}");
    assert_audited(&app, PARALLEL).await;
}

#[tokio::test]
async fn parallel_invitations_of_one_user_make_one_membership() {
    let app = spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let bob = app.token("user_bob", GlobalRole::Member);
    must(&app, &bob, "{ me { id } }", json!({})).await;
    let team = must(&app, &alice, CREATE_TEAM, json!({"n": "Inviting"})).await["createTeam"]["id"].clone();

    let adds = (0..PARALLEL).map(|_| app.gql_as(&alice, ADD_MEMBER, json!({"team": team, "user": "user_bob"})));
    let answers = join_all(adds).await;
    let codes: Vec<&str> =
        answers.iter().filter_map(|(_, body)| body["errors"][0]["extensions"]["code"].as_str()).collect();
    assert_eq!(codes.len(), PARALLEL - 1, "one invitation succeeds: {codes:?}");
    assert!(codes.iter().all(|code| *code == "CONFLICT"), "the others are told bob is a member already: {codes:?}");
    let team = must(&app, &alice, TEAM, json!({"id": team})).await["team"].clone();
    assert_eq!(
        team["members"],
        json!([{"userId": "user_alice", "role": "OWNER"}, {"userId": "user_bob", "role": "EDITOR"}])
    );
}

#[tokio::test]
async fn owners_demoting_each_other_at_once_never_leave_a_team_without_an_owner() {
    const OWNERS: usize = 10;
    let app = spawn().await;
    let tokens: Vec<String> = (0..OWNERS).map(|n| app.token(&format!("user_{n}"), GlobalRole::Member)).collect();
    let team = must(&app, &tokens[0], CREATE_TEAM, json!({"n": "Crowded"})).await["createTeam"]["id"].clone();
    for (n, token) in tokens.iter().enumerate().skip(1) {
        must(&app, token, "{ me { id } }", json!({})).await;
        let promote = "mutation($team: ID!, $user: ID!) { addTeamMember(teamId: $team, input: {userId: $user, role: OWNER}) { role } }";
        must(&app, &tokens[0], promote, json!({"team": team, "user": format!("user_{n}")})).await;
    }

    // Each owner demotes the next one, all at once.
    let demote = "mutation($team: ID!, $user: ID!) { updateTeamMember(teamId: $team, input: {userId: $user, role: EDITOR}) { role } }";
    let demotions = tokens.iter().enumerate().map(|(n, token)| {
        app.gql_as(token, demote, json!({"team": team, "user": format!("user_{}", (n + 1) % OWNERS)}))
    });
    let answers = join_all(demotions).await;
    let codes: Vec<&str> =
        answers.iter().filter_map(|(_, body)| body["errors"][0]["extensions"]["code"].as_str()).collect();
    assert!(codes.iter().all(|code| matches!(*code, "CONFLICT" | "FORBIDDEN")), "{codes:?}");
    let owners = team_members::Entity::find()
        .filter(team_members::Column::TeamId.eq(team.as_str().unwrap()))
        .filter(team_members::Column::Role.eq("owner"))
        .count(&app.state.db)
        .await
        .unwrap();
    assert!(owners >= 1, "the team kept an owner");
}

#[tokio::test]
async fn parallel_runs_on_one_team_are_each_counted_once() {
    let app = spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let team = must(&app, &alice, CREATE_TEAM, json!({"n": "Counted"})).await["createTeam"]["id"].clone();

    let runs = (0..PARALLEL).map(|n| (RUN, json!({"team": team, "c": format!("hello {n}")}))).collect();
    let answers = all_at_once(&app, &alice, runs).await;
    assert!(answers.iter().all(|data| data["runTeam"]["status"] == "SUCCEEDED"), "{answers:?}");
    app.state.usage.flush().await.unwrap();

    let db = &app.state.db;
    let team_id = team.as_str().unwrap();
    assert_eq!(runs::Entity::find().filter(runs::Column::TeamId.eq(team_id)).count(db).await.unwrap(), PARALLEL as u64);
    let overview = must(&app, &alice, OVERVIEW, json!({"team": team})).await;
    assert_eq!(overview["teamOverview"], json!({"runs": PARALLEL, "failures": 0}));
    let usage = usage_daily::Entity::find().filter(usage_daily::Column::UserId.eq("user_alice")).all(db).await.unwrap();
    let runs_counted: i64 = usage.iter().filter(|row| row.team_id == team_id).map(|row| row.runs).sum();
    assert_eq!(runs_counted, PARALLEL as i64);
    let requests: i64 = usage.iter().map(|row| row.requests).sum();
    assert_eq!(requests, 1 + PARALLEL as i64, "the create and every run, as of the flush");
    assert_audited(&app, 1).await;
}

#[tokio::test]
async fn parallel_saves_of_one_template_number_its_versions_without_gaps() {
    let app = spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let input = json!({
        "kind": "QUERY",
        "name": "Greeting",
        "body": {"prompt": "Say {{ text }}"},
        "variables": [{"name": "text", "type": "string", "required": true}]
    });
    let id = must(&app, &alice, CREATE_TEMPLATE, json!({"input": input})).await["createTemplate"]["id"].clone();

    let saves = (0..PARALLEL)
        .map(|n| {
            (UPDATE_TEMPLATE, json!({"id": id, "input": {"body": {"prompt": format!("Say {{{{ text }}}} #{n}")}}}))
        })
        .collect();
    all_at_once(&app, &alice, saves).await;

    let versions = template_versions::Entity::find()
        .filter(template_versions::Column::TemplateId.eq(id.as_str().unwrap()))
        .order_by_asc(template_versions::Column::Version)
        .all(&app.state.db)
        .await
        .unwrap();
    let numbers: Vec<i32> = versions.iter().map(|v| v.version).collect();
    assert_eq!(numbers, (1..=PARALLEL as i32 + 1).collect::<Vec<_>>());
    let mut prompts: Vec<String> = versions[1..].iter().map(|v| v.body["prompt"].to_string()).collect();
    prompts.sort_unstable();
    prompts.dedup();
    assert_eq!(prompts.len(), PARALLEL, "every save is a version of its own");
    let template = must(&app, &alice, TEMPLATE, json!({"id": id})).await["template"].clone();
    assert_eq!(template["version"], PARALLEL + 1);
    assert_eq!(template["body"], versions[PARALLEL].body, "the template holds its newest version");
    assert_audited(&app, 1 + PARALLEL).await;
}
