//! Reading the audit log: `auditLogs` shows admins every row and owners their teams' rows,
//! newest first, narrowed by filters; `verifyAuditLog` names the first broken link; bad input
//! is refused and changes nothing.

use crate::common;

use common::{PG_ENV, TestApp, first_code, problem_paths};
use ensemble::domain::GlobalRole;
use entity::{audit_logs, users};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder, sea_query::Expr};
use serde_json::{Value, json};

const LOGS: &str = "query($filter: AuditLogFilter, $first: Int, $after: String) {
    auditLogs(filter: $filter, first: $first, after: $after) {
        pageInfo { hasNextPage endCursor }
        nodes { seq ts actorId actorKind apiKeyId action resourceType resourceId teamId requestId ip userAgent
                result reason changes prevHash hash }
    } }";
const VERIFY: &str = "query($range: TimeRangeInput) {
    verifyAuditLog(range: $range) { ok checkedRows firstBrokenSeq problem } }";
const CREATE: &str = "mutation($n: String!) { createTeam(input: {name: $n}) { id } }";
const RENAME: &str = "mutation($id: ID!, $n: String!) { updateTeam(id: $id, input: {name: $n}) { id } }";
const PROFILE: &str = "mutation($n: String!) { updateProfile(input: {displayName: $n}) { id } }";

async fn create_team(app: &TestApp, token: &str, name: &str) -> String {
    app.must(token, CREATE, json!({"n": name})).await["createTeam"]["id"].as_str().unwrap().to_string()
}

async fn logs(app: &TestApp, token: &str, variables: Value) -> Value {
    app.gql_as(token, LOGS, variables).await.1
}

/// The rows of a successful `auditLogs` answer.
fn nodes(body: &Value) -> Vec<Value> {
    body["data"]["auditLogs"]["nodes"].as_array().unwrap_or_else(|| panic!("{body}")).clone()
}

fn field<'a>(rows: &'a [Value], name: &str) -> Vec<&'a str> {
    rows.iter().map(|r| r[name].as_str().unwrap_or("<null>")).collect()
}

fn seqs(rows: &[Value]) -> Vec<i64> {
    rows.iter().map(|r| r["seq"].as_i64().unwrap()).collect()
}

async fn stored(app: &TestApp) -> Vec<audit_logs::Model> {
    audit_logs::Entity::find().order_by_asc(audit_logs::Column::Seq).all(&app.state.db).await.unwrap()
}

/// Lets the test change `audit_logs` as someone with direct database access could.
async fn bypass_append_only(app: &TestApp) {
    let sql: &[&str] = if std::env::var(PG_ENV).is_ok() {
        &["ALTER TABLE audit_logs DISABLE TRIGGER audit_logs_no_change"]
    } else {
        &["DROP TRIGGER audit_logs_no_update", "DROP TRIGGER audit_logs_no_delete"]
    };
    for statement in sql {
        app.state.db.execute_unprepared(statement).await.unwrap();
    }
}

async fn verify(app: &TestApp, range: Value) -> Value {
    let admin = app.token("user_admin", GlobalRole::Admin);
    let (_, body) = app.gql_as(&admin, VERIFY, json!({"range": range})).await;
    body["data"]["verifyAuditLog"].clone()
}

#[tokio::test]
async fn owners_read_their_teams_rows_and_admins_read_every_row() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.token("user_alice", GlobalRole::Member), app.token("user_bob", GlobalRole::Member));
    let admin = app.token("user_admin", GlobalRole::Admin);
    let mine = create_team(&app, &alice, "Mine").await;
    app.must(&alice, RENAME, json!({"id": mine, "n": "Mine 2"})).await;
    let theirs = create_team(&app, &bob, "Theirs").await;
    app.must(&alice, PROFILE, json!({"n": "Alice"})).await;

    let own = nodes(&logs(&app, &alice, json!({})).await);
    assert_eq!(field(&own, "action"), ["team.update", "team.create"], "{own:?}");
    assert!(own.iter().all(|r| r["teamId"] == mine), "{own:?}");

    let every = nodes(&logs(&app, &admin, json!({})).await);
    let all = stored(&app).await;
    assert_eq!(seqs(&every), all.iter().rev().map(|r| r.seq).collect::<Vec<_>>(), "newest first, every row");
    let bobs = nodes(&logs(&app, &admin, json!({"filter": {"teamId": theirs}})).await);
    assert_eq!(field(&bobs, "action"), ["team.create"]);

    // Members who do not own the team, and strangers, learn nothing.
    let add = "mutation($t: ID!) { addTeamMember(teamId: $t, input: {userId: \"user_bob\", role: EDITOR}) { userId } }";
    app.must(&alice, add, json!({"t": mine})).await;
    let as_editor = logs(&app, &bob, json!({"filter": {"teamId": mine}})).await;
    assert_eq!(first_code(&as_editor), "FORBIDDEN", "{as_editor}");
    let carol = app.token("user_carol", GlobalRole::Member);
    assert_eq!(first_code(&logs(&app, &carol, json!({"filter": {"teamId": mine}})).await), "NOT_FOUND");
    assert_eq!(nodes(&logs(&app, &carol, json!({})).await), Vec::<Value>::new());
    assert_eq!(first_code(&app.gql(LOGS, json!({})).await), "UNAUTHENTICATED");
}

/// The newest rows matching `filter`, with the names beside their ids.
async fn named_rows(app: &TestApp, token: &str, filter: Value) -> Vec<Value> {
    let named = "query($filter: AuditLogFilter) { auditLogs(filter: $filter, first: 10) {
        nodes { action actorId actorName teamId teamName apiKeyId apiKeyName } } }";
    nodes(&app.gql_as(token, named, json!({"filter": filter})).await.1)
}

#[tokio::test]
async fn rows_name_their_actor_team_and_api_key_beside_the_ids() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let admin = app.token("user_admin", GlobalRole::Admin);
    app.must(&alice, PROFILE, json!({"n": "Alice Liddell"})).await;
    let team = create_team(&app, &alice, "Support desk").await;
    let key = "mutation($t: ID!) { createApiKey(input: {name: \"deploy bot\", scopes: [TEAMS_WRITE], teamId: $t}) { secret } }";
    let secret =
        app.must(&alice, key, json!({"t": team})).await["createApiKey"]["secret"].as_str().unwrap().to_string();
    app.must(&secret, RENAME, json!({"id": team, "n": "Support"})).await;
    let gone = create_team(&app, &alice, "Short-lived").await;
    app.must(&alice, "mutation($t: ID!) { deleteTeam(id: $t) { id } }", json!({"t": gone})).await;
    let names = |row: &Value| {
        [&row["action"], &row["actorName"], &row["teamName"], &row["apiKeyName"]]
            .map(|v| v.as_str().unwrap_or("<null>").to_string())
    };

    let rows = named_rows(&app, &alice, json!({"teamId": team})).await;
    let shown: Vec<[String; 4]> = rows.iter().map(names).collect();
    assert_eq!(shown[0], ["team.update", "Alice Liddell", "Support", "deploy bot"], "{rows:?}");
    assert_eq!(shown[1], ["api_key.create", "Alice Liddell", "Support", "<null>"], "{rows:?}");

    // A deleted team, and then a deleted user, keep their ids and lose their names.
    let rows = named_rows(&app, &admin, json!({"teamId": gone})).await;
    assert!(rows.iter().all(|r| r["teamId"] == gone && r["teamName"].is_null()), "{rows:?}");
    let deleted = users::Entity::update_many()
        .col_expr(users::Column::DeletedAt, Expr::value(chrono::Utc::now()))
        .filter(users::Column::Id.eq("user_alice"));
    deleted.exec(&app.state.db).await.unwrap();
    let rows = named_rows(&app, &admin, json!({"teamId": team})).await;
    assert!(rows.iter().all(|r| r["actorId"] == "user_alice" && r["actorName"].is_null()), "{rows:?}");
}

#[tokio::test]
async fn every_column_is_exposed_and_each_row_links_to_the_one_before() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let team = create_team(&app, &alice, "Keyed").await;
    let key = "mutation($t: ID!) { createApiKey(input: {name: \"ci\", scopes: [TEAMS_WRITE], teamId: $t}) { secret apiKey { id } } }";
    let made = app.must(&alice, key, json!({"t": team})).await["createApiKey"].clone();
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(made["secret"].as_str().unwrap())
        .header("x-request-id", "req-audit-api")
        .header("user-agent", "audit-client/2.0")
        .json(&json!({"query": RENAME, "variables": {"id": team, "n": "Renamed"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let body = logs(&app, &alice, json!({"filter": {"teamId": team}, "first": 2})).await;
    let rows = nodes(&body);
    let (last, before) = (&rows[0], &rows[1]);
    assert_eq!(last["seq"].as_i64().unwrap(), before["seq"].as_i64().unwrap() + 1);
    assert_eq!(
        (last["actorId"].as_str(), last["actorKind"].as_str(), last["apiKeyId"].as_str()),
        (Some("user_alice"), Some("api_key"), made["apiKey"]["id"].as_str())
    );
    assert_eq!((last["action"].as_str(), last["resourceType"].as_str()), (Some("team.update"), Some("team")));
    assert_eq!((last["resourceId"].as_str(), last["teamId"].as_str()), (Some(team.as_str()), Some(team.as_str())));
    assert_eq!(last["requestId"], "req-audit-api");
    assert_eq!(last["ip"], "127.0.0.1");
    assert_eq!(last["userAgent"], "audit-client/2.0");
    assert_eq!((last["result"].as_str(), &last["reason"]), (Some("ALLOWED"), &Value::Null));
    assert_eq!(last["changes"], json!({"name": "Renamed"}));
    assert_eq!(last["prevHash"], before["hash"]);
    assert_eq!(last["hash"].as_str().unwrap().len(), 64);
    let ts = chrono::DateTime::parse_from_rfc3339(last["ts"].as_str().unwrap()).unwrap();
    assert_eq!(ts, stored(&app).await.pop().unwrap().ts, "the row as stored");
}

#[tokio::test]
async fn filters_narrow_the_rows() {
    let app = TestApp::spawn().await;
    let (alice, bob) = (app.token("user_alice", GlobalRole::Member), app.token("user_bob", GlobalRole::Member));
    let admin = app.token("user_admin", GlobalRole::Admin);
    let a = create_team(&app, &alice, "A").await;
    app.must(&alice, RENAME, json!({"id": a, "n": "A2"})).await;
    let b = create_team(&app, &bob, "B").await;
    let (_, refused) = app.gql_as(&bob, RENAME, json!({"id": a, "n": "Mine now"})).await;
    assert_eq!(first_code(&refused), "NOT_FOUND");
    let all = stored(&app).await;
    assert_eq!(all.len(), 4, "{all:#?}");

    let query = |filter: Value| {
        let (app, admin) = (&app, &admin);
        async move { nodes(&logs(app, admin, json!({"filter": filter})).await) }
    };
    assert_eq!(field(&query(json!({"actor": "user_bob"})).await, "action"), ["team.update", "team.create"]);
    assert_eq!(field(&query(json!({"action": "team.update"})).await, "result"), ["DENIED", "ALLOWED"]);
    let denied = query(json!({"action": "team.update", "result": "DENIED"})).await;
    assert_eq!(field(&denied, "actorId"), ["user_bob"]);
    assert!(denied[0]["reason"].as_str().unwrap().contains("No such team"), "{denied:?}");
    assert_eq!(query(json!({"resourceType": "team"})).await.len(), 4);
    assert_eq!(query(json!({"resourceType": "api_key"})).await.len(), 0);
    assert_eq!(field(&query(json!({"resourceId": a})).await, "action"), ["team.update", "team.create"]);
    assert_eq!(field(&query(json!({"teamId": b})).await, "action"), ["team.create"]);
    let from = json!(all[2].ts);
    assert_eq!(seqs(&query(json!({"range": {"from": from}})).await), [all[3].seq, all[2].seq]);
    assert_eq!(seqs(&query(json!({"range": {"to": from}})).await), [all[1].seq, all[0].seq]);
    let old = json!({"from": "2020-01-01T00:00:00Z", "to": "2020-02-01T00:00:00Z"});
    assert_eq!(query(json!({"range": old})).await.len(), 0);
}

#[tokio::test]
async fn pages_run_newest_first_without_overlap() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    for name in ["A", "B", "C", "D", "E"] {
        app.must(&alice, PROFILE, json!({"n": name})).await;
    }
    let admin = app.token("user_admin", GlobalRole::Admin);
    let (mut after, mut pages) = (Value::Null, Vec::new());
    loop {
        let body = logs(&app, &admin, json!({"first": 2, "after": after})).await;
        pages.push(seqs(&nodes(&body)));
        let info = &body["data"]["auditLogs"]["pageInfo"];
        if info["hasNextPage"] != true {
            break;
        }
        after = info["endCursor"].clone();
    }
    assert_eq!(pages, [vec![5, 4], vec![3, 2], vec![1]]);
}

#[tokio::test]
async fn bad_ranges_pages_and_cursors_are_refused_and_change_nothing() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let admin = app.token("user_admin", GlobalRole::Admin);
    app.must(&alice, PROFILE, json!({"n": "A"})).await;
    let before = stored(&app).await;
    let backwards = json!({"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"});
    let too_long = json!({"from": "2024-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"});
    let cases = [
        (LOGS, json!({"filter": {"range": backwards}}), "range.from"),
        (LOGS, json!({"filter": {"range": too_long}}), "range"),
        (LOGS, json!({"first": 0}), "first"),
        (LOGS, json!({"first": 101}), "first"),
        (LOGS, json!({"after": "%%%"}), "after"),
        (LOGS, json!({"after": "bm90LWEtc2Vx"}), "after"),
        (VERIFY, json!({"range": backwards}), "range.from"),
        (VERIFY, json!({"range": too_long}), "range"),
    ];
    for (query, variables, path) in cases {
        let (_, body) = app.gql_as(&admin, query, variables.clone()).await;
        assert_eq!(first_code(&body), "BAD_USER_INPUT", "{variables}: {body}");
        assert_eq!(problem_paths(&body), [path], "{variables}: {body}");
    }
    assert_eq!(stored(&app).await, before, "nothing was written");
}

#[tokio::test]
async fn an_intact_log_verifies_and_an_edited_row_is_named_outside_ranges_that_exclude_it() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    for name in ["A", "B", "C", "D"] {
        app.must(&alice, PROFILE, json!({"n": name})).await;
    }
    let intact = json!({"ok": true, "checkedRows": 4, "firstBrokenSeq": null, "problem": null});
    assert_eq!(verify(&app, Value::Null).await, intact);

    bypass_append_only(&app).await;
    app.state.db.execute_unprepared("UPDATE audit_logs SET reason = 'edited' WHERE seq = 2").await.unwrap();
    let whole = verify(&app, Value::Null).await;
    assert_eq!((&whole["ok"], &whole["firstBrokenSeq"], &whole["checkedRows"]), (&json!(false), &json!(2), &json!(2)));
    let problem = whole["problem"].as_str().unwrap();
    assert!(problem.starts_with("row 2 was changed after it was written"), "{problem}");

    let rows = stored(&app).await;
    assert!(rows[1].ts < rows[2].ts, "distinct times arrange the ranges");
    let after_it = verify(&app, json!({"from": rows[2].ts})).await;
    assert_eq!(after_it, json!({"ok": true, "checkedRows": 2, "firstBrokenSeq": null, "problem": null}));
    let before_it = verify(&app, json!({"to": rows[1].ts})).await;
    assert_eq!(before_it, json!({"ok": true, "checkedRows": 1, "firstBrokenSeq": null, "problem": null}));
    assert_eq!(verify(&app, json!({"from": rows[1].ts})).await["firstBrokenSeq"], 2);
}

#[tokio::test]
async fn a_deleted_middle_row_is_named_by_its_missing_seq() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    for name in ["A", "B", "C"] {
        app.must(&alice, PROFILE, json!({"n": name})).await;
    }
    bypass_append_only(&app).await;
    app.state.db.execute_unprepared("DELETE FROM audit_logs WHERE seq = 2").await.unwrap();
    let result = verify(&app, Value::Null).await;
    assert_eq!((&result["ok"], &result["firstBrokenSeq"]), (&json!(false), &json!(2)), "{result}");
    assert_eq!(result["problem"], "row 2 is missing: seq jumps from 1 to 3");
}

#[tokio::test]
async fn a_deleted_last_row_is_found_through_the_chain_head() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    for name in ["A", "B", "C"] {
        app.must(&alice, PROFILE, json!({"n": name})).await;
    }
    bypass_append_only(&app).await;
    app.state.db.execute_unprepared("DELETE FROM audit_logs WHERE seq = 3").await.unwrap();
    let result = verify(&app, Value::Null).await;
    assert_eq!((&result["ok"], &result["firstBrokenSeq"]), (&json!(false), &json!(3)), "{result}");
    let problem = result["problem"].as_str().unwrap();
    assert!(problem.starts_with("row 3 is missing: the log ends at row 2"), "{problem}");
}
