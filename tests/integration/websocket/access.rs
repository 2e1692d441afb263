//! Subscriptions keep to their caller's access: a membership removed or downgraded, a team
//! deleted or made private, a global role taken back, an API key revoked or an account deleted
//! ends what it took away before the change is answered, and nothing of it is sent afterwards.
//! Others on the same shared stream keep it.

use ensemble::domain::GlobalRole;
use serde_json::{Value, json};

use super::{
    LEGACY, TRANSPORT, add_member, audit_rows_live, create_team, create_team_with, events_until_end, live_activity,
    no_more_for, run, signed_in, signed_in_users, start,
};
use crate::common::{TestApp, first_code};

const REMOVE: &str = "mutation($t: ID!, $u: ID!) { removeTeamMember(teamId: $t, userId: $u) { userId } }";
const SET_ROLE: &str = "mutation($t: ID!, $u: ID!, $r: TeamRole!) { updateTeamMember(teamId: $t, input: {userId: $u, role: $r}) { role } }";

/// The `error` message that ended operation `id`: its first error.
fn ended_with_error(message: &Value, id: &str) -> Value {
    assert_eq!((message["type"].as_str(), message["id"].as_str()), (Some("error"), Some(id)), "{message}");
    let error = message["payload"][0].clone();
    assert!(error.get("locations").is_none(), "no location of line 0: {message}");
    error
}

#[tokio::test]
async fn a_member_removed_from_a_team_loses_its_activity_and_the_others_keep_theirs() {
    let app = TestApp::spawn().await;
    let [alice, bob, carol] = signed_in_users(&app, ["user_alice", "user_bob", "user_carol"]).await;
    let team = create_team(&app, &alice).await;
    add_member(&app, &alice, &team, "user_bob", "VIEWER").await;
    add_member(&app, &alice, &team, "user_carol", "VIEWER").await;
    let mut bob_ws = signed_in(&app, TRANSPORT, &bob).await;
    let mut carol_ws = signed_in(&app, TRANSPORT, &carol).await;
    // The same document and variables: the two share one stream.
    live_activity(&app, TRANSPORT, &mut [&mut bob_ws, &mut carol_ws], "a", &team, &alice).await;

    app.gql_as(&alice, REMOVE, json!({"t": team, "u": "user_bob"})).await;
    // Answered: bob's subscription has ended already.
    let error = ended_with_error(&bob_ws.next_json().await, "a");
    assert_eq!(error["extensions"]["code"], "NOT_FOUND", "{error}");
    let (_, answer) = app.gql_as(&bob, "query($t: ID!) { team(id: $t) { id } }", json!({"t": team})).await;
    assert_eq!(first_code(&answer), "NOT_FOUND", "as team(id) says: {answer}");

    let after = run(&app, &alice, &team, "after bob left").await;
    let events = events_until_end(&mut carol_ws, "a", &after).await;
    assert!(events.iter().any(|e| e["kind"] == "DELTA"), "carol still gets the streamed output: {events:?}");
    no_more_for(&mut bob_ws, TRANSPORT).await;
}

#[tokio::test]
async fn a_member_removed_while_a_run_waits_on_its_model_gets_none_of_its_streamed_output() {
    let app = TestApp::spawn().await;
    let [alice, bob, carol] = signed_in_users(&app, ["user_alice", "user_bob", "user_carol"]).await;
    let spec = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "quick", "model": "local/echo"}, {"name": "sloth", "model": "local/slow-1500"}],
        "routing": {"rules": [{"name": "slow", "when": {"contains": "slowly"}, "routeTo": "sloth"}], "default": "quick"}
    });
    let team = create_team_with(&app, &alice, spec).await;
    add_member(&app, &alice, &team, "user_bob", "VIEWER").await;
    add_member(&app, &alice, &team, "user_carol", "VIEWER").await;
    let mut bob_ws = signed_in(&app, TRANSPORT, &bob).await;
    let mut carol_ws = signed_in(&app, TRANSPORT, &carol).await;
    live_activity(&app, TRANSPORT, &mut [&mut bob_ws, &mut carol_ws], "a", &team, &alice).await;

    let start_run =
        "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"answer slowly\"}, wait: false) { id } }";
    let (_, started) = app.gql_as(&alice, start_run, json!({"t": team})).await;
    let slow = started["data"]["runTeam"].clone();
    // The model is called: its answer streams in 1.5 s.
    loop {
        let message = bob_ws.next_json().await;
        assert_eq!(message["payload"]["data"]["teamActivity"]["runId"], slow["id"], "{message}");
        if message["payload"]["data"]["teamActivity"]["kind"] == "ATTEMPT_STARTED" {
            break;
        }
    }
    app.gql_as(&alice, REMOVE, json!({"t": team, "u": "user_bob"})).await;
    assert_eq!(ended_with_error(&bob_ws.next_json().await, "a")["extensions"]["code"], "NOT_FOUND");

    let events = events_until_end(&mut carol_ws, "a", &slow).await;
    assert!(events.iter().any(|e| e["kind"] == "DELTA"), "carol gets the streamed output: {events:?}");
    no_more_for(&mut bob_ws, TRANSPORT).await;
}

#[tokio::test]
async fn a_member_who_leaves_over_the_same_socket_loses_the_subscription_there() {
    let app = TestApp::spawn().await;
    let [alice, bob] = signed_in_users(&app, ["user_alice", "user_bob"]).await;
    let team = create_team(&app, &alice).await;
    add_member(&app, &alice, &team, "user_bob", "VIEWER").await;
    let mut bob_ws = signed_in(&app, TRANSPORT, &bob).await;
    live_activity(&app, TRANSPORT, &mut [&mut bob_ws], "a", &team, &alice).await;

    bob_ws.send(start(TRANSPORT, "leave", REMOVE, json!({"t": team, "u": "user_bob"}))).await;
    let error = ended_with_error(&bob_ws.next_json().await, "a");
    assert_eq!(error["extensions"]["code"], "NOT_FOUND", "ended before the mutation answered: {error}");
    let left = bob_ws.next_json().await;
    assert_eq!(left["payload"]["data"]["removeTeamMember"]["userId"], "user_bob", "{left}");
    assert_eq!(bob_ws.next_json().await, json!({"type": "complete", "id": "leave"}));
}

#[tokio::test]
async fn a_removed_owner_stops_receiving_audit_rows() {
    let app = TestApp::spawn().await;
    let [alice, bob] = signed_in_users(&app, ["user_alice", "user_bob"]).await;
    let team = create_team(&app, &alice).await;
    add_member(&app, &alice, &team, "user_bob", "OWNER").await;
    let mut bob_ws = signed_in(&app, TRANSPORT, &bob).await;
    let mut alice_ws = signed_in(&app, TRANSPORT, &alice).await;
    audit_rows_live(&app, &mut [&mut bob_ws, &mut alice_ws], &team, &alice).await;

    app.gql_as(&alice, REMOVE, json!({"t": team, "u": "user_bob"})).await;
    // The removal's own row may come first (it committed with the change); nothing after it.
    let mut message = bob_ws.next_json().await;
    if message["type"] == "next" {
        assert_eq!(message["payload"]["data"]["auditLogAdded"]["action"], "team.member.remove", "{message}");
        message = bob_ws.next_json().await;
    }
    assert_eq!(ended_with_error(&message, "audit")["extensions"]["code"], "NOT_FOUND");

    let rename = "mutation($t: ID!) { updateTeam(id: $t, input: {description: \"after\"}) { id } }";
    app.gql_as(&alice, rename, json!({"t": team})).await;
    loop {
        let row = alice_ws.next_json().await;
        if row["payload"]["data"]["auditLogAdded"]["action"] == "team.update" {
            break;
        }
    }
    no_more_for(&mut bob_ws, TRANSPORT).await;
}

#[tokio::test]
async fn an_owner_made_viewer_loses_audit_rows_with_forbidden_and_keeps_activity() {
    let app = TestApp::spawn().await;
    let [alice, bob] = signed_in_users(&app, ["user_alice", "user_bob"]).await;
    let team = create_team(&app, &alice).await;
    add_member(&app, &alice, &team, "user_bob", "OWNER").await;
    let mut bob_ws = signed_in(&app, TRANSPORT, &bob).await;
    audit_rows_live(&app, &mut [&mut bob_ws], &team, &alice).await;
    live_activity(&app, TRANSPORT, &mut [&mut bob_ws], "a", &team, &alice).await;

    app.gql_as(&alice, SET_ROLE, json!({"t": team, "u": "user_bob", "r": "VIEWER"})).await;
    let mut message = bob_ws.next_json().await;
    while message["type"] == "next" && message["id"] == "audit" {
        message = bob_ws.next_json().await;
    }
    let error = ended_with_error(&message, "audit");
    assert_eq!(error["extensions"]["code"], "FORBIDDEN", "{error}");
    assert!(error["message"].as_str().unwrap().contains("owner"), "says what is needed: {error}");

    let after = run(&app, &alice, &team, "bob still watches").await;
    let events = events_until_end(&mut bob_ws, "a", &after).await;
    assert_eq!(events.last().unwrap()["kind"], "COMPLETED", "a viewer keeps the team's activity");
}

#[tokio::test]
async fn deleting_a_team_ends_every_subscription_on_it() {
    let app = TestApp::spawn().await;
    let [alice] = signed_in_users(&app, ["user_alice"]).await;
    let team = create_team(&app, &alice).await;
    let mut ws = signed_in(&app, TRANSPORT, &alice).await;
    live_activity(&app, TRANSPORT, &mut [&mut ws], "a", &team, &alice).await;
    let overview = "subscription($t: ID!) { liveMetrics(teamId: $t, intervalSeconds: 1) { runs } }";
    ws.send(json!({"type": "subscribe", "id": "m", "payload": {"query": overview, "variables": {"t": team}}})).await;
    assert_eq!(ws.next_json().await["id"], "m", "the first overview");

    app.gql_as(&alice, "mutation($t: ID!) { deleteTeam(id: $t) { id } }", json!({"t": team})).await;
    let mut ended = Vec::new();
    for _ in 0..2 {
        let message = ws.next_json().await;
        let id = message["id"].as_str().unwrap_or_default().to_string();
        assert_eq!(ended_with_error(&message, &id)["extensions"]["code"], "NOT_FOUND");
        ended.push(id);
    }
    ended.sort();
    assert_eq!(ended, ["a", "m"], "both ended with an error");
    no_more_for(&mut ws, TRANSPORT).await;
}

#[tokio::test]
async fn a_team_made_private_ends_what_anonymous_sockets_followed() {
    let app = TestApp::spawn().await;
    let [alice] = signed_in_users(&app, ["user_alice"]).await;
    let team = create_team(&app, &alice).await;
    let public = "mutation($t: ID!, $v: Visibility!) { updateTeam(id: $t, input: {visibility: $v}) { id } }";
    app.gql_as(&alice, public, json!({"t": team, "v": "PUBLIC"})).await;
    let mut anonymous = app.ws(TRANSPORT).await;
    anonymous.send(json!({"type": "connection_init"})).await;
    assert_eq!(anonymous.next_json().await["type"], "connection_ack");
    live_activity(&app, TRANSPORT, &mut [&mut anonymous], "a", &team, &alice).await;

    app.gql_as(&alice, public, json!({"t": team, "v": "PRIVATE"})).await;
    assert_eq!(ended_with_error(&anonymous.next_json().await, "a")["extensions"]["code"], "NOT_FOUND");
}

#[tokio::test]
async fn an_admin_made_member_loses_the_teams_only_an_admin_could_see() {
    let app = TestApp::spawn().await;
    let root = app.token("user_root", GlobalRole::Admin);
    let [alice, dave] = signed_in_users(&app, ["user_alice", "user_dave"]).await;
    let set_role = "mutation($u: ID!, $r: GlobalRole!) { setUserRole(userId: $u, role: $r) { role } }";
    app.gql_as(&root, set_role, json!({"u": "user_dave", "r": "ADMIN"})).await;
    let team = create_team(&app, &alice).await;
    let mut dave_ws = signed_in(&app, TRANSPORT, &dave).await;
    live_activity(&app, TRANSPORT, &mut [&mut dave_ws], "a", &team, &alice).await;

    app.gql_as(&root, set_role, json!({"u": "user_dave", "r": "MEMBER"})).await;
    assert_eq!(ended_with_error(&dave_ws.next_json().await, "a")["extensions"]["code"], "NOT_FOUND");
    no_more_for(&mut dave_ws, TRANSPORT).await;
}

#[tokio::test]
async fn a_revoked_api_key_loses_its_sockets_and_its_owner_keeps_the_others() {
    let app = TestApp::spawn().await;
    let [alice] = signed_in_users(&app, ["user_alice"]).await;
    let team = create_team(&app, &alice).await;
    let create = "mutation { createApiKey(input: {name: \"ci\", scopes: [TEAMS_READ]}) { secret apiKey { id } } }";
    let (_, made) = app.gql_as(&alice, create, json!({})).await;
    let (secret, key_id) = (&made["data"]["createApiKey"]["secret"], &made["data"]["createApiKey"]["apiKey"]["id"]);
    let mut key_ws = signed_in(&app, TRANSPORT, secret.as_str().unwrap()).await;
    let mut legacy_key_ws = signed_in(&app, LEGACY, secret.as_str().unwrap()).await;
    let mut token_ws = signed_in(&app, TRANSPORT, &alice).await;
    live_activity(&app, TRANSPORT, &mut [&mut key_ws, &mut token_ws], "a", &team, &alice).await;

    let revoke = "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }";
    app.gql_as(&alice, revoke, json!({"id": key_id})).await;
    for ws in [&mut key_ws, &mut legacy_key_ws] {
        assert_eq!(ws.closed().await, (4403, "Forbidden: The API key has been revoked.".to_string()));
    }
    let after = run(&app, &alice, &team, "the token's socket goes on").await;
    events_until_end(&mut token_ws, "a", &after).await;
}

#[tokio::test]
async fn a_socket_signed_in_with_a_rotated_secret_closes_when_its_grace_ends() {
    let app = TestApp::spawn().await;
    let [alice] = signed_in_users(&app, ["user_alice"]).await;
    let create = "mutation { createApiKey(input: {name: \"ci\", scopes: [TEAMS_READ]}) { secret apiKey { id } } }";
    let rotate = "mutation($id: ID!, $g: Int!) { rotateApiKey(id: $id, graceSeconds: $g) { secret } }";
    let (_, made) = app.gql_as(&alice, create, json!({})).await;
    let (old, id) =
        (made["data"]["createApiKey"]["secret"].as_str().unwrap(), &made["data"]["createApiKey"]["apiKey"]["id"]);
    let mut old_ws = signed_in(&app, TRANSPORT, old).await;

    let (_, rotated) = app.gql_as(&alice, rotate, json!({"id": id, "g": 3})).await;
    let new = rotated["data"]["rotateApiKey"]["secret"].as_str().unwrap().to_string();
    let mut new_ws = signed_in(&app, TRANSPORT, &new).await;
    let began = std::time::Instant::now();
    let (code, reason) = tokio::time::timeout(std::time::Duration::from_secs(10), old_ws.closed()).await.unwrap();
    assert_eq!(code, 4403, "{reason}");
    assert!(began.elapsed() >= std::time::Duration::from_secs(1), "not before the grace ends");
    new_ws.send(json!({"type": "ping"})).await;
    assert_eq!(new_ws.next_json().await, json!({"type": "pong"}), "the new secret's socket stays");

    // Without grace, the old secret's socket closes as the rotation is answered.
    let mut new_ws = signed_in(&app, TRANSPORT, &new).await;
    app.gql_as(&alice, rotate, json!({"id": id, "g": 0})).await;
    assert_eq!(new_ws.closed().await, (4403, "Forbidden: The API key is not valid.".to_string()));
}

#[tokio::test]
async fn a_user_deleted_through_the_clerk_webhook_loses_every_socket() {
    let app = TestApp::spawn_with(|c| c.auth.clerk_webhook_secret = Some(clerk::secret())).await;
    let [bob, alice] = signed_in_users(&app, ["user_bob", "user_alice"]).await;
    let create = "mutation { createApiKey(input: {name: \"ci\", scopes: [TEAMS_READ]}) { secret } }";
    let (_, made) = app.gql_as(&bob, create, json!({})).await;
    let key = made["data"]["createApiKey"]["secret"].as_str().unwrap().to_string();
    let mut sockets = [
        signed_in(&app, TRANSPORT, &bob).await,
        signed_in(&app, LEGACY, &bob).await,
        signed_in(&app, TRANSPORT, &key).await,
    ];
    let mut alice_ws = signed_in(&app, TRANSPORT, &alice).await;

    let (status, answer) = clerk::deliver(&app, "msg_delete_bob", &clerk::user_deleted("user_bob")).await;
    assert_eq!(status, 200, "{answer}");
    for ws in &mut sockets {
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 4403, "{reason}");
        assert!(reason.starts_with("Forbidden: "), "{reason}");
    }
    alice_ws.send(json!({"type": "ping"})).await;
    assert_eq!(alice_ws.next_json().await, json!({"type": "pong"}), "others keep their sockets");
}

/// Signed Clerk webhook deliveries (Svix), as Clerk sends them.
mod clerk {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde_json::{Value, json};

    use crate::common::TestApp;

    const KEY: &[u8] = b"webhook-key-webhook-key-webhook!";

    pub fn secret() -> String {
        format!("whsec_{}", STANDARD.encode(KEY))
    }

    pub fn user_deleted(id: &str) -> String {
        json!({"type": "user.deleted", "object": "event", "data": {"id": id, "deleted": true}}).to_string()
    }

    /// Delivers `body` signed with the right key at this very second.
    pub async fn deliver(app: &TestApp, id: &str, body: &str) -> (u16, Value) {
        crate::common::deliver_clerk(&app.client, app.url("/webhooks/clerk"), KEY, id, body).await
    }
}

#[tokio::test]
async fn the_legacy_protocol_ends_a_revoked_subscription_with_data_errors_then_complete() {
    let app = TestApp::spawn().await;
    let [alice, bob] = signed_in_users(&app, ["user_alice", "user_bob"]).await;
    let team = create_team(&app, &alice).await;
    add_member(&app, &alice, &team, "user_bob", "VIEWER").await;
    let mut bob_ws = signed_in(&app, LEGACY, &bob).await;
    live_activity(&app, LEGACY, &mut [&mut bob_ws], "a", &team, &alice).await;

    app.gql_as(&alice, REMOVE, json!({"t": team, "u": "user_bob"})).await;
    let message = bob_ws.next_json().await;
    assert_eq!((message["type"].as_str(), message["id"].as_str()), (Some("data"), Some("a")), "{message}");
    assert_eq!(message["payload"]["data"], Value::Null);
    assert_eq!(message["payload"]["errors"][0]["extensions"]["code"], "NOT_FOUND", "{message}");
    assert_eq!(bob_ws.next_json().await, json!({"type": "complete", "id": "a"}));
    run(&app, &alice, &team, "after bob left").await;
    no_more_for(&mut bob_ws, LEGACY).await;
}
