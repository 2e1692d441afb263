//! The audit trail: a row per mutation (denied ones too), append-only on both databases, a
//! hash chain that verifies and names the first broken link, and no change without its row.

use crate::common;

use common::{PG_ENV, TestApp, first_code};
use ensemble::{domain::GlobalRole, service::audit};
use entity::audit_logs;
use sea_orm::{ConnectionTrait, EntityTrait, QueryOrder};
use serde_json::json;

const UPDATE: &str = "mutation($n: String!) { updateProfile(input: {displayName: $n}) { displayName } }";
const SET_ROLE: &str = "mutation { setUserRole(userId: \"user_a\", role: ADMIN) { id } }";

async fn rows(app: &TestApp) -> Vec<audit_logs::Model> {
    audit_logs::Entity::find().order_by_asc(audit_logs::Column::Seq).all(&app.state.db).await.unwrap()
}

fn is_postgres() -> bool {
    std::env::var(PG_ENV).is_ok()
}

#[tokio::test]
async fn every_mutation_writes_one_row_denied_ones_too() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_a", GlobalRole::Member);
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&alice)
        .header("x-request-id", "req-audit-1")
        .header("user-agent", "audit-test/1.0")
        .json(&json!({"query": UPDATE, "variables": {"n": "Alice"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (_, body) = app.gql_as(&alice, SET_ROLE, json!({})).await;
    assert_eq!(first_code(&body), "FORBIDDEN");

    let rows = rows(&app).await;
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let (allowed, denied) = (&rows[0], &rows[1]);
    assert_eq!(allowed.action, "user.profile.update");
    assert_eq!(allowed.result, "allowed");
    assert_eq!(allowed.actor_id.as_deref(), Some("user_a"));
    assert_eq!(allowed.actor_kind, "user");
    assert_eq!(allowed.request_id.as_deref(), Some("req-audit-1"));
    assert_eq!(allowed.user_agent.as_deref(), Some("audit-test/1.0"));
    assert_eq!(allowed.ip.as_deref(), Some("127.0.0.1"));
    assert_eq!(allowed.changes, Some(json!({"displayName": "Alice"})));
    assert_eq!(denied.action, "user.role.set");
    assert_eq!(denied.result, "denied");
    assert!(denied.reason.as_deref().unwrap().contains("Only an admin"));
    let text = format!("{rows:?}");
    assert!(!text.contains(&alice), "no token in the audit log");
}

#[tokio::test]
async fn audit_rows_cannot_be_updated_deleted_or_replaced() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_a", GlobalRole::Member);
    app.gql_as(&alice, UPDATE, json!({"n": "Alice"})).await;
    let db = &app.state.db;
    let mut attempts = vec![
        "UPDATE audit_logs SET action = 'forged' WHERE seq = 1".to_string(),
        "DELETE FROM audit_logs WHERE seq = 1".to_string(),
    ];
    if is_postgres() {
        attempts.push("TRUNCATE audit_logs".into());
    } else {
        attempts.push(
            "INSERT OR REPLACE INTO audit_logs (seq, ts, actor_kind, action, resource_type, result, prev_hash, hash) \
             VALUES (1, '2026-01-01T00:00:00Z', 'user', 'forged', 'user', 'allowed', 'x', 'y')"
                .into(),
        );
    }
    for sql in attempts {
        let err = db.execute_unprepared(&sql).await.expect_err(&sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    assert_eq!(rows(&app).await[0].action, "user.profile.update");
}

#[tokio::test]
async fn the_chain_verifies_and_names_the_first_broken_link() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_a", GlobalRole::Member);
    for name in ["A", "B", "C"] {
        app.gql_as(&alice, UPDATE, json!({"n": name})).await;
    }
    let rows = rows(&app).await;
    assert_eq!(rows[1].prev_hash, rows[0].hash);
    assert_eq!(rows[2].prev_hash, rows[1].hash);
    let intact = audit::Verification { rows: 3, first_broken: None, problem: None };
    assert_eq!(audit::verify(&app.state.db, None).await.unwrap(), intact);

    // Someone with database access bypasses the trigger and edits row 2.
    let db = &app.state.db;
    let bypass = if is_postgres() {
        "ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_no_change"
    } else {
        "DROP TRIGGER audit_logs_no_update"
    };
    db.execute_unprepared(bypass).await.unwrap();
    db.execute_unprepared("UPDATE audit_logs SET reason = 'edited' WHERE seq = 2").await.unwrap();
    let result = audit::verify(&app.state.db, None).await.unwrap();
    assert_eq!(result.first_broken, Some(2), "{result:?}");
}

#[tokio::test]
async fn a_change_whose_audit_row_cannot_be_written_is_rolled_back() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_a", GlobalRole::Member);
    app.gql_as(&alice, UPDATE, json!({"n": "Before"})).await;
    app.state.db.execute_unprepared("DELETE FROM audit_head").await.unwrap();
    let (_, body) = app.gql_as(&alice, UPDATE, json!({"n": "After"})).await;
    assert_eq!(first_code(&body), "INTERNAL", "{body}");
    let (_, me) = app.gql_as(&alice, "{ me { displayName } }", json!({})).await;
    assert_eq!(me["data"]["me"]["displayName"], "Before");
}
