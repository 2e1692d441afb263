//! The authorization matrix: every operation in `tests/data/authorization.json` run by every
//! principal (users and API keys), against the outcome the file expects. A refused operation
//! changes nothing in the database but the audit log, where a mutation refused as FORBIDDEN,
//! NOT_FOUND or UNAUTHENTICATED leaves one `denied` row. An operation's `expect_postgres` overrides
//! `expect` for the principals it names when the tests run on PostgreSQL.
//!
//! One server runs the whole matrix. Every query and every refusal runs first, one at a time, on
//! one arrangement (a snapshot of the whole database shows a refusal changed nothing only when
//! nothing else runs); then every allowed mutation runs on an arrangement of its own (its team,
//! keys, link, run, conversation, templates and category), since it changes what it acts on;
//! one that names no fixture (it creates something, or changes its caller's own profile) runs
//! on the first arrangement.

use crate::common;

use std::collections::HashMap;

use common::TestApp;
use ensemble::domain::GlobalRole;
use entity::{
    audit_logs, backups, conversations, error_groups, messages, model_prices, runs, team_members, teams,
    template_categories, template_versions, templates, users, workflow_runs, workflow_steps,
};
use sea_orm::{ColumnTrait, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

/// What every case starts from: the team, and the owner's keys by principal name.
#[derive(Clone)]
struct Setup {
    team: String,
    keys: HashMap<&'static str, String>,
    key_read_id: String,
    link_id: String,
    link_token: String,
    run: String,
    conversation: String,
    /// The fingerprint of the error group of a failed run of the team.
    group: String,
    /// A template category.
    category: String,
    /// A QUERY template the owner shares with the team, at version 2.
    template: String,
    /// A TEAM template the owner shares with the team.
    team_template: String,
    /// A WORKFLOW template the owner shares with the team, one step on agent `a`.
    workflow: String,
    workflow_run: String,
    message: String,
    /// A backup of the database (SQLite only; on PostgreSQL backups are refused before any lookup).
    backup: String,
}

const USERS: [&str; 8] = [
    "user_owner",
    "user_editor",
    "user_operator",
    "user_viewer",
    "user_target",
    "user_stranger",
    "user_newbie",
    "user_admin",
];
const MEMBERS: [(&str, &str); 4] =
    [("user_editor", "EDITOR"), ("user_operator", "OPERATOR"), ("user_viewer", "VIEWER"), ("user_target", "VIEWER")];
const ADD: &str = "mutation($team: ID!, $user: ID!, $role: TeamRole!) { addTeamMember(teamId: $team, input: {userId: $user, role: $role}) { userId } }";
const CREATE_KEY: &str =
    "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id } } }";

/// A dev token for `user`, signed once for the whole matrix (signing takes a while).
fn token(app: &TestApp, user: &str, role: GlobalRole) -> String {
    static SIGNED: std::sync::Mutex<Vec<(String, String)>> = std::sync::Mutex::new(Vec::new());
    let mut signed = SIGNED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, token)) = signed.iter().find(|(who, _)| who == user) {
        return token.clone();
    }
    let token = app.token(user, role);
    signed.push((user.to_string(), token.clone()));
    token
}

/// Signs every user in once, so that each exists before any case runs.
async fn sign_in_users(app: &TestApp) {
    for user in USERS {
        let role = if user == "user_admin" { GlobalRole::Admin } else { GlobalRole::Member };
        app.must(&token(app, user, role), "{ me { id } }", json!({})).await;
    }
}

/// The team, its members and the owner's keys, as every case starts. `case` tells apart the
/// names that must be unique on the server (template categories); `backup` says whether the
/// case needs a backup (taking one copies the whole database).
async fn arrange(app: &TestApp, case: usize, backup: bool) -> Setup {
    let owner = token(app, "user_owner", GlobalRole::Member);
    let create = "mutation($n: String!) { createTeam(input: {name: $n}) { id } }";
    let team =
        app.must(&owner, create, json!({"n": "Support"})).await["createTeam"]["id"].as_str().unwrap().to_string();
    let respec = "mutation($id: ID!) { updateTeam(id: $id, input: {spec: {format: \"ensemble.team/v1\", agents: [{name: \"a\", model: \"local/echo\"}, {name: \"b\", model: \"local/down\"}], routing: {rules: [{name: \"broken\", when: {contains: \"fail\"}, routeTo: \"b\"}], default: \"a\"}, retry: {maxAttempts: 1}}}) { version } }";
    app.must(&owner, respec, json!({"id": team})).await;
    for (user, role) in MEMBERS {
        app.must(&owner, ADD, json!({"team": team, "user": user, "role": role})).await;
    }
    let other = app.must(&owner, create, json!({"n": "Other"})).await["createTeam"]["id"].clone();
    let all =
        json!(["TEAMS_READ", "TEAMS_WRITE", "RUNS_EXECUTE", "TEMPLATES_READ", "TEMPLATES_WRITE", "ANALYTICS_READ"]);
    let mut keys = HashMap::new();
    let mut key_read_id = String::new();
    for (name, input) in [
        ("key_full", json!({"name": "full", "scopes": all})),
        ("key_read", json!({"name": "read", "scopes": ["TEAMS_READ"]})),
        ("key_other", json!({"name": "other", "scopes": all, "teamId": other})),
    ] {
        let made = app.must(&owner, CREATE_KEY, json!({"input": input})).await["createApiKey"].clone();
        keys.insert(name, made["secret"].as_str().unwrap().to_string());
        if name == "key_read" {
            key_read_id = made["apiKey"]["id"].as_str().unwrap().to_string();
        }
    }
    let link =
        "mutation($team: ID!) { createShareLink(teamId: $team, input: {role: VIEWER}) { token shareLink { id } } }";
    let made = app.must(&owner, link, json!({"team": team})).await["createShareLink"].clone();
    let link_id = made["shareLink"]["id"].as_str().unwrap().to_string();
    let link_token = made["token"].as_str().unwrap().to_string();
    let run = "mutation($team: ID!) { runTeam(teamId: $team, input: {content: \"hi\"}) { id } }";
    let run = app.must(&owner, run, json!({"team": team})).await["runTeam"]["id"].as_str().unwrap().to_string();
    let admin = token(app, "user_admin", GlobalRole::Admin);
    let category = "mutation($n: String!) { createTemplateCategory(input: {name: $n}) { id } }";
    let category = app.must(&admin, category, json!({"n": format!("Support {case}")})).await["createTemplateCategory"]
        ["id"]
        .as_str()
        .unwrap()
        .to_string();
    let fail = "mutation($team: ID!) { runTeam(teamId: $team, input: {content: \"fail\"}) { status } }";
    app.must(&owner, fail, json!({"team": team})).await;
    let group = error_groups::Entity::find()
        .filter(error_groups::Column::TeamId.eq(&team))
        .one(&app.state.db)
        .await
        .unwrap()
        .expect("an error group")
        .fingerprint;
    let start = "mutation($team: ID!) { startConversation(teamId: $team, title: \"Chat\") { id } }";
    let conversation =
        app.must(&owner, start, json!({"team": team})).await["startConversation"]["id"].as_str().unwrap().to_string();
    let send = "mutation($c: ID!) { sendMessage(conversationId: $c, content: \"hello\") { messageId } }";
    let message = app.must(&owner, send, json!({"c": conversation})).await["sendMessage"]["messageId"]
        .as_str()
        .unwrap()
        .to_string();
    let (template, team_template, workflow) = arrange_templates(app, &owner, &team).await;
    let ran = "mutation($w: ID!, $team: ID!) { runWorkflow(templateId: $w, teamId: $team) { id status } }";
    let ran = app.must(&owner, ran, json!({"w": workflow, "team": team})).await["runWorkflow"].clone();
    assert_eq!(ran["status"], "SUCCEEDED", "{ran}");
    let workflow_run = ran["id"].as_str().unwrap().to_string();
    let backup = if backup { arrange_backup(app, &admin).await } else { "bak_none".into() };
    Setup {
        team,
        keys,
        key_read_id,
        link_id,
        link_token,
        run,
        conversation,
        message,
        group,
        category,
        template,
        team_template,
        workflow,
        workflow_run,
        backup,
    }
}

/// A backup taken by the admin, on a SQLite file; PostgreSQL and D1 have none.
async fn arrange_backup(app: &TestApp, admin: &str) -> String {
    if !file_backups(app) {
        return "bak_none".into();
    }
    let made = app.must(admin, "mutation { createBackup { id } }", json!({})).await;
    made["createBackup"]["id"].as_str().unwrap().to_string()
}

/// Whether the server's database is a SQLite file, which backups are made of (PostgreSQL and D1
/// keep their own).
fn file_backups(app: &TestApp) -> bool {
    app.state.db.get_database_backend() == DbBackend::Sqlite && !ensemble::db::is_proxy(&app.state.db)
}

/// Templates of each kind the owner shares with the team.
async fn arrange_templates(app: &TestApp, owner: &str, team: &str) -> (String, String, String) {
    let create = "mutation($input: TemplateInput!) { createTemplate(input: $input) { id } }";
    let mut ids = Vec::new();
    for (kind, body, variables) in [
        (
            "QUERY",
            json!({"prompt": "Summarise {{ text }}"}),
            json!([{"name": "text", "type": "string", "required": true}]),
        ),
        ("TEAM", json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": "local/echo"}]}), json!([])),
        (
            "WORKFLOW",
            json!({"steps": [{"id": "one", "agent": "a", "prompt": "About {{ topic }}"}]}),
            json!([{"name": "topic", "type": "string", "default": "tea"}]),
        ),
    ] {
        let input = json!({"kind": kind, "name": format!("Shared {kind}"), "visibility": "TEAM", "teamId": team,
            "body": body, "variables": variables});
        let made = app.must(owner, create, json!({"input": input})).await;
        ids.push(made["createTemplate"]["id"].as_str().unwrap().to_string());
    }
    let update = "mutation($id: ID!) { updateTemplate(id: $id, input: {changelog: \"Second\"}) { version } }";
    app.must(owner, update, json!({"id": ids[0]})).await;
    (ids[0].clone(), ids[1].clone(), ids[2].clone())
}

/// Everything but the audit log and key bookkeeping, in a stable order.
async fn snapshot(app: &TestApp) -> String {
    let db = &app.state.db;
    let users = users::Entity::find().order_by_asc(users::Column::Id).all(db).await.unwrap();
    let teams = teams::Entity::find().order_by_asc(teams::Column::Id).all(db).await.unwrap();
    let members = team_members::Entity::find()
        .order_by_asc(team_members::Column::TeamId)
        .order_by_asc(team_members::Column::UserId)
        .all(db)
        .await
        .unwrap();
    let runs = runs::Entity::find().order_by_asc(runs::Column::Id).all(db).await.unwrap();
    let conversations = conversations::Entity::find().order_by_asc(conversations::Column::Id).all(db).await.unwrap();
    let messages = messages::Entity::find().order_by_asc(messages::Column::Id).all(db).await.unwrap();
    let prices = model_prices::Entity::find().order_by_asc(model_prices::Column::Model).all(db).await.unwrap();
    let errors = error_groups::Entity::find().all(db).await.unwrap();
    let categories = template_categories::Entity::find().all(db).await.unwrap();
    let templates = templates::Entity::find().order_by_asc(templates::Column::Id).all(db).await.unwrap();
    let backups = backups::Entity::find().order_by_asc(backups::Column::Id).all(db).await.unwrap();
    let versions = template_versions::Entity::find()
        .order_by_asc(template_versions::Column::TemplateId)
        .order_by_asc(template_versions::Column::Version)
        .all(db)
        .await
        .unwrap();
    let workflow_runs = workflow_runs::Entity::find().order_by_asc(workflow_runs::Column::Id).all(db).await.unwrap();
    let workflow_steps = workflow_steps::Entity::find().order_by_asc(workflow_steps::Column::Id).all(db).await.unwrap();
    format!(
        "{users:?}\n{teams:?}\n{members:?}\n{runs:?}\n{conversations:?}\n{messages:?}\n{prices:?}\n{errors:?}\n{categories:?}\n{templates:?}\n{versions:?}\n{backups:?}\n{workflow_runs:?}\n{workflow_steps:?}"
    )
}

/// Runs `query` as `principal`; returns "ok" or the code of the first error, and the answer.
async fn outcome(app: &TestApp, principal: &str, query: &str, setup: &Setup) -> (String, Value) {
    let variables = json!({
        "team": setup.team, "target": "user_target", "key": setup.key_read_id,
        "link": setup.link_id, "token": setup.link_token, "run": setup.run,
        "conversation": setup.conversation, "message": setup.message, "group": setup.group,
        "category": setup.category, "template": setup.template, "teamTemplate": setup.team_template,
        "workflow": setup.workflow, "workflowRun": setup.workflow_run, "backup": setup.backup,
    });
    let body = match principal {
        "anonymous" => app.gql(query, variables).await,
        key if key.starts_with("key_") => app.gql_as(&setup.keys[key], query, variables).await.1,
        who => {
            let role = if who == "admin" { GlobalRole::Admin } else { GlobalRole::Member };
            app.gql_as(&token(app, &format!("user_{who}"), role), query, variables).await.1
        }
    };
    let outcome = match body["errors"][0]["extensions"]["code"].as_str() {
        Some(code) => code.to_string(),
        None if body.get("errors").is_none() => "ok".to_string(),
        None => format!("error without code: {body}"),
    };
    (outcome, body)
}

/// One case: the operation, the principal, what the matrix expects of it.
struct Case {
    name: String,
    query: String,
    principal: String,
    expected: String,
    /// A mutation that leaves an audit row (runs and conversations do not).
    audited: bool,
}

impl Case {
    fn is_mutation(&self) -> bool {
        self.query.trim_start().starts_with("mutation")
    }

    /// An allowed mutation changes what it acts on; it gets an arrangement of its own.
    fn changes_things(&self) -> bool {
        self.is_mutation() && self.expected == "ok"
    }
}

/// Every operation for every principal, with the outcome expected on this server's database.
fn cases(file_backups: bool) -> Vec<Case> {
    let matrix: Value = serde_json::from_str(include_str!("../data/authorization.json")).expect("the matrix is JSON");
    let principals: Vec<&str> = matrix["principals"].as_array().unwrap().iter().map(|p| p.as_str().unwrap()).collect();
    let mut cases = Vec::new();
    for operation in matrix["operations"].as_array().unwrap() {
        let name = operation["name"].as_str().unwrap();
        for &principal in &principals {
            let overridden =
                (!file_backups).then(|| operation["expect_without_file_backups"][principal].as_str()).flatten();
            let expected = overridden
                .or_else(|| operation["expect"][principal].as_str())
                .unwrap_or_else(|| panic!("{name} lacks {principal}"));
            cases.push(Case {
                name: name.to_string(),
                query: operation["query"].as_str().unwrap().to_string(),
                principal: principal.to_string(),
                expected: expected.to_string(),
                audited: operation["audited"].as_bool().unwrap_or(true),
            });
        }
    }
    cases
}

/// Runs a case that must change nothing on `setup`, alone on the server: checks its outcome
/// and, for a refusal, that the database is as `before` (taken now when `None`) and holds one
/// more audit row if the refusal is audited. Answers the failures and, after a refusal that
/// changed nothing, the snapshot the next case starts from.
async fn check_alone(
    app: &TestApp,
    setup: &Setup,
    case: &Case,
    before: Option<String>,
) -> (Vec<String>, Option<String>) {
    let Case { name, principal, expected, .. } = case;
    let refused = expected != "ok";
    let before = match before {
        Some(before) => Some(before),
        None if refused => Some(snapshot(app).await),
        None => None,
    };
    let audited = audit_logs::Entity::find().count(&app.state.db).await.unwrap();
    let (got, body) = outcome(app, principal, &case.query, setup).await;
    if &got != expected {
        return (vec![format!("{name} as {principal}: expected {expected}, got {got} ({body})")], None);
    }
    let Some(before) = before else {
        // A query may leave bookkeeping behind (sign-in, last use); the next refusal looks afresh.
        return (Vec::new(), None);
    };
    let mut failures = Vec::new();
    if snapshot(app).await != before {
        failures.push(format!("{name} as {principal}: refused, yet the database changed"));
    }
    let rows = audit_logs::Entity::find().count(&app.state.db).await.unwrap();
    let denied = ["FORBIDDEN", "NOT_FOUND", "UNAUTHENTICATED"].contains(&expected.as_str());
    let wanted = audited + u64::from(case.is_mutation() && case.audited && denied);
    if rows != wanted {
        failures.push(format!("{name} as {principal}: {rows} audit rows, expected {wanted}"));
    }
    let unchanged = failures.is_empty().then_some(before);
    (failures, unchanged)
}

/// Runs an allowed mutation on an arrangement of its own, or on `shared` when it names no
/// fixture (it only adds things, or changes the principal's own profile or keys).
async fn check_on_its_own(app: &TestApp, number: usize, case: &Case, shared: &Setup) -> Option<String> {
    let own = match case.query.contains('$') {
        true => Some(arrange(app, number, case.query.contains("$backup")).await),
        false => None,
    };
    let setup = own.as_ref().unwrap_or(shared);
    let (got, body) = outcome(app, &case.principal, &case.query, setup).await;
    let Case { name, principal, expected, .. } = case;
    (&got != expected).then(|| format!("{name} as {principal}: expected {expected}, got {got} ({body})"))
}

#[tokio::test]
async fn every_operation_answers_every_principal_as_the_matrix_says() {
    // Hundreds of operations by the same few principals within a minute.
    let app = std::sync::Arc::new(TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await);
    sign_in_users(&app).await;
    let (changing, alone): (Vec<_>, Vec<_>) =
        cases(file_backups(&app)).into_iter().enumerate().partition(|(_, c)| c.changes_things());
    let mut failures = Vec::new();

    let setup = std::sync::Arc::new(arrange(&app, 0, true).await);
    let mut before = None;
    for (_, case) in &alone {
        let (found, after) = check_alone(&app, &setup, case, before).await;
        failures.extend(found);
        before = after;
    }

    // Allowed mutations touch only their own arrangement, so a few run at once.
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(4));
    let checks: Vec<_> = changing
        .into_iter()
        .map(|(number, case)| {
            let (app, slots, shared) = (app.clone(), slots.clone(), setup.clone());
            tokio::spawn(async move {
                let _slot = slots.acquire_owned().await.expect("semaphore open");
                check_on_its_own(&app, number + 1, &case, &shared).await
            })
        })
        .collect();
    for check in checks {
        failures.extend(check.await.expect("the check ran"));
    }
    assert!(failures.is_empty(), "{} mismatches:\n{}", failures.len(), failures.join("\n"));
}
