//! Health, readiness, metrics, and the first slice (`serverInfo`) on each database.

use crate::common;

use common::{PG_ENV, TestApp};
use migration::{Migrator, MigratorTrait};
use serde_json::{Value, json};

#[tokio::test]
async fn healthz_answers_ok() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "ok");
}

#[tokio::test]
async fn readyz_is_ready_on_a_migrated_database() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn readyz_is_503_while_a_migration_is_pending() {
    let app = TestApp::spawn().await;
    if common::on_d1() {
        // On D1 the migrations are wrangler's: one that d1_migrations does not list is pending.
        let forget = "DELETE FROM d1_migrations WHERE id = (SELECT MAX(id) FROM d1_migrations)";
        sea_orm::ConnectionTrait::execute_unprepared(&app.state.db, forget).await.unwrap();
    } else {
        Migrator::down(&app.state.db, Some(1)).await.unwrap();
    }
    let response = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert!(body["reason"].as_str().unwrap().contains("1 migration(s) pending"), "{body}");
}

#[tokio::test]
async fn sqlite_runs_in_wal_mode_with_foreign_keys() {
    if common::skipped_on_d1("D1 sets its own pragmas") {
        return;
    }
    let app = TestApp::spawn().await;
    if std::env::var(PG_ENV).is_ok() {
        println!("skipped: SQLite pragmas do not apply to the PostgreSQL run");
        return;
    }
    assert_eq!(ensemble::db::sqlite_journal_mode(&app.state.db).await.unwrap().as_deref(), Some("wal"));
    use sea_orm::{ConnectionTrait, Statement};
    let row = app
        .state
        .db
        .query_one_raw(Statement::from_string(sea_orm::DbBackend::Sqlite, "PRAGMA foreign_keys"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<i32>(0).unwrap(), 1);
}

#[tokio::test]
async fn server_info_reports_version_database_migrations_and_limits() {
    let app = TestApp::spawn_with(|c| c.limits.aliases = 12).await;
    let body = app
        .gql(
            "{ serverInfo { version database migrationsApplied migrationsPending latestMigration
               limits { depth complexity recursion aliases directivesPerField maxPageSize bodyBytes batch } } }",
            json!({}),
        )
        .await;
    let info = &body["data"]["serverInfo"];
    let expected_backend = if common::on_d1() {
        "d1"
    } else if std::env::var(PG_ENV).is_ok() {
        "postgres"
    } else {
        "sqlite"
    };
    assert_eq!(info["database"], expected_backend);
    assert_eq!(info["migrationsApplied"], Migrator::migrations().len());
    assert_eq!(info["migrationsPending"], 0);
    let newest = Migrator::migrations().last().map(|m| m.name().to_string());
    assert_eq!(info["latestMigration"].as_str(), newest.as_deref());
    assert_eq!(
        info["limits"],
        json!({"depth": 10, "complexity": 5000, "recursion": 32, "aliases": 12, "directivesPerField": 5,
               "maxPageSize": 100, "bodyBytes": 1048576, "batch": 0})
    );
}

#[tokio::test]
async fn the_postgres_run_uses_postgres() {
    let Ok(url) = std::env::var(PG_ENV) else {
        println!("skipped: set {PG_ENV}=postgres://… to run the suite on PostgreSQL");
        return;
    };
    assert!(url.starts_with("postgres"), "{PG_ENV} must be a postgres:// URL");
    let app = TestApp::spawn().await;
    assert_eq!(ensemble::db::backend_name(&app.state.db), "postgres");
}

#[tokio::test]
async fn metrics_count_requests_operations_and_pool_use() {
    let app = TestApp::spawn().await;
    app.client
        .post(app.url("/graphql"))
        .json(&json!({"query": "query Info { serverInfo { version } }", "operationName": "Info"}))
        .send()
        .await
        .unwrap();
    app.gql("{ serverInfo { nope } }", json!({})).await;
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(text.contains("ensemble_graphql_operations_total{operation=\"Info\",outcome=\"ok\"} 1"), "{text}");
    assert!(text.contains("ensemble_http_requests_total{method=\"POST\",status=\"200\"} 2"), "{text}");
    assert!(text.contains("ensemble_http_request_duration_seconds_count 2"), "{text}");
    assert!(text.contains("ensemble_db_pool_connections{state=\"open\"}"), "{text}");
}

#[tokio::test]
async fn a_request_that_outlives_the_timeout_is_answered_504_in_the_graphql_error_shape() {
    if common::skipped_on_d1("it holds the only pooled connection; D1's bridge has no pool to hold") {
        return;
    }
    let app = TestApp::spawn_with(|c| {
        c.request_timeout_secs = 1;
        c.db_pool_size = Some(1);
    })
    .await;
    // Holding the only pooled connection makes the next query wait for it.
    use sea_orm::TransactionTrait;
    let held = app.state.db.begin().await.unwrap();
    let response = app.post_body("application/json", r#"{"query": "{ serverInfo { version } }"}"#).await;
    assert_eq!(response.status(), 504);
    assert!(response.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "REQUEST_TIMEOUT", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("The request took longer than 1 s, the server's limit"), "{body}");
    held.rollback().await.unwrap();
    let (status, body) = app.post_json(&json!({"query": "{ serverInfo { version } }"})).await;
    assert_eq!(status, 200, "the server recovers: {body}");
}
