//! Clerk webhooks: Svix signatures, the time window, replays, secret rotation, and the user
//! changes they carry.

use crate::common;

use base64::{Engine, engine::general_purpose::STANDARD};
use common::{
    TestApp,
    meanwhile::{Meanwhile, sql},
};
use ensemble::{domain::GlobalRole, service::users};
use entity::{api_keys, audit_logs, webhook_events};
use hmac::{Hmac, Mac};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryTrait, Set, sea_query::Expr};
use serde_json::{Value, json};
use sha2::Sha256;

const KEY: &[u8] = b"webhook-key-webhook-key-webhook!";
const OLD_KEY: &[u8] = b"previous-key-previous-key-previo";

fn secret(key: &[u8]) -> String {
    format!("whsec_{}", STANDARD.encode(key))
}

fn signature(key: &[u8], id: &str, ts: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

async fn app() -> TestApp {
    TestApp::spawn_with(|c| c.auth.clerk_webhook_secret = Some(secret(KEY))).await
}

async fn deliver(app: &TestApp, id: &str, ts: i64, signatures: &str, body: &str) -> (u16, Value) {
    let response = app
        .client
        .post(app.url("/webhooks/clerk"))
        .header("svix-id", id)
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", signatures)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

/// Delivers `body` signed with the right key at this very second.
async fn deliver_signed(app: &TestApp, id: &str, body: &str) -> (u16, Value) {
    let ts = now();
    deliver(app, id, ts, &signature(KEY, id, ts, body), body).await
}

fn user_created(id: &str, first: &str) -> String {
    json!({"type": "user.created", "object": "event", "data": {
        "id": id, "first_name": first, "last_name": "Lovelace", "image_url": "https://img.clerk.com/a.png",
        "primary_email_address_id": "idn_2",
        "email_addresses": [{"id": "idn_1", "email_address": "old@example.com"}, {"id": "idn_2", "email_address": "ada@example.com"}]
    }})
    .to_string()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

#[tokio::test]
async fn a_signed_user_created_event_creates_the_user() {
    let app = app().await;
    let body = user_created("user_ada", "Ada");
    let (status, answer) = deliver_signed(&app, "msg_1", &body).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "processed");
    let user = ensemble::service::users::find(&app.state.db, "user_ada").await.unwrap().expect("created");
    assert_eq!(user.email.as_deref(), Some("ada@example.com"));
    assert_eq!(user.display_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(user.avatar_url.as_deref(), Some("https://img.clerk.com/a.png"));
}

#[tokio::test]
async fn a_replayed_delivery_changes_nothing() {
    let app = app().await;
    let body = user_created("user_ada", "Ada");
    let ts = now();
    let sig = signature(KEY, "msg_1", ts, &body);
    assert_eq!(deliver(&app, "msg_1", ts, &sig, &body).await.1["status"], "processed");
    // The user renames themselves in the app; then the old delivery is replayed.
    let token = app.token("user_ada", GlobalRole::Member);
    app.gql_as(&token, "mutation { updateProfile(input: {displayName: \"Countess\"}) { id } }", json!({})).await;
    assert_eq!(deliver(&app, "msg_1", ts, &sig, &body).await.1["status"], "duplicate");
    let user = ensemble::service::users::find(&app.state.db, "user_ada").await.unwrap().unwrap();
    assert_eq!(user.display_name.as_deref(), Some("Countess"));
}

#[tokio::test]
async fn wrong_secret_stale_timestamp_and_tampered_body_are_refused() {
    let app = app().await;
    let body = user_created("user_eve", "Eve");
    let ts = now();
    let wrong = signature(b"not-the-key-not-the-key-not-the!", "msg_2", ts, &body);
    assert_eq!(deliver(&app, "msg_2", ts, &wrong, &body).await.0, 401);
    let stale = now() - 301;
    assert_eq!(deliver(&app, "msg_3", stale, &signature(KEY, "msg_3", stale, &body), &body).await.0, 401);
    let sig = signature(KEY, "msg_4", ts, &body);
    let tampered = body.replace("Eve", "Mallory");
    assert_eq!(deliver(&app, "msg_4", ts, &sig, &tampered).await.0, 401);
    let missing = app.client.post(app.url("/webhooks/clerk")).body(body.clone()).send().await.unwrap();
    assert_eq!(missing.status(), 400);
    assert!(ensemble::service::users::find(&app.state.db, "user_eve").await.unwrap().is_none());
}

#[tokio::test]
async fn during_a_secret_rotation_either_signature_passes() {
    let app = TestApp::spawn_with(|c| c.auth.clerk_webhook_secret = Some(secret(KEY))).await;
    let body = user_created("user_rot", "Rot");
    let ts = now();
    let both = format!("{} {}", signature(OLD_KEY, "msg_5", ts, &body), signature(KEY, "msg_5", ts, &body));
    let (status, answer) = deliver(&app, "msg_5", ts, &both, &body).await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn user_deleted_soft_deletes_and_their_tokens_stop_working() {
    let app = app().await;
    let token = app.token("user_gone", GlobalRole::Member);
    assert_eq!(app.gql_as(&token, "{ me { id } }", json!({})).await.0, 200);
    let body =
        json!({"type": "user.deleted", "data": {"id": "user_gone", "deleted": true, "object": "user"}}).to_string();
    let (status, _) = deliver_signed(&app, "msg_6", &body).await;
    assert_eq!(status, 200);
    let user = ensemble::service::users::find(&app.state.db, "user_gone").await.unwrap().unwrap();
    assert!(user.deleted_at.is_some());
    let (status, body) = app.gql_as(&token, "{ me { id } }", json!({})).await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test]
async fn unknown_event_types_are_acknowledged_and_ignored() {
    let app = app().await;
    let body = json!({"type": "session.created", "data": {"id": "sess_1"}}).to_string();
    let (status, answer) = deliver_signed(&app, "msg_7", &body).await;
    assert_eq!((status, answer["status"].as_str()), (200, Some("ignored")));
}

#[tokio::test]
async fn webhooks_are_off_without_a_secret() {
    let app = TestApp::spawn().await;
    let body = user_created("user_x", "X");
    assert_eq!(deliver_signed(&app, "msg_8", &body).await.0, 404);
}

#[tokio::test]
async fn deleting_a_user_revokes_their_api_keys_at_once() {
    let app = app().await;
    let token = app.token("user_keyed", GlobalRole::Member);
    let create = "mutation { createApiKey(input: {name: \"ci\", scopes: [TEAMS_READ]}) { secret } }";
    let (_, body) = app.gql_as(&token, create, json!({})).await;
    let key = body["data"]["createApiKey"]["secret"].as_str().unwrap().to_string();
    assert_eq!(app.gql_as(&key, "{ me { id } }", json!({})).await.0, 200, "cached now");
    let body = json!({"type": "user.deleted", "data": {"id": "user_keyed", "deleted": true}}).to_string();
    deliver_signed(&app, "msg_9", &body).await;
    assert_eq!(app.gql_as(&key, "{ me { id } }", json!({})).await.0, 401);
}

#[tokio::test]
async fn a_replay_recorded_meanwhile_is_answered_duplicate_and_applies_nothing() {
    let app = app().await;
    let event: Value = serde_json::from_str(&user_created("user_ada", "Ada")).unwrap();
    // The same delivery, sent twice at once, is recorded by the other instance first.
    let recorded = webhook_events::ActiveModel {
        id: Set("msg_20".into()),
        source: Set("clerk".into()),
        event_type: Set("user.created".into()),
        received_at: Set(chrono::Utc::now()),
    };
    let record = webhook_events::Entity::insert(recorded).into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &record)]);

    let outcome = users::apply_clerk_event(&app.state.db, &chain, &app.state.caches, "msg_20", &event).await.unwrap();

    assert_eq!(outcome, "duplicate");
    assert!(users::find(&app.state.db, "user_ada").await.unwrap().is_none(), "the other delivery's to apply");
    let synced = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("user.sync"));
    assert_eq!(synced.count(&app.state.db).await.unwrap(), 0);
}

#[tokio::test]
async fn a_key_revoked_while_its_user_is_deleted_is_not_counted_again() {
    let app = app().await;
    let token = app.token("user_keyed", GlobalRole::Member);
    let create = "mutation { createApiKey(input: {name: \"ci\", scopes: [TEAMS_READ]}) { apiKey { id } } }";
    let (_, body) = app.gql_as(&token, create, json!({})).await;
    let id = body["data"]["createApiKey"]["apiKey"]["id"].as_str().unwrap().to_string();
    // The key is revoked by its owner after the deletion read it as live.
    let revoke = api_keys::Entity::update_many()
        .col_expr(api_keys::Column::RevokedAt, Expr::value(chrono::Utc::now()))
        .filter(api_keys::Column::Id.eq(&id))
        .into_query();
    let chain = Meanwhile::chain(&app.state, vec![sql(&app.state.db, &revoke)]);
    let event = json!({"type": "user.deleted", "data": {"id": "user_keyed", "deleted": true}});

    let outcome = users::apply_clerk_event(&app.state.db, &chain, &app.state.caches, "msg_21", &event).await.unwrap();

    assert_eq!(outcome, "processed");
    let deleted = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("user.delete"));
    let changes: Vec<_> = deleted.all(&app.state.db).await.unwrap().into_iter().map(|row| row.changes).collect();
    assert_eq!(changes, [Some(json!({"apiKeysRevoked": 0}))], "read again: no key was left to revoke");
    assert!(users::find(&app.state.db, "user_keyed").await.unwrap().unwrap().deleted_at.is_some());
}
