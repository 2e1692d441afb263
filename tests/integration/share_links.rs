//! Share links: made by owners, accepted once per person, dead when revoked or expired.

use crate::common;

use common::{TestApp, first_code, meanwhile};
use ensemble::{
    domain::{Caller, GlobalRole, TeamRole},
    service::{share_links, teams},
};
use entity::{audit_logs, team_share_links};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, sea_query::Expr};
use serde_json::{Value, json};

const CREATE: &str = "mutation($team: ID!, $role: TeamRole!, $exp: DateTime) { createShareLink(teamId: $team, input: {role: $role, expiresAt: $exp}) { token shareLink { id role } } }";
const ACCEPT: &str = "mutation($token: String!) { acceptShareLink(token: $token) { userId role } }";

async fn setup(app: &TestApp) -> (String, String) {
    let owner = app.token("user_owner", GlobalRole::Member);
    let (_, body) = app.gql_as(&owner, "mutation { createTeam(input: {name: \"Shared\"}) { id } }", json!({})).await;
    (owner, body["data"]["createTeam"]["id"].as_str().unwrap().to_string())
}

async fn link(app: &TestApp, owner: &str, team: &str, role: &str, expires: Value) -> Value {
    app.gql_as(owner, CREATE, json!({"team": team, "role": role, "exp": expires})).await.1
}

#[tokio::test]
async fn a_link_makes_whoever_accepts_it_a_member() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    let body = link(&app, &owner, &team, "EDITOR", Value::Null).await;
    let token = body["data"]["createShareLink"]["token"].as_str().unwrap().to_string();
    let guest = app.token("user_guest", GlobalRole::Member);
    let (_, body) = app.gql_as(&guest, ACCEPT, json!({"token": token})).await;
    assert_eq!(body["data"]["acceptShareLink"], json!({"userId": "user_guest", "role": "EDITOR"}));
    let (_, body) = app.gql_as(&guest, "query($id: ID!) { team(id: $id) { myRole } }", json!({"id": team})).await;
    assert_eq!(body["data"]["team"]["myRole"], "EDITOR");

    let (_, body) = app
        .gql_as(&owner, "query($id: ID!) { shareLinks(teamId: $id) { nodes { id role } } }", json!({"id": team}))
        .await;
    assert!(!body.to_string().contains(&token), "the token is never listed: {body}");
    assert_eq!(body["data"]["shareLinks"]["nodes"][0]["role"], "EDITOR");
}

#[tokio::test]
async fn accepting_keeps_a_stronger_role() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    let token = link(&app, &owner, &team, "VIEWER", Value::Null).await["data"]["createShareLink"]["token"].clone();
    let (_, body) = app.gql_as(&owner, ACCEPT, json!({"token": token})).await;
    assert_eq!(body["data"]["acceptShareLink"]["role"], "OWNER");
}

#[tokio::test]
async fn revoked_expired_and_unknown_tokens_all_answer_not_found() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    let guest = app.token("user_guest", GlobalRole::Member);

    let made = link(&app, &owner, &team, "VIEWER", Value::Null).await;
    let (token, id) =
        (made["data"]["createShareLink"]["token"].clone(), made["data"]["createShareLink"]["shareLink"]["id"].clone());
    app.gql_as(&owner, "mutation($id: ID!) { revokeShareLink(id: $id) { revokedAt } }", json!({"id": id})).await;
    let revoked = app.gql_as(&guest, ACCEPT, json!({"token": token})).await.1;

    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let made = link(&app, &owner, &team, "VIEWER", json!(soon)).await["data"]["createShareLink"].clone();
    let brief = made["token"].clone();
    // The hour passes.
    let passed = chrono::Utc::now() - chrono::Duration::seconds(1);
    let expire = team_share_links::Entity::update_many()
        .col_expr(team_share_links::Column::ExpiresAt, Expr::value(passed))
        .filter(team_share_links::Column::Id.eq(made["shareLink"]["id"].as_str().unwrap()));
    expire.exec(&app.state.db).await.unwrap();
    let expired = app.gql_as(&guest, ACCEPT, json!({"token": brief})).await.1;

    let unknown = app.gql_as(&guest, ACCEPT, json!({"token": "ens_share_0000"})).await.1;
    for body in [&revoked, &expired, &unknown] {
        assert_eq!(first_code(body), "NOT_FOUND", "{body}");
        assert_eq!(body["errors"][0]["message"], unknown["errors"][0]["message"], "the same answer for every case");
    }
    let (_, body) = app.gql_as(&guest, "query($id: ID!) { team(id: $id) { id } }", json!({"id": team})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "the guest never joined");
}

#[tokio::test]
async fn links_grant_at_most_editor_and_only_owners_make_them() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    let body = link(&app, &owner, &team, "OWNER", Value::Null).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    let viewer_link =
        link(&app, &owner, &team, "VIEWER", Value::Null).await["data"]["createShareLink"]["token"].clone();
    let viewer = app.token("user_viewer", GlobalRole::Member);
    app.gql_as(&viewer, ACCEPT, json!({"token": viewer_link})).await;
    let body = link(&app, &viewer, &team, "VIEWER", Value::Null).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "a viewer cannot make links");
}

#[tokio::test]
async fn an_owners_read_only_key_lists_no_share_links() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    link(&app, &owner, &team, "VIEWER", Value::Null).await;
    let make_key = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret } }";
    let key_for = |scopes: Value| json!({"input": {"name": "ci", "scopes": scopes}});
    let list = "query($id: ID!) { team(id: $id) { name shareLinks { id } } }";

    let (_, made) = app.gql_as(&owner, make_key, key_for(json!(["TEAMS_READ"]))).await;
    let reader = made["data"]["createApiKey"]["secret"].as_str().unwrap_or_else(|| panic!("{made}")).to_string();
    let (_, body) = app.gql_as(&reader, list, json!({"id": team})).await;
    assert_eq!(body["data"]["team"]["name"], "Shared", "the key reads the team: {body}");
    assert_eq!(first_code(&body), "FORBIDDEN", "but not its share links: {body}");
    assert!(body["errors"][0]["message"].as_str().unwrap_or_default().contains("teams:write"), "{body}");

    let (_, made) = app.gql_as(&owner, make_key, key_for(json!(["TEAMS_READ", "TEAMS_WRITE"]))).await;
    let writer = made["data"]["createApiKey"]["secret"].as_str().unwrap().to_string();
    let (_, body) = app.gql_as(&writer, list, json!({"id": team})).await;
    assert_eq!(body["data"]["team"]["shareLinks"].as_array().map(Vec::len), Some(1), "{body}");
}

/// The caller a token stands for, to call a service directly.
async fn caller_of(app: &TestApp, token: &str) -> Caller {
    Caller { principal: app.state.auth.from_token(token).await.unwrap(), meta: Default::default() }
}

/// How many audit rows hold `action`.
async fn audited(app: &TestApp, action: &str) -> u64 {
    audit_logs::Entity::find().filter(audit_logs::Column::Action.eq(action)).count(&app.state.db).await.unwrap()
}

#[tokio::test]
async fn of_two_revocations_at_once_one_is_recorded_and_both_answer_the_revoked_link() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    let made = link(&app, &owner, &team, "VIEWER", Value::Null).await;
    let id = made["data"]["createShareLink"]["shareLink"]["id"].as_str().unwrap().to_string();
    let caller = caller_of(&app, &owner).await;
    let (state, other, link_id) = (app.state.clone(), caller.clone(), id.clone());
    let (first_tx, first_rx) = tokio::sync::oneshot::channel();
    let meanwhile = meanwhile::chain(&app.state, async move {
        let first = share_links::revoke(&state.db, &state.audit, &other, &link_id).await.unwrap();
        first_tx.send(first).unwrap();
    });

    let second = share_links::revoke(&app.state.db, &meanwhile, &caller, &id).await.unwrap();
    let first = first_rx.await.unwrap();
    assert!(first.revoked_at.is_some());
    assert_eq!(second, first, "the second answers the link as the first revoked it");
    assert_eq!(audited(&app, "team.share_link.revoke").await, 1);
}

#[tokio::test]
async fn a_link_revoked_while_it_is_accepted_lets_nobody_in() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    let made = link(&app, &owner, &team, "EDITOR", Value::Null).await["data"]["createShareLink"].clone();
    let token = made["token"].as_str().unwrap().to_string();
    let (state, revoking, id) = (app.state.clone(), caller_of(&app, &owner).await, made["shareLink"]["id"].clone());
    let meanwhile = meanwhile::chain(&app.state, async move {
        share_links::revoke(&state.db, &state.audit, &revoking, id.as_str().unwrap()).await.unwrap();
    });

    let guest = caller_of(&app, &app.token("user_guest", GlobalRole::Member)).await;
    let err = share_links::accept(&app.state.db, &meanwhile, &guest, &token).await.unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND", "{err}");
    assert_eq!(teams::membership(&app.state.db, &team, "user_guest").await.unwrap(), None);
    assert_eq!(audited(&app, "team.share_link.accept").await, 0);
}

#[tokio::test]
async fn a_link_accepted_twice_at_once_makes_one_membership() {
    let app = TestApp::spawn().await;
    let (owner, team) = setup(&app).await;
    let token = link(&app, &owner, &team, "EDITOR", Value::Null).await["data"]["createShareLink"]["token"]
        .as_str()
        .unwrap()
        .to_string();
    let guest = caller_of(&app, &app.token("user_guest", GlobalRole::Member)).await;
    let (state, first, first_token) = (app.state.clone(), guest.clone(), token.clone());
    let meanwhile = meanwhile::chain(&app.state, async move {
        share_links::accept(&state.db, &state.audit, &first, &first_token).await.unwrap();
    });

    let member = share_links::accept(&app.state.db, &meanwhile, &guest, &token).await.unwrap();
    assert_eq!((member.user_id.as_str(), member.role), ("user_guest", TeamRole::Editor));
    let stored = teams::membership(&app.state.db, &team, "user_guest").await.unwrap();
    assert_eq!(stored.as_ref(), Some(&member), "the member answered is the member stored");
    assert_eq!(audited(&app, "team.share_link.accept").await, 2, "each acceptance is recorded");
}
