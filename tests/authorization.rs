//! The authorization matrix: every operation in `tests/data/authorization.json` run by every
//! principal, against the outcome the file expects. A refused operation changes nothing in the
//! database but the audit log, where a refused mutation leaves one `denied` row.

mod common;

use common::TestApp;
use ensemble::auth::GlobalRole;
use entity::{audit_logs, team_members, teams, users};
use sea_orm::{EntityTrait, PaginatorTrait, QueryOrder};
use serde_json::{Value, json};

/// The team and its members, as every case starts.
async fn arrange(app: &TestApp) -> String {
    let roles = [
        ("user_editor", "EDITOR"),
        ("user_operator", "OPERATOR"),
        ("user_viewer", "VIEWER"),
        ("user_target", "VIEWER"),
    ];
    for user in [
        "user_owner",
        "user_editor",
        "user_operator",
        "user_viewer",
        "user_target",
        "user_stranger",
        "user_newbie",
        "user_admin",
    ] {
        let role = if user == "user_admin" {
            GlobalRole::Admin
        } else {
            GlobalRole::Member
        };
        app.gql_as(&app.token(user, role), "{ me { id } }", json!({}))
            .await;
    }
    let owner = app.token("user_owner", GlobalRole::Member);
    let (_, body) = app
        .gql_as(
            &owner,
            "mutation { createTeam(input: {name: \"Support\"}) { id } }",
            json!({}),
        )
        .await;
    let team = body["data"]["createTeam"]["id"]
        .as_str()
        .expect("team created")
        .to_string();
    let add = "mutation($team: ID!, $user: ID!, $role: TeamRole!) { addTeamMember(teamId: $team, input: {userId: $user, role: $role}) { userId } }";
    for (user, role) in roles {
        let (_, body) = app
            .gql_as(
                &owner,
                add,
                json!({"team": team, "user": user, "role": role}),
            )
            .await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    team
}

/// Everything but the audit log, in a stable order.
async fn snapshot(app: &TestApp) -> Value {
    let db = &app.state.db;
    json!({
        "users": format!("{:?}", users::Entity::find().order_by_asc(users::Column::Id).all(db).await.unwrap()),
        "teams": format!("{:?}", teams::Entity::find().order_by_asc(teams::Column::Id).all(db).await.unwrap()),
        "members": format!("{:?}", team_members::Entity::find()
            .order_by_asc(team_members::Column::TeamId).order_by_asc(team_members::Column::UserId).all(db).await.unwrap()),
    })
}

/// Runs `query` as `principal`; returns "ok" or the code of the first error.
async fn outcome(app: &TestApp, principal: &str, query: &str, team: &str) -> (String, Value) {
    let variables = json!({"team": team, "target": "user_target"});
    let body = match principal {
        "anonymous" => app.gql(query, variables).await,
        who => {
            let role = if who == "admin" {
                GlobalRole::Admin
            } else {
                GlobalRole::Member
            };
            app.gql_as(&app.token(&format!("user_{who}"), role), query, variables)
                .await
                .1
        }
    };
    let outcome = match body["errors"][0]["extensions"]["code"].as_str() {
        Some(code) => code.to_string(),
        None if body.get("errors").is_none() => "ok".to_string(),
        None => format!("error without code: {body}"),
    };
    (outcome, body)
}

/// One operation for every principal: refusals on one server (they must change nothing), each
/// allowed mutation on a server of its own.
async fn check(operation: Value, principals: Vec<String>) -> Vec<String> {
    let name = operation["name"].as_str().unwrap().to_string();
    let query = operation["query"].as_str().unwrap();
    let is_mutation = query.trim_start().starts_with("mutation");
    let expected = |p: &str| {
        operation["expect"][p]
            .as_str()
            .unwrap_or_else(|| panic!("{name} lacks {p}"))
            .to_string()
    };
    let mut failures = Vec::new();
    let shared = TestApp::spawn().await;
    let team = arrange(&shared).await;
    for principal in &principals {
        let expected = expected(principal);
        let fresh = if is_mutation && expected == "ok" {
            Some(TestApp::spawn().await)
        } else {
            None
        };
        let app = fresh.as_ref().unwrap_or(&shared);
        let team = if fresh.is_some() {
            arrange(app).await
        } else {
            team.clone()
        };
        let before = snapshot(app).await;
        let audited = audit_logs::Entity::find()
            .count(&app.state.db)
            .await
            .unwrap();
        let (got, body) = outcome(app, principal, query, &team).await;
        if got != expected {
            failures.push(format!(
                "{name} as {principal}: expected {expected}, got {got} ({body})"
            ));
        } else if expected != "ok" {
            if snapshot(app).await != before {
                failures.push(format!(
                    "{name} as {principal}: refused, yet the database changed"
                ));
            }
            let rows = audit_logs::Entity::find()
                .count(&app.state.db)
                .await
                .unwrap();
            let wanted = audited + u64::from(is_mutation);
            if rows != wanted {
                failures.push(format!(
                    "{name} as {principal}: {rows} audit rows, expected {wanted}"
                ));
            }
        }
    }
    failures
}

#[tokio::test]
async fn every_operation_answers_every_principal_as_the_matrix_says() {
    let matrix: Value =
        serde_json::from_str(include_str!("data/authorization.json")).expect("the matrix is JSON");
    let principals: Vec<String> = matrix["principals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    let checks = matrix["operations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|op| tokio::spawn(check(op.clone(), principals.clone())));
    let mut failures = Vec::new();
    for check in checks.collect::<Vec<_>>() {
        failures.extend(check.await.expect("the check ran"));
    }
    assert!(
        failures.is_empty(),
        "{} mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
