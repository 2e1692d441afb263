//! Share links: made by owners, accepted once per person, dead when revoked or expired.

use crate::common;

use common::{TestApp, first_code};
use ensemble::domain::GlobalRole;
use entity::team_share_links;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, sea_query::Expr};
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
