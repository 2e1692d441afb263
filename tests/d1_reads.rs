//! Reads on Cloudflare D1 through the bridge Worker: the same entity queries answer the same
//! models on local D1 (`wrangler dev --local`, migrations from migration/sql) as on a SQLite file
//! holding the same rows; a wrong secret, a statement over D1's limits and a bridge that is down
//! are refused with messages that say so. Its own binary: the D1 secret is read from the
//! environment (`ENSEMBLE_D1_SECRET`).
//!
//! The test that needs wrangler runs when `ENSEMBLE_TEST_D1=1` and `ENSEMBLE_WRANGLER_DIR` names a
//! wrangler install (`scripts/d1-check --install-only`); `.ci/run` runs it as a step of its own.

use std::{
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, TimeZone, Utc};
use ensemble::db;
use entity::{
    audit_logs, model_prices,
    states::{GlobalRole, TemplateKind, TemplateVisibility, Visibility},
    teams, templates, users,
};
use migration::{Migrator, MigratorTrait};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, Set, Statement, TransactionTrait,
};
use serde_json::json;

#[path = "support/d1_bridge.rs"]
mod d1_bridge;

use d1_bridge::{Bridge, SECRET, free_port, secret_in_env, wrangler};

#[tokio::test]
async fn reads_on_d1_through_the_bridge_answer_what_sqlite_answers() {
    let Some(wrangler) = wrangler() else { return };
    secret_in_env();
    let bridge = Bridge::start(&wrangler);
    let d1 = db::connect(&bridge.url, None).await.expect("the bridge answers and accepts the secret");
    assert_eq!(db::backend_name(&d1), "d1");

    let dir = tempfile::tempdir().unwrap();
    let sqlite = db::connect(&format!("sqlite://{}", dir.path().join("same.db").display()), None).await.unwrap();
    Migrator::up(&sqlite, None).await.unwrap();
    for database in [&d1, &sqlite] {
        insert_rows(database).await;
    }

    // What is stored is the same text, so comparisons in SQL agree too.
    let stored = "SELECT id, created_at, typeof(created_at) AS kind, deleted_at FROM users ORDER BY id";
    assert_eq!(raw_rows(&d1, stored).await, raw_rows(&sqlite, stored).await);
    let stored = "SELECT seq, ts, changes FROM audit_logs ORDER BY seq";
    assert_eq!(raw_rows(&d1, stored).await, raw_rows(&sqlite, stored).await);

    let since = at(2026, 5, 2);
    for database in [&d1, &sqlite] {
        let users = users::Entity::find().order_by_asc(users::Column::Id).all(database).await.unwrap();
        assert_eq!(users.len(), 3);
        assert_eq!(users[2].deleted_at, Some(at(2026, 5, 3)), "a timestamp read back exactly");
    }
    assert_same!(&d1, &sqlite, |db| users::Entity::find().order_by_asc(users::Column::Id).all(db));
    assert_same!(&d1, &sqlite, |db| users::Entity::find().filter(users::Column::DeletedAt.is_null()).count(db));
    assert_same!(&d1, &sqlite, |db| users::Entity::find_by_id("user_b").one(db));
    assert_same!(&d1, &sqlite, |db| teams::Entity::find()
        .filter(teams::Column::Id.is_in(["team_1", "team_3", "team_missing"]))
        .order_by_desc(teams::Column::CreatedAt)
        .all(db));
    assert_same!(&d1, &sqlite, |db| teams::Entity::find().filter(teams::Column::ArchivedAt.is_not_null()).one(db));
    assert_same!(&d1, &sqlite, |db| audit_logs::Entity::find()
        .filter(audit_logs::Column::Ts.gte(since))
        .order_by_asc(audit_logs::Column::Seq)
        .limit(2)
        .all(db));
    assert_same!(&d1, &sqlite, |db| audit_logs::Entity::find().filter(audit_logs::Column::Ts.lt(since)).count(db));
    assert_same!(&d1, &sqlite, |db| model_prices::Entity::find().order_by_asc(model_prices::Column::Model).all(db));
    assert_same!(&d1, &sqlite, |db| templates::Entity::find().filter(templates::Column::IsStarter.eq(true)).all(db));
    assert_same!(&d1, &sqlite, |db| teams::Entity::find()
        .select_only()
        .column(teams::Column::OwnerId)
        .column_as(teams::Column::Id.count(), "n")
        .group_by(teams::Column::OwnerId)
        .order_by_asc(teams::Column::OwnerId)
        .into_tuple::<(String, i64)>()
        .all(db));

    // Positional reads follow the SELECT's order, not the names' (and keep a repeated name).
    let positional = "SELECT t.slug, u.id, t.id, u.display_name AS id FROM teams t JOIN users u ON u.id = t.owner_id \
                      WHERE t.id = 'team_1'";
    let row = d1.query_one_raw(Statement::from_string(DbBackend::Sqlite, positional)).await.unwrap().unwrap();
    let read: (String, String, String, String) = (
        row.try_get_by_index(0).unwrap(),
        row.try_get_by_index(1).unwrap(),
        row.try_get_by_index(2).unwrap(),
        row.try_get_by_index(3).unwrap(),
    );
    assert_eq!(read, ("alpha".into(), "user_a".into(), "team_1".into(), "Ada".into()));

    // D1 has no interactive transactions: beginning one is refused, not faked.
    let refused = d1.begin().await.map(drop).expect_err("no transaction on D1");
    assert!(refused.to_string().contains("D1 has no interactive transactions"), "{refused}");

    let wrong = db::d1::Secret::new("a-wrong-secret-0000000000000000000000000000".into()).unwrap();
    let refused = db::d1::connect(&bridge.url, wrong).await.expect_err("a wrong secret is refused");
    let message = refused.to_string();
    assert!(message.contains("refused the request's signature") && message.contains("ENSEMBLE_D1_SECRET"), "{message}");
    assert!(!message.contains("a-wrong-secret") && !message.contains(SECRET), "no secret in: {message}");
}

#[tokio::test]
async fn a_statement_over_d1_limits_is_refused_before_it_is_sent() {
    secret_in_env();
    let (url, requests) = stub_bridge().await;
    let db = db::connect(&url, None).await.unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 1, "the ping");

    let ids: Vec<String> = (0..101).map(|i| format!("user_{i}")).collect();
    let refused = users::Entity::find().filter(users::Column::Id.is_in(ids)).all(&db).await.unwrap_err();
    assert!(refused.to_string().contains("101 bound parameters; D1 accepts at most 100"), "{refused}");
    let long = format!("SELECT '{}'", "x".repeat(100_000));
    let refused = db.query_all_raw(Statement::from_string(DbBackend::Sqlite, long)).await.unwrap_err();
    assert!(refused.to_string().contains("bytes of SQL; D1 accepts at most 100000"), "{refused}");
    assert_eq!(requests.load(Ordering::SeqCst), 1, "neither statement reached the bridge");

    let ids: Vec<String> = (0..100).map(|i| format!("user_{i}")).collect();
    // The stub's row is no user; what matters is that the statement was sent.
    let _ = users::Entity::find().filter(users::Column::Id.is_in(ids)).all(&db).await;
    assert_eq!(requests.load(Ordering::SeqCst), 2, "100 parameters are sent");
}

#[tokio::test]
async fn a_read_d1_calls_overloaded_is_sent_again_and_a_write_is_sent_once() {
    secret_in_env();
    // The ping passes; the next two reads are refused as overloaded, then answered.
    let (url, requests) =
        stub_bridge_answering(|n| matches!(n, 2 | 3).then_some((503, "OVERLOADED")), "OVERLOADED").await;
    let db = db::connect(&url, None).await.unwrap();
    let read = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT 1")).await.unwrap();
    assert!(read.is_some(), "answered on the third attempt");
    assert_eq!(requests.load(Ordering::SeqCst), 4, "the ping and three attempts");

    // A write through /query (RETURNING) and through /batch is sent once, whatever the answer.
    let (url, requests) = stub_bridge_answering(|n| (n > 1).then_some((503, "UNAVAILABLE")), "OVERLOADED").await;
    let db = db::connect(&url, None).await.unwrap();
    let insert = "INSERT INTO users (id) VALUES ('u') RETURNING id";
    let refused = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, insert)).await.unwrap_err();
    assert!(refused.to_string().contains("D1 is unavailable (UNAVAILABLE)"), "{refused}");
    let refused = db.execute_unprepared("DELETE FROM users").await.unwrap_err();
    assert!(refused.to_string().contains("D1 is unavailable (OVERLOADED)"), "{refused}");
    assert_eq!(requests.load(Ordering::SeqCst), 3, "the ping, the insert once, the delete once");

    // A read that stays overloaded gives up after five attempts.
    let started = Instant::now();
    let refused = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT 1")).await.unwrap_err();
    assert!(refused.to_string().contains("D1 is unavailable"), "{refused}");
    assert_eq!(requests.load(Ordering::SeqCst), 8);
    assert!(started.elapsed() < Duration::from_secs(3), "short pauses: {:?}", started.elapsed());
}

#[tokio::test]
async fn a_batch_d1_answers_unavailable_is_sent_again_and_one_it_refuses_as_overloaded_is_not() {
    use ensemble::db::batch::{Batch, BatchError};
    use sea_orm::{DbErr, sea_query::Query};
    secret_in_env();
    let delete = Query::delete().from_table(users::Entity).to_owned();
    for (code, sent, pauses) in [("UNAVAILABLE", 5, Duration::from_millis(3000)), ("OVERLOADED", 1, Duration::ZERO)] {
        // The stub answers every batch with `code`.
        let (url, requests) = stub_bridge_answering(|_| None, code).await;
        let db = db::connect(&url, None).await.unwrap();
        let writer = db::writer(&url, &db, None).unwrap();
        let before = requests.load(Ordering::SeqCst);
        let started = Instant::now();
        let refused = writer.run(Batch::new(writer.backend()).write(&delete)).await.unwrap_err();
        assert!(matches!(&refused, BatchError::Other(DbErr::Conn(_))), "{code}: out of reach: {refused:?}");
        assert!(refused.to_string().contains(&format!("D1 is unavailable ({code})")), "{refused}");
        assert_eq!(requests.load(Ordering::SeqCst) - before, sent, "{code}: sends");
        let waited = started.elapsed();
        assert!(waited >= pauses && waited < pauses + Duration::from_secs(3), "{code}: 200 ms doubling: {waited:?}");
    }
}

#[tokio::test]
async fn a_bridge_that_is_down_is_reported_as_unreachable() {
    secret_in_env();
    let port = free_port();
    let url = format!("d1+http://127.0.0.1:{port}");
    let refused = db::connect(&url, None).await.unwrap_err().to_string();
    assert!(refused.contains(&format!("cannot reach the D1 bridge at {url}")), "{refused}");
    assert!(refused.to_lowercase().contains("refused"), "the cause is told: {refused}");
}

#[test]
fn a_d1_url_without_its_secret_is_refused_at_start() {
    let output = Command::new(env!("CARGO_BIN_EXE_ensemble"))
        .args(["migrate", "status"])
        .env("DATABASE_URL", "d1+https://bridge.example.dev")
        .env_remove(db::d1::SECRET_ENV)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("needs ENSEMBLE_D1_SECRET"), "{stderr}");
}

/// Runs the same read on both databases and compares the answers.
macro_rules! assert_same {
    ($d1:expr, $sqlite:expr, |$db:ident| $read:expr) => {{
        let on_d1 = {
            let $db = $d1;
            $read.await.expect("the read works on D1")
        };
        let on_sqlite = {
            let $db = $sqlite;
            $read.await.unwrap()
        };
        assert_eq!(on_d1, on_sqlite, "D1 and SQLite answer differently: {}", stringify!($read));
    }};
}
use assert_same;

fn at(year: i32, month: u32, day: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(year, month, day, 9, 30, 0).unwrap()
}

/// The same rows on either database: timestamps with microseconds, NULLs, JSON, enums, a bool,
/// whole and fractional floats. Written with sea-orm's inserts (on D1: a one-statement batch).
async fn insert_rows(db: &DatabaseConnection) {
    let micros = chrono::Duration::microseconds(123_456);
    let user = |id: &str, name: Option<&str>, deleted_at: Option<DateTime<Utc>>| users::ActiveModel {
        id: Set(id.into()),
        email: Set(name.map(|n| format!("{}@example.com", n.to_lowercase()))),
        display_name: Set(name.map(Into::into)),
        avatar_url: Set(None),
        role: Set(if id == "user_a" { GlobalRole::Admin } else { GlobalRole::Member }),
        created_at: Set(at(2026, 5, 1) + micros),
        updated_at: Set(at(2026, 5, 1)),
        deleted_at: Set(deleted_at),
    };
    let users = [
        user("user_a", Some("Ada"), None),
        user("user_b", None, None),
        user("user_c", Some("Cy"), Some(at(2026, 5, 3))),
    ];
    users::Entity::insert_many(users).exec_without_returning(db).await.unwrap();

    let team = |id: &str, slug: &str, owner: &str, day: u32, archived: bool| teams::ActiveModel {
        id: Set(id.into()),
        owner_id: Set(owner.into()),
        name: Set(slug.to_uppercase()),
        slug: Set(slug.into()),
        description: Set((day == 2).then(|| "the second".into())),
        visibility: Set(if archived { Visibility::Public } else { Visibility::Private }),
        spec: Set(json!({"agents": [{"name": slug, "temperature": 0.5}], "limits": {"timeoutMs": 1000}})),
        version: Set(day as i32),
        created_at: Set(at(2026, 5, day) + micros),
        updated_at: Set(at(2026, 5, day)),
        archived_at: Set(archived.then(|| at(2026, 5, 4))),
    };
    let teams = [
        team("team_1", "alpha", "user_a", 1, false),
        team("team_2", "beta", "user_a", 2, false),
        team("team_3", "gamma", "user_b", 3, true),
    ];
    teams::Entity::insert_many(teams).exec_without_returning(db).await.unwrap();

    for seq in 1..=4_i64 {
        let entry = audit_logs::ActiveModel {
            seq: Set(seq),
            ts: Set(at(2026, 5, seq as u32) + chrono::Duration::microseconds(seq)),
            actor_id: Set(Some("user_a".into())),
            actor_kind: Set("user".into()),
            api_key_id: Set(None),
            action: Set("team.update".into()),
            resource_type: Set("team".into()),
            resource_id: Set(Some(format!("team_{seq}"))),
            team_id: Set(None),
            request_id: Set(Some(format!("req-{seq}"))),
            ip: Set(None),
            user_agent: Set(None),
            result: Set("ok".into()),
            reason: Set(None),
            changes: Set((seq % 2 == 0).then(|| json!({"name": {"from": "a", "to": "b"}, "version": seq}))),
            prev_hash: Set(format!("{:064}", seq - 1)),
            hash: Set(format!("{seq:064}")),
        };
        audit_logs::Entity::insert(entry).exec_without_returning(db).await.unwrap();
    }

    let price = |model: &str, input: f64, window: Option<i64>| model_prices::ActiveModel {
        model: Set(model.into()),
        input_usd_per_mtok: Set(input),
        output_usd_per_mtok: Set(input * 4.0),
        context_window: Set(window),
        updated_at: Set(at(2026, 5, 1)),
    };
    let prices = [price("whole", 3.0, Some(128_000)), price("fraction", 0.15, None)];
    model_prices::Entity::insert_many(prices).exec_without_returning(db).await.unwrap();

    let template = |id: &str, starter: bool| templates::ActiveModel {
        id: Set(id.into()),
        owner_id: Set(None),
        team_id: Set(None),
        kind: Set(TemplateKind::Team),
        category_id: Set(None),
        name: Set(id.into()),
        slug: Set(id.replace('_', "-")),
        description: Set(None),
        visibility: Set(TemplateVisibility::Private),
        version: Set(1),
        is_starter: Set(starter),
        starter_digest: Set(starter.then(|| "digest".into())),
        forked_from_id: Set(None),
        forked_from_version: Set(None),
        created_at: Set(at(2026, 5, 1)),
        updated_at: Set(at(2026, 5, 1)),
    };
    let templates = [template("tpl_starter", true), template("tpl_own", false)];
    templates::Entity::insert_many(templates).exec_without_returning(db).await.unwrap();
}

/// The rows of `sql` as JSON, as stored (no field types involved).
async fn raw_rows(db: &DatabaseConnection, sql: &str) -> Vec<serde_json::Value> {
    let rows = db.query_all_raw(Statement::from_string(DbBackend::Sqlite, sql)).await.unwrap();
    rows.iter()
        .map(|row| {
            let names = row.column_names();
            let cell = |i: usize| {
                row.try_get_by_index::<Option<String>>(i)
                    .map(|s| json!(s))
                    .or_else(|_| row.try_get_by_index::<i64>(i).map(|n| json!(n)))
                    .unwrap()
            };
            json!(names.iter().enumerate().map(|(i, name)| (name.clone(), cell(i))).collect::<serde_json::Map<_, _>>())
        })
        .collect()
}

/// A stand-in for the bridge that answers every `/query` with one row and counts the requests.
async fn stub_bridge() -> (String, Arc<AtomicUsize>) {
    stub_bridge_answering(|_| None, "OVERLOADED").await
}

/// A stand-in for the bridge: `/query` number `n` (from 1, the ping) answers `refuse(n)` when it
/// is `Some((status, code))`, else one row; `/batch` answers 503 with `batch_code`. Both count in
/// the returned counter.
async fn stub_bridge_answering(
    refuse: impl Fn(usize) -> Option<(u16, &'static str)> + Clone + Send + Sync + 'static,
    batch_code: &'static str,
) -> (String, Arc<AtomicUsize>) {
    use axum::{Json, http::StatusCode, response::IntoResponse, routing::post};
    let requests = Arc::new(AtomicUsize::new(0));
    let (on_query, on_batch) = (requests.clone(), requests.clone());
    let app = axum::Router::new()
        .route(
            "/query",
            post(move || {
                let n = on_query.fetch_add(1, Ordering::SeqCst) + 1;
                let answer = match refuse(n) {
                    Some((status, code)) => (
                        StatusCode::from_u16(status).unwrap(),
                        Json(json!({"error": {"code": code, "message": format!("{code} (stub)")}})),
                    ),
                    None => (StatusCode::OK, Json(json!({"columns": ["1"], "rows": [[1]]}))),
                };
                async move { answer.into_response() }
            }),
        )
        .route(
            "/batch",
            post(move || {
                on_batch.fetch_add(1, Ordering::SeqCst);
                async move {
                    let error = json!({"error": {"code": batch_code, "message": format!("{batch_code} (stub)")}});
                    (StatusCode::SERVICE_UNAVAILABLE, Json(error)).into_response()
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("d1+http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await });
    (url, requests)
}

/// The write path on D1 (docs/write-path.md): a batch is one D1 transaction; its guards, written
/// as SQL, abort all of it and come back as the guard that failed; a refused constraint names its
/// step; `RETURNING` rows come back; a batch sent again with its key is applied once.
#[tokio::test]
async fn batches_on_d1_are_written_whole_or_not_at_all() {
    use ensemble::db::batch::{Batch, BatchError, Expect};
    use sea_orm::sea_query::{Alias, Expr, ExprTrait, Query};
    let Some(wrangler) = wrangler() else { return };
    secret_in_env();
    let bridge = Bridge::start(&wrangler);
    let d1 = db::connect(&bridge.url, None).await.unwrap();
    let writer = db::writer(&bridge.url, &d1, None).unwrap();
    d1.execute_unprepared("CREATE TABLE probes (id TEXT PRIMARY KEY, version BIGINT NOT NULL)").await.unwrap();
    let insert = |id: &str, version: i64| {
        Query::insert()
            .into_table(Alias::new("probes"))
            .columns([Alias::new("id"), Alias::new("version")])
            .values_panic([id.into(), version.into()])
            .to_owned()
    };
    let bump = |id: &str, seen: i64| {
        Query::update()
            .table(Alias::new("probes"))
            .value(Alias::new("version"), Expr::col(Alias::new("version")).add(1))
            .and_where(Expr::col(Alias::new("id")).eq(id))
            .and_where(Expr::col(Alias::new("version")).eq(seen))
            .returning(Query::returning().columns([Alias::new("id"), Alias::new("version")]))
            .to_owned()
    };
    let versions = || async {
        let rows = raw_rows(&d1, "SELECT id, version FROM probes ORDER BY id").await;
        rows.iter().map(|row| format!("{}={}", row["id"].as_str().unwrap(), row["version"])).collect::<Vec<_>>()
    };

    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();
    let held = Batch::new(writer.backend())
        .write_returning(&bump("a", 1))
        .guard(Expect::One, "probe_version")
        .write(&insert("b", 1));
    let results = writer.run(held).await.unwrap();
    assert_eq!(results.len(), 2, "one result per step, none for the guard's own statement");
    assert_eq!(results[0].rows.len(), 1, "the RETURNING row");
    assert_eq!(results[0].rows[0].try_get::<i64>("", "version").unwrap(), 2);
    assert_eq!(results[1].rows_affected, 1);
    assert_eq!(versions().await, ["a=2", "b=1"]);

    let stale =
        Batch::new(writer.backend()).write(&insert("c", 1)).write(&bump("a", 1)).guard(Expect::One, "probe_version");
    let refused = writer.run(stale).await.unwrap_err();
    assert!(matches!(refused, BatchError::Guard { index: 1, code: "probe_version" }), "{refused:?}");
    assert_eq!(versions().await, ["a=2", "b=1"], "the insert before the failed guard is rolled back");

    let duplicate = Batch::new(writer.backend()).write(&insert("d", 1)).write(&insert("a", 9));
    let refused = writer.run(duplicate).await.unwrap_err();
    assert!(matches!(refused, BatchError::Constraint { index: 1, .. }), "{refused:?}");
    assert_eq!(versions().await, ["a=2", "b=1"]);

    // The same request twice, as after a lost answer: applied once, the first outcome answered.
    let client = db::d1::Client::new(&bridge.url, db::d1::Secret::new(SECRET.into()).unwrap()).unwrap();
    let statements = [("UPDATE probes SET version = version + 1 WHERE id = 'b'", Vec::new())];
    let first = client.batch(&statements, "replayed-key").await.unwrap();
    let again = client.batch(&statements, "replayed-key").await.unwrap();
    assert!(!first.replayed && again.replayed);
    assert_eq!(again.results.unwrap()[0].meta.changes, 1);
    assert_eq!(versions().await, ["a=2", "b=2"], "applied once");
}
