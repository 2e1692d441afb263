//! The data layer: concurrent read-then-write transactions lose nothing on either database,
//! readiness insists on WAL, and foreign keys hold.

use crate::common;

use chrono::Utc;
use common::{PG_ENV, TestApp};
use ensemble::db;
use entity::{
    states::{GlobalRole, Visibility},
    teams, users,
};
use sea_orm::{ActiveModelTrait, EntityTrait, QuerySelect, Set};

async fn insert_team(app: &TestApp) -> String {
    let now = Utc::now();
    users::ActiveModel {
        id: Set("user_owner".into()),
        email: Set(Some("owner@example.com".into())),
        display_name: Set(None),
        avatar_url: Set(None),
        role: Set(GlobalRole::Member),
        created_at: Set(now),
        updated_at: Set(now),
        deleted_at: Set(None),
    }
    .insert(&app.state.db)
    .await
    .unwrap();
    team("team_1", "user_owner").insert(&app.state.db).await.unwrap();
    "team_1".into()
}

fn team(id: &str, owner_id: &str) -> teams::ActiveModel {
    let now = Utc::now();
    teams::ActiveModel {
        id: Set(id.into()),
        owner_id: Set(owner_id.into()),
        name: Set("Support".into()),
        slug: Set(id.replace('_', "-")),
        description: Set(None),
        visibility: Set(Visibility::Private),
        spec: Set(serde_json::json!({"format": "ensemble.team/v1"})),
        version: Set(1),
        created_at: Set(now),
        updated_at: Set(now),
        archived_at: Set(None),
    }
}

#[tokio::test]
async fn fifty_concurrent_read_then_write_transactions_lose_no_update() {
    if common::skipped_on_d1("D1 has no transactions; concurrency.rs runs 50 parallel updateTeam there") {
        return;
    }
    let app = TestApp::spawn().await;
    let team_id = insert_team(&app).await;
    let tasks: Vec<_> = (0..50)
        .map(|_| {
            let db = app.state.db.clone();
            let team_id = team_id.clone();
            tokio::spawn(async move {
                let txn = db::begin_write(&db).await?;
                let team = teams::Entity::find_by_id(team_id).lock_exclusive().one(&txn).await?.expect("team exists");
                let next = team.version + 1;
                let mut active: teams::ActiveModel = team.into();
                active.version = Set(next);
                active.update(&txn).await?;
                txn.commit().await
            })
        })
        .collect();
    for task in tasks {
        task.await.unwrap().expect("no transaction fails");
    }
    let team = teams::Entity::find_by_id(team_id).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(team.version, 51);
}

#[tokio::test]
async fn foreign_keys_are_enforced() {
    let app = TestApp::spawn().await;
    let orphan = team("team_orphan", "user_missing").insert(&app.state.db).await;
    assert!(orphan.is_err(), "a team whose owner does not exist is refused");
}

#[tokio::test]
async fn readiness_refuses_a_sqlite_database_not_in_wal_mode() {
    if std::env::var(PG_ENV).is_ok() {
        println!("skipped: journal modes are SQLite's");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}/plain.db?mode=rwc", dir.path().display());
    // A connection made without our options keeps SQLite's default rollback journal.
    let plain = sea_orm::Database::connect(&url).await.unwrap();
    use migration::MigratorTrait;
    migration::Migrator::up(&plain, None).await.unwrap();
    let reason = ensemble::service::system::readiness(&plain).await.unwrap_err();
    assert_eq!(reason, "SQLite journal_mode is delete, expected wal");
}
