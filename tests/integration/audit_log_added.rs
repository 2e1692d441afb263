//! The live audit log over `graphql-transport-ws`: a team's owner sees each new row of the team
//! once its change has committed, in order, never a rolled-back one; others are refused.

use crate::common;

use std::time::Duration;

use common::{TestApp, WsClient, live};
use ensemble::{
    db,
    domain::{Caller, GlobalRole},
    service::audit::{self, Entry},
};
use serde_json::{Value, json};

const FOLLOW: &str = "subscription($t: ID!) { auditLogAdded(teamId: $t) { seq action teamId changes } }";
const CREATE: &str = "mutation($n: String!) { createTeam(input: {name: $n}) { id } }";
const RENAME: &str = "mutation($id: ID!, $n: String!) { updateTeam(id: $id, input: {name: $n}) { id } }";

async fn create_team(app: &TestApp, token: &str, name: &str) -> String {
    app.must(token, CREATE, json!({"n": name})).await["createTeam"]["id"].as_str().unwrap().to_string()
}

/// Signs in over a websocket and subscribes to `team`'s audit rows as subscription "1".
async fn follow(app: &TestApp, token: &str, team: &str) -> WsClient {
    let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"token": token}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let payload = json!({"query": FOLLOW, "variables": {"t": team}});
    ws.send(json!({"type": "subscribe", "id": "1", "payload": payload})).await;
    ws
}

/// `follow`, then waits until the subscription is live: `owner` changes the team until the
/// change's row arrives (the rows before it are read).
async fn following(app: &TestApp, token: &str, team: &str, owner: &str) -> WsClient {
    let mut ws = follow(app, token, team).await;
    live::audit_rows_live(app, owner, team, &mut [(&mut ws, "1")]).await;
    ws
}

/// The next row pushed.
async fn next_row(ws: &mut WsClient) -> Value {
    let message = ws.next_json().await;
    assert_eq!(message["type"], "next", "{message}");
    message["payload"]["data"]["auditLogAdded"].clone()
}

#[tokio::test]
async fn an_owner_sees_each_new_row_of_the_team_in_order() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let team = create_team(&app, &alice, "Followed").await;
    let other = create_team(&app, &alice, "Other").await;
    let mut ws = following(&app, &alice, &team, &alice).await;

    app.must(&alice, RENAME, json!({"id": team, "n": "One"})).await;
    app.must(&alice, RENAME, json!({"id": other, "n": "Elsewhere"})).await;
    app.must(&alice, RENAME, json!({"id": team, "n": "Two"})).await;
    let (first, second) = (next_row(&mut ws).await, next_row(&mut ws).await);
    assert_eq!((first["action"].as_str(), first["teamId"].as_str()), (Some("team.update"), Some(team.as_str())));
    assert_eq!((first["changes"].clone(), second["changes"].clone()), (json!({"name": "One"}), json!({"name": "Two"})));
    assert_eq!(second["seq"].as_i64().unwrap(), first["seq"].as_i64().unwrap() + 2, "the other team's row between");
}

/// Appends a row for `team` in a transaction of its own, left open for the test to end, as
/// another writer of the same database would.
async fn append(app: &TestApp, team: &str, name: &str) -> sea_orm::DatabaseTransaction {
    use entity::{audit_head, audit_logs};
    use sea_orm::{EntityTrait, Set};
    let txn = db::begin_write(&app.state.db).await.unwrap();
    let head = audit_head::Entity::find_by_id(1).one(&txn).await.unwrap().expect("the chain's head");
    let entry = Entry::new("team.update", "team", team.to_string()).team(team).changes(json!({"name": name}));
    let row = audit::link(&head, &Caller::default(), &entry, "allowed", None);
    let next = audit_head::ActiveModel { id: Set(1), seq: Set(row.seq), hash: Set(row.hash.clone()) };
    audit_logs::Entity::insert(audit_logs::ActiveModel::from(row)).exec_without_returning(&txn).await.unwrap();
    audit_head::Entity::update(next).exec(&txn).await.unwrap();
    txn
}

#[tokio::test]
async fn a_rolled_back_row_is_never_pushed_and_rows_written_outside_graphql_still_arrive() {
    if common::skipped_on_d1("the row it rolls back is written in an interactive transaction, which D1 has not") {
        return;
    }
    // Nothing else runs SQL in the background: the follower's reads are the statements counted.
    let app = TestApp::spawn_quiet().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let team = create_team(&app, &alice, "Followed").await;
    let mut ws = following(&app, &alice, &team, &alice).await;

    // Open across a wake-up and a poll, then rolled back.
    let never = append(&app, &team, "Never").await;
    let before = app.statements_run();
    app.state.bus.audit_written();
    let read_twice = || async { app.statements_run() >= before + 2 };
    common::eventually(Duration::from_secs(5), "the follower read on its wake-up and its poll", read_twice).await;
    never.rollback().await.unwrap();
    // Committed with no wake-up: the once-a-second read finds it.
    append(&app, &team, "Quiet").await.commit().await.unwrap();
    assert_eq!(next_row(&mut ws).await["changes"], json!({"name": "Quiet"}));

    app.must(&alice, RENAME, json!({"id": team, "n": "Real"})).await;
    assert_eq!(next_row(&mut ws).await["changes"], json!({"name": "Real"}));
}

#[tokio::test]
async fn only_the_teams_owners_and_admins_may_follow_it() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let team = create_team(&app, &alice, "Private").await;
    let add = "mutation($t: ID!) { addTeamMember(teamId: $t, input: {userId: \"user_bob\", role: EDITOR}) { userId } }";
    app.must(&app.token("user_bob", GlobalRole::Member), "{ me { id } }", json!({})).await;
    app.must(&alice, add, json!({"t": team})).await;
    for (user, code) in [("user_stranger", "NOT_FOUND"), ("user_bob", "FORBIDDEN")] {
        let mut ws = follow(&app, &app.token(user, GlobalRole::Member), &team).await;
        let message = ws.next_json().await;
        let errors = if message["type"] == "error" { &message["payload"] } else { &message["payload"]["errors"] };
        assert_eq!(errors[0]["extensions"]["code"], code, "{user}: {message}");
    }

    let mut ws = following(&app, &app.token("user_admin", GlobalRole::Admin), &team, &alice).await;
    app.must(&alice, RENAME, json!({"id": team, "n": "Watched"})).await;
    assert_eq!(next_row(&mut ws).await["changes"], json!({"name": "Watched"}));
}
