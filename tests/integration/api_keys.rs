//! API keys: the secret once, hashes only, scopes and team restriction, revocation through
//! the cache, rotation with grace, expiry, and last use.

use crate::common;

use chrono::SubsecRound;
use common::{
    TestApp, first_code,
    meanwhile::{Meanwhile, sql},
};
use ensemble::{
    domain::{Caller, GlobalRole},
    service::api_keys as service,
};
use entity::{api_keys, audit_logs};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryTrait, sea_query::Expr};
use serde_json::{Value, json};

const CREATE: &str = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret apiKey { id prefix scopes teamId } } }";
const ME: &str = "{ me { id } }";

async fn owner(app: &TestApp) -> String {
    let token = app.token("user_k", GlobalRole::Member);
    app.gql_as(&token, ME, json!({})).await;
    token
}

async fn create_key(app: &TestApp, token: &str, input: Value) -> (String, String) {
    let (_, body) = app.gql_as(token, CREATE, json!({"input": input})).await;
    let made = &body["data"]["createApiKey"];
    (
        made["secret"].as_str().unwrap_or_else(|| panic!("{body}")).to_string(),
        made["apiKey"]["id"].as_str().unwrap().to_string(),
    )
}

async fn with_key(app: &TestApp, key: &str, query: &str, variables: Value) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("x-api-key", key)
        .json(&json!({"query": query, "variables": variables}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_key_is_shown_once_stored_as_a_hash_and_works_both_ways() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (secret, id) = create_key(&app, &token, json!({"name": "ci", "scopes": ["TEAMS_READ"]})).await;
    assert!(secret.starts_with("ens_") && secret.len() == 4 + 12 + 1 + 64, "{secret}");
    let row = api_keys::Entity::find_by_id(&id).one(&app.state.db).await.unwrap().unwrap();
    let stored = format!("{row:?}");
    assert!(!stored.contains(&secret[17..]), "the secret is not stored");

    assert_eq!(with_key(&app, &secret, ME, json!({})).await.1["data"]["me"]["id"], "user_k");
    let (status, body) = app.gql_as(&secret, ME, json!({})).await;
    assert_eq!((status, &body["data"]["me"]["id"]), (200, &json!("user_k")), "as a bearer too");

    let (_, list) = app.gql_as(&token, "{ apiKeys { nodes { id prefix name scopes } } }", json!({})).await;
    let text = list.to_string();
    assert!(text.contains(&id) && !text.contains(&secret[17..]), "listing shows no secret: {text}");
    assert_eq!(list["data"]["apiKeys"]["nodes"][0]["prefix"], format!("{}", &secret[..17]));
}

#[tokio::test]
async fn a_wrong_secret_with_the_right_prefix_is_refused_and_not_counted_as_use() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (secret, id) = create_key(&app, &token, json!({"name": "ci", "scopes": ["TEAMS_READ"]})).await;
    let forged = format!("{}{}", &secret[..17], "0".repeat(64));
    let (status, body) = with_key(&app, &forged, ME, json!({})).await;
    assert_eq!((status, first_code(&body)), (401, "UNAUTHENTICATED"));
    let row = api_keys::Entity::find_by_id(&id).one(&app.state.db).await.unwrap().unwrap();
    assert!(row.last_used_at.is_none(), "a failed attempt is not a use");
    with_key(&app, &secret, ME, json!({})).await;
    let row = api_keys::Entity::find_by_id(&id).one(&app.state.db).await.unwrap().unwrap();
    assert!(row.last_used_at.is_some());
}

#[tokio::test]
async fn a_revoked_key_fails_on_the_very_next_request_although_cached() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (secret, id) = create_key(&app, &token, json!({"name": "ci", "scopes": ["TEAMS_READ"]})).await;
    assert_eq!(with_key(&app, &secret, ME, json!({})).await.0, 200, "now cached");
    let (_, body) =
        app.gql_as(&token, "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }", json!({"id": id})).await;
    assert!(body["data"]["revokeApiKey"]["revokedAt"].is_string(), "{body}");
    let (status, body) = with_key(&app, &secret, ME, json!({})).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn an_expired_key_is_refused_and_a_past_expiry_is_bad_input() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let soon = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (secret, id) =
        create_key(&app, &token, json!({"name": "brief", "scopes": ["TEAMS_READ"], "expiresAt": soon})).await;
    // The hour passes (the key is not yet cached: it has never been used).
    let passed = chrono::Utc::now() - chrono::Duration::seconds(1);
    let expire = api_keys::Entity::update_many().col_expr(api_keys::Column::ExpiresAt, Expr::value(passed));
    expire.filter(api_keys::Column::Id.eq(&id)).exec(&app.state.db).await.unwrap();
    let (status, body) = with_key(&app, &secret, ME, json!({})).await;
    assert_eq!(status, 401);
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("expired"));

    let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
    let (_, body) = app.gql_as(&token, CREATE, json!({"input": {"name": "", "scopes": [], "expiresAt": past}})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["extensions"]["problems"].as_array().map(Vec::len), Some(3));
}

#[tokio::test]
async fn a_read_scoped_key_cannot_call_a_mutation() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (secret, _) = create_key(&app, &token, json!({"name": "reader", "scopes": ["TEAMS_READ"]})).await;
    let (_, body) = with_key(&app, &secret, "mutation { createTeam(input: {name: \"Nope\"}) { id } }", json!({})).await;
    assert_eq!(first_code(&body), "FORBIDDEN");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("teams:write"));
    let (_, body) = with_key(&app, &secret, CREATE, json!({"input": {"name": "x", "scopes": ["TEAMS_READ"]}})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "keys cannot make keys");
}

#[tokio::test]
async fn rotation_keeps_the_old_secret_for_the_grace_and_refuses_a_second_rotation() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (old, id) = create_key(&app, &token, json!({"name": "ci", "scopes": ["TEAMS_READ"]})).await;
    let rotate = "mutation($id: ID!, $grace: Int!) { rotateApiKey(id: $id, graceSeconds: $grace) { secret apiKey { id previousSecretExpiresAt } } }";
    let (_, body) = app.gql_as(&token, rotate, json!({"id": id, "grace": 3})).await;
    let new = body["data"]["rotateApiKey"]["secret"].as_str().unwrap().to_string();
    assert_eq!(body["data"]["rotateApiKey"]["apiKey"]["id"], id, "the same key");
    assert_eq!(&new[..17], &old[..17], "the same prefix");
    assert_ne!(new, old);
    assert_eq!(with_key(&app, &old, ME, json!({})).await.0, 200, "the old secret during the grace");
    assert_eq!(with_key(&app, &new, ME, json!({})).await.0, 200);

    let (_, body) = app.gql_as(&token, rotate, json!({"id": id, "grace": 3})).await;
    assert_eq!(first_code(&body), "CONFLICT", "no third secret while the grace runs");

    // The grace passes: the row says so, and the server forgets the key it had read, as it
    // does after any change to a key.
    let passed = chrono::Utc::now() - chrono::Duration::seconds(1);
    let end = api_keys::Entity::update_many().col_expr(api_keys::Column::PreviousExpiresAt, Expr::value(passed));
    end.filter(api_keys::Column::Id.eq(&id)).exec(&app.state.db).await.unwrap();
    let prefix = api_keys::Entity::find_by_id(&id).one(&app.state.db).await.unwrap().expect("the key").prefix;
    app.state.caches.invalidate(ensemble::domain::Invalidation::ApiKeyChanged(prefix)).await;
    assert_eq!(with_key(&app, &old, ME, json!({})).await.0, 401, "the old secret after the grace");
    assert_eq!(with_key(&app, &new, ME, json!({})).await.0, 200);
}

#[tokio::test]
async fn a_team_restricted_key_sees_only_its_team() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let create_team = "mutation($n: String!) { createTeam(input: {name: $n}) { id } }";
    let a = app.gql_as(&token, create_team, json!({"n": "A"})).await.1["data"]["createTeam"]["id"].clone();
    let b = app.gql_as(&token, create_team, json!({"n": "B"})).await.1["data"]["createTeam"]["id"].clone();
    let (secret, _) =
        create_key(&app, &token, json!({"name": "a-only", "scopes": ["TEAMS_READ", "TEAMS_WRITE"], "teamId": a})).await;
    let team = "query($id: ID!) { team(id: $id) { name } }";
    assert_eq!(with_key(&app, &secret, team, json!({"id": a})).await.1["data"]["team"]["name"], "A");
    assert_eq!(first_code(&with_key(&app, &secret, team, json!({"id": b})).await.1), "NOT_FOUND");
    let (_, list) = with_key(&app, &secret, "{ teams { nodes { name } } }", json!({})).await;
    assert_eq!(list["data"]["teams"]["nodes"], json!([{"name": "A"}]));
}

#[tokio::test]
async fn actions_by_a_key_are_audited_with_the_key() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (secret, id) = create_key(&app, &token, json!({"name": "writer", "scopes": ["TEAMS_WRITE"]})).await;
    with_key(&app, &secret, "mutation { createTeam(input: {name: \"By key\"}) { id } }", json!({})).await;
    let rows = entity::audit_logs::Entity::find().all(&app.state.db).await.unwrap();
    let by_key = rows.iter().find(|r| r.action == "team.create").expect("audited");
    assert_eq!(by_key.actor_kind, "api_key");
    assert_eq!(by_key.api_key_id.as_deref(), Some(id.as_str()));
    assert_eq!(by_key.actor_id.as_deref(), Some("user_k"));
    assert!(!format!("{rows:?}").contains(&secret[17..]), "no secret in the audit log");
}

/// The caller of `token`, for calling services directly.
async fn caller(app: &TestApp, token: &str) -> Caller {
    Caller { principal: app.state.auth.from_token(token).await.unwrap(), meta: Default::default() }
}

async fn audited(app: &TestApp, action: &str) -> u64 {
    let rows = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq(action));
    rows.count(&app.state.db).await.unwrap()
}

#[tokio::test]
async fn a_key_revoked_meanwhile_is_answered_as_revoked_then_and_recorded_once() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (_, id) = create_key(&app, &token, json!({"name": "ci", "scopes": ["TEAMS_READ"]})).await;
    let then = chrono::Utc::now().trunc_subsecs(6) - chrono::Duration::minutes(1);
    let revoke = api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(then))
        .filter(api_keys::Column::Id.eq(&id))
        .into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &revoke)]);

    let me = caller(&app, &token).await;
    let key = service::revoke(&app.state.db, &chain, &app.state.caches, &me, &id).await.unwrap();

    assert_eq!(key.revoked_at, Some(then), "the revocation that landed first");
    assert_eq!(audited(&app, "api_key.revoke").await, 0, "this call revoked nothing");
}

#[tokio::test]
async fn a_key_rotated_meanwhile_refuses_the_second_rotation_and_keeps_the_first() {
    let app = TestApp::spawn().await;
    let token = owner(&app).await;
    let (_, id) = create_key(&app, &token, json!({"name": "ci", "scopes": ["TEAMS_READ"]})).await;
    let rotate = api_keys::Entity::update_many()
        .col_expr(api_keys::Column::SecretHash, Expr::value("rotated-elsewhere"))
        .col_expr(api_keys::Column::PreviousExpiresAt, Expr::value(chrono::Utc::now() + chrono::Duration::hours(1)))
        .filter(api_keys::Column::Id.eq(&id))
        .into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &rotate)]);

    let me = caller(&app, &token).await;
    let err = service::rotate(&app.state.db, &chain, &app.state.caches, &me, &id, 60).await.err().unwrap();

    assert_eq!(err.code(), "CONFLICT");
    assert!(err.to_string().contains("rotated already"), "{err}");
    let key = api_keys::Entity::find_by_id(&id).one(&app.state.db).await.unwrap().unwrap();
    assert_eq!(key.secret_hash, "rotated-elsewhere", "the first rotation stands");
    assert_eq!(audited(&app, "api_key.rotate").await, 0);
}
