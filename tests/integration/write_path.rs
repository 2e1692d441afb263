//! The batch-shaped write path (`ensemble::db::batch`, docs/write-path.md) on the suite's
//! database, SQLite, PostgreSQL or D1, through the server's own writer: a batch is written whole or not at all; a guard that does
//! not hold, a false assertion and a refused constraint each leave nothing of it; `RETURNING`
//! claims a row once among concurrent claimants; `write` reads and decides again when what it
//! decided on changed, up to its attempts, and answers CONFLICT after them; on PostgreSQL a
//! batch dropped while it runs leaves no transaction open behind it, and one opened ahead keeps
//! no one waiting and checks its guards when it runs.

use crate::common;

use std::sync::atomic::{AtomicU32, Ordering};

use common::TestApp;
use ensemble::{
    db::batch::{ATTEMPTS, Batch, BatchError, BatchWriter, Expect, OnGuard, write},
    error::AppError,
};
use futures_util::future::join_all;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, Statement,
    sea_query::{Alias, Expr, ExprTrait, Query, SelectStatement},
};
use std::sync::Arc;

const TABLE: &str = "batch_probes";

/// A server's database with a table of its own (`id`, `version`, `holder`), and its writer.
async fn probes() -> (TestApp, Arc<dyn BatchWriter>) {
    let app = TestApp::spawn().await;
    let backend = app.state.db.get_database_backend();
    let create = format!("CREATE TABLE {TABLE} (id TEXT PRIMARY KEY, version BIGINT NOT NULL, holder TEXT)");
    app.state.db.execute_raw(Statement::from_string(backend, create)).await.unwrap();
    let writer = app.state.writer.clone();
    (app, writer)
}

fn insert(id: &str, version: i64) -> sea_orm::sea_query::InsertStatement {
    Query::insert()
        .into_table(Alias::new(TABLE))
        .columns([Alias::new("id"), Alias::new("version")])
        .values_panic([id.into(), version.into()])
        .to_owned()
}

/// `UPDATE … SET version = version + 1 WHERE id = ? AND version = ?`.
fn bump(id: &str, seen: i64) -> sea_orm::sea_query::UpdateStatement {
    Query::update()
        .table(Alias::new(TABLE))
        .value(Alias::new("version"), Expr::col(Alias::new("version")).add(1))
        .and_where(Expr::col(Alias::new("id")).eq(id))
        .and_where(Expr::col(Alias::new("version")).eq(seen))
        .to_owned()
}

/// Every row as `(id, version)`, by id.
async fn rows(db: &DatabaseConnection) -> Vec<(String, i64)> {
    let sql = format!("SELECT id, version FROM {TABLE} ORDER BY id");
    let found = db.query_all_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
    found.iter().map(|row| (row.try_get_by_index(0).unwrap(), row.try_get_by_index(1).unwrap())).collect()
}

#[tokio::test]
async fn a_guard_that_holds_commits_every_step() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();

    let batch =
        Batch::new(writer.backend()).write(&bump("a", 1)).guard(Expect::One, "probe_version").write(&insert("b", 1));
    let results = writer.run(batch).await.unwrap();
    assert_eq!(results.iter().map(|r| r.rows_affected).collect::<Vec<_>>(), [1, 1]);
    assert_eq!(rows(&app.state.db).await, [("a".into(), 2), ("b".into(), 1)]);
}

#[tokio::test]
async fn a_guard_that_does_not_hold_writes_nothing_of_the_batch() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();

    // Decided on version 5; the row is at 1. The insert before the guarded update goes too.
    let stale = Batch::new(writer.backend())
        .write(&insert("b", 1))
        .write(&bump("a", 5))
        .guard(Expect::One, "probe_version")
        .write(&insert("c", 1));
    let refused = writer.run(stale).await.unwrap_err();
    assert!(matches!(refused, BatchError::Guard { index: 1, code: "probe_version" }), "{refused:?}");
    assert_eq!(rows(&app.state.db).await, [("a".into(), 1)]);
}

#[tokio::test]
async fn a_false_assertion_on_what_the_batch_left_writes_nothing() {
    let (app, writer) = probes().await;
    // After the insert, no row may be past version 10; "x" is at 11.
    let none_past_ten: SelectStatement = Query::select()
        .expr(Expr::val(1))
        .and_where(
            Expr::exists(
                Query::select()
                    .expr(Expr::val(1))
                    .from(Alias::new(TABLE))
                    .and_where(Expr::col(Alias::new("version")).gt(10))
                    .to_owned(),
            )
            .not(),
        )
        .to_owned();
    let batch = Batch::new(writer.backend()).write(&insert("x", 11)).assert(&none_past_ten, "probe_limit");
    let refused = writer.run(batch).await.unwrap_err();
    assert!(matches!(refused, BatchError::Guard { index: 1, code: "probe_limit" }), "{refused:?}");
    assert!(rows(&app.state.db).await.is_empty());

    let batch = Batch::new(writer.backend()).write(&insert("y", 3)).assert(&none_past_ten, "probe_limit");
    writer.run(batch).await.unwrap();
    assert_eq!(rows(&app.state.db).await, [("y".into(), 3)]);
}

#[tokio::test]
async fn a_refused_constraint_names_its_step_and_writes_nothing() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();

    let duplicate = Batch::new(writer.backend()).write(&insert("b", 1)).write(&insert("a", 7));
    let refused = writer.run(duplicate).await.unwrap_err();
    assert!(matches!(refused, BatchError::Constraint { index: 1, .. }), "{refused:?}");
    assert_eq!(rows(&app.state.db).await, [("a".into(), 1)]);
}

/// Ten claimants at once, each with one conditional `UPDATE … RETURNING` and a guard: one
/// holds the row, the others are refused by the guard and write nothing.
#[tokio::test]
async fn returning_claims_a_row_once_among_concurrent_claimants() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("lease", 1))).await.unwrap();

    let claim = |holder: String| {
        let writer = &writer;
        async move {
            let update = Query::update()
                .table(Alias::new(TABLE))
                .value(Alias::new("holder"), holder.clone())
                .value(Alias::new("version"), Expr::col(Alias::new("version")).add(1))
                .and_where(Expr::col(Alias::new("id")).eq("lease"))
                .and_where(Expr::col(Alias::new("holder")).is_null())
                .returning(Query::returning().columns([Alias::new("holder"), Alias::new("version")]))
                .to_owned();
            let batch = Batch::new(writer.backend()).write_returning(&update).guard(Expect::One, "lease_taken");
            writer.run(batch).await
        }
    };
    let outcomes = join_all((0..10).map(|n| claim(format!("instance-{n}")))).await;

    let won: Vec<_> = outcomes.iter().filter_map(|outcome| outcome.as_ref().ok()).collect();
    assert_eq!(won.len(), 1, "{outcomes:?}");
    let row = &won[0][0].rows[0];
    let (holder, version): (String, i64) = (row.try_get_by_index(0).unwrap(), row.try_get_by_index(1).unwrap());
    assert_eq!(version, 2);
    for lost in outcomes.iter().filter_map(|outcome| outcome.as_ref().err()) {
        assert!(matches!(lost, BatchError::Guard { index: 0, code: "lease_taken" }), "{lost:?}");
    }
    let sql = format!("SELECT holder FROM {TABLE} WHERE id = 'lease'");
    let stored = app.state.db.query_one_raw(Statement::from_string(writer.backend(), sql)).await.unwrap().unwrap();
    assert_eq!(stored.try_get_by_index::<String>(0).unwrap(), holder);
}

/// The version of row `id`.
async fn version(db: &DatabaseConnection, id: &str) -> i64 {
    let sql = format!("SELECT version FROM {TABLE} WHERE id = '{id}'");
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap().unwrap();
    row.try_get_by_index(0).unwrap()
}

/// Another writer's bump of row `id`, committed between a mutation's read and its batch.
async fn meanwhile(db: &DatabaseConnection, id: &str) {
    let sql = format!("UPDATE {TABLE} SET version = version + 1 WHERE id = '{id}'");
    db.execute_raw(Statement::from_string(db.get_database_backend(), sql)).await.unwrap();
}

/// `write` bumping row "a" from the version it reads; another writer bumps it in between on
/// the first `changed` attempts. Answers the outcome and the attempts made.
async fn bump_a(
    app: &TestApp,
    writer: &dyn BatchWriter,
    changed: u32,
    on_guard: fn(&'static str) -> OnGuard,
) -> (Result<(), AppError>, u32) {
    let attempts = AtomicU32::new(0);
    let db = &app.state.db;
    let plan = || async {
        let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
        let seen = version(db, "a").await;
        if attempt <= changed {
            meanwhile(db, "a").await;
        }
        Ok(Batch::new(writer.backend()).write(&bump("a", seen)).guard(Expect::One, "probe_version"))
    };
    let outcome = write(writer, plan, |_, code| on_guard(code)).await.map(drop);
    (outcome, attempts.load(Ordering::SeqCst))
}

#[tokio::test]
async fn a_mutation_that_met_a_change_reads_and_decides_again() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();

    let (outcome, attempts) = bump_a(&app, writer.as_ref(), 1, |_| OnGuard::Retry).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(attempts, 2);
    assert_eq!(version(&app.state.db, "a").await, 3, "the other writer's bump and ours");
}

#[tokio::test]
async fn a_change_on_every_attempt_answers_conflict_after_the_last() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();

    let (outcome, attempts) = bump_a(&app, writer.as_ref(), u32::MAX, |_| OnGuard::Retry).await;
    let err = outcome.unwrap_err();
    assert_eq!((err.code(), attempts), ("CONFLICT", ATTEMPTS), "{err}");
    assert!(err.to_string().contains("try again"), "{err}");
    assert_eq!(version(&app.state.db, "a").await, 1 + i64::from(ATTEMPTS), "only the other writer's bumps");
}

#[tokio::test]
async fn a_guard_that_stands_for_an_answer_is_answered_at_once() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();

    let answer = |code: &'static str| OnGuard::Answer(AppError::Conflict(format!("{code}: the version moved")));
    let (outcome, attempts) = bump_a(&app, writer.as_ref(), 1, answer).await;
    assert_eq!((outcome.unwrap_err().to_string(), attempts), ("probe_version: the version moved".into(), 1));
}

#[tokio::test]
async fn the_decisions_own_error_is_answered_and_nothing_is_written() {
    let (app, writer) = probes().await;
    let refused =
        write(writer.as_ref(), || async { Err(AppError::bad_input("The name is empty.")) }, |_, _| OnGuard::Retry)
            .await;
    assert_eq!(refused.unwrap_err().code(), "BAD_USER_INPUT");

    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();
    let duplicate = || async { Ok(Batch::new(writer.backend()).write(&insert("b", 1)).write(&insert("a", 2))) };
    let refused = write(writer.as_ref(), duplicate, |_, _| OnGuard::Retry).await.unwrap_err();
    assert_eq!(refused.code(), "CONFLICT", "{refused}");
    assert_eq!(rows(&app.state.db).await, [("a".into(), 1)]);
}

#[tokio::test]
async fn a_lease_has_one_holder_until_it_expires_or_is_given_up() {
    use ensemble::db::lease::{self, Claim};
    use std::time::Duration;
    let (_app, writer) = probes().await;
    let minute = Duration::from_secs(60);

    let first = lease::claim(writer.as_ref(), "probe", "instance-a", minute).await.unwrap();
    assert!(matches!(first, Claim::Held { .. }), "{first:?}");
    let refused = lease::claim(writer.as_ref(), "probe", "instance-b", minute).await.unwrap();
    let Claim::Taken { holder, .. } = refused else { panic!("{refused:?}") };
    assert_eq!(holder, "instance-a", "the refusal names the holder");
    assert!(matches!(lease::claim(writer.as_ref(), "probe", "instance-a", minute).await.unwrap(), Claim::Held { .. }));

    // A lease that has run out is free for the next claimant.
    lease::claim(writer.as_ref(), "probe", "instance-a", Duration::ZERO).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert!(matches!(lease::claim(writer.as_ref(), "probe", "instance-b", minute).await.unwrap(), Claim::Held { .. }));

    // Given up, it is free at once; given up by one who does not hold it, nothing changes.
    lease::release(writer.as_ref(), "probe", "instance-a").await.unwrap();
    assert!(matches!(lease::claim(writer.as_ref(), "probe", "instance-a", minute).await.unwrap(), Claim::Taken { .. }));
    lease::release(writer.as_ref(), "probe", "instance-b").await.unwrap();
    assert!(matches!(lease::claim(writer.as_ref(), "probe", "instance-a", minute).await.unwrap(), Claim::Held { .. }));
}

#[tokio::test]
async fn of_many_instances_claiming_a_lease_at_once_one_holds_it() {
    use ensemble::db::lease::{self, Claim};
    let (_app, writer) = probes().await;
    let claims = (0..20).map(|n| {
        let writer = writer.as_ref();
        async move { lease::claim(writer, "probe", &format!("instance-{n}"), std::time::Duration::from_secs(60)).await }
    });
    let claims = join_all(claims).await;
    let held = claims.iter().filter(|claim| matches!(claim, Ok(Claim::Held { .. }))).count();
    assert_eq!(held, 1, "{claims:?}");
}

#[tokio::test]
async fn a_chain_that_lost_its_lease_writes_nothing_more() {
    use ensemble::{
        db::lease,
        domain::Caller,
        service::audit::{AuditChain, Audited, Entry},
    };
    use sea_orm::{EntityTrait, PaginatorTrait};
    let (app, writer) = probes().await;
    let minute = std::time::Duration::from_secs(60);
    // The audit lease held by "server-a" (on D1 the server holds it already: it is handed over).
    let hand_over = |holder: &str| {
        Query::update()
            .table(Alias::new("leases"))
            .value(Alias::new("holder"), holder)
            .and_where(Expr::col(Alias::new("name")).eq(lease::AUDIT))
            .to_owned()
    };
    if let lease::Claim::Taken { .. } = lease::claim(writer.as_ref(), lease::AUDIT, "server-a", minute).await.unwrap() {
        writer.run(Batch::new(writer.backend()).write(&hand_over("server-a"))).await.unwrap();
    }
    let chain = AuditChain::new(app.state.db.clone(), writer.clone());
    chain.require_lease("server-a");
    let change = |id: &'static str| {
        let chain = &chain;
        move || async move {
            let batch = Batch::new(chain.writer().backend()).write(&insert(id, 1));
            Ok(Audited { batch, entry: Entry::new("probe.insert", "probe", id.to_string()), answer: () })
        }
    };
    chain.write(&Caller::default(), change("a"), |_, _| OnGuard::Retry).await.unwrap();

    // Another server took the lease (this one's expired): this chain may not write any more.
    writer.run(Batch::new(writer.backend()).write(&hand_over("server-b"))).await.unwrap();
    let refused = chain.write(&Caller::default(), change("b"), |_, _| OnGuard::Retry).await.unwrap_err();
    assert!(matches!(&refused, AppError::Internal(cause) if cause.contains("audit lease")), "{refused:?}");
    assert_eq!(rows(&app.state.db).await, [("a".into(), 1)], "nothing of the refused change");
    let audit_rows = entity::audit_logs::Entity::find().count(&app.state.db).await.unwrap();
    assert_eq!(audit_rows, 1, "no audit row for it either");
}

/// On PostgreSQL a batch's transaction stays open across its round trips: a batch dropped while
/// it runs (its request went away) must leave no transaction open on a pooled connection, where
/// it would hold its row locks and could be committed by the next batch.
#[tokio::test]
async fn a_batch_dropped_while_it_runs_leaves_no_transaction_behind() {
    let (app, writer) = probes().await;
    if writer.backend() != sea_orm::DbBackend::Postgres {
        println!("skipped: only PostgreSQL keeps a transaction open across round trips");
        return;
    }
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();
    let sleep = Query::select().expr(Expr::cust("pg_sleep(1)")).to_owned();
    let held = Batch::new(writer.backend()).write(&bump("a", 1)).read(&sleep);
    let dropped = tokio::time::timeout(std::time::Duration::from_millis(200), writer.run(held)).await;
    assert!(dropped.is_err(), "dropped while PostgreSQL sleeps, after its update");

    for n in 0..20 {
        writer.run(Batch::new(writer.backend()).write(&insert(&format!("n{n:02}"), 1))).await.unwrap();
    }
    assert_eq!(rows(&app.state.db).await[0], ("a".into(), 1), "the dropped batch's update was not committed");
    let other = ensemble::db::connect(&app.state.config.database_url, Some(1)).await.unwrap();
    let update = format!("SET lock_timeout = '5s'; UPDATE {TABLE} SET version = 100 WHERE id = 'a'");
    other.execute_unprepared(&update).await.expect("the row is not locked by a transaction left open");
    assert_eq!(rows(&app.state.db).await[0], ("a".into(), 100));
}

/// The audit chain opens a batch's transaction before its turn comes (docs/write-path.md, "The
/// audit chain"). Opened, it keeps no other writer waiting, and its guards are checked against
/// what committed while it waited; dropped unused, it leaves nothing open behind it. SQLite's
/// writer opens nothing ahead: its `BEGIN IMMEDIATE` is the database's one write lock.
#[tokio::test]
async fn a_batch_opened_ahead_keeps_no_one_waiting_and_checks_its_guards_when_it_runs() {
    let (app, writer) = probes().await;
    writer.run(Batch::new(writer.backend()).write(&insert("a", 1))).await.unwrap();
    let Some(opened) = writer.open().await.unwrap() else {
        assert_ne!(writer.backend(), sea_orm::DbBackend::Postgres, "PostgreSQL opens a batch ahead");
        println!("skipped: only PostgreSQL opens a batch ahead");
        return;
    };

    let meanwhile = Batch::new(writer.backend()).write(&bump("a", 1)).guard(Expect::One, "probe_version");
    let committed = tokio::time::timeout(std::time::Duration::from_secs(5), writer.run(meanwhile)).await;
    committed.expect("another writer is not kept waiting").unwrap();

    let decided_before =
        Batch::new(writer.backend()).write(&insert("b", 1)).write(&bump("a", 1)).guard(Expect::One, "probe_version");
    let refused = opened.run(decided_before).await.unwrap_err();
    assert!(matches!(refused, BatchError::Guard { index: 1, code: "probe_version" }), "{refused:?}");
    assert_eq!(rows(&app.state.db).await, [("a".into(), 2)]);

    drop(writer.open().await.unwrap());
    let bumped = Batch::new(writer.backend()).write(&bump("a", 2)).guard(Expect::One, "probe_version");
    let opened = writer.open().await.unwrap().expect("one is open again once the last was dropped");
    opened.run(bumped).await.unwrap();
    assert_eq!(rows(&app.state.db).await, [("a".into(), 3)]);
}
