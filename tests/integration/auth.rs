//! Identity: dev tokens, Clerk verification (PEM and JWKS) with the hostile vectors Clerk's SDK
//! refuses, just-in-time users, and the principal on websockets.

use crate::common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use common::{CLERK_ISSUER, TestApp, WsClient, first_code, fixture};
use ensemble::{auth::dev::DevIssuer, domain::GlobalRole};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};

const ME: &str = "{ me { id email role } }";

/// Signs `claims` with a fixture key as Clerk would (RS256, with that key's `kid`).
fn clerk_token(key_file: &str, claims: &Value) -> String {
    let pem = fixture(key_file);
    let kid = DevIssuer::from_pem(&pem).unwrap().kid;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid);
    jsonwebtoken::encode(&header, claims, &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap()).unwrap()
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

fn good_claims() -> Value {
    json!({"sub": "user_clerk", "iss": CLERK_ISSUER, "iat": now(), "nbf": now(), "exp": now() + 600, "azp": "https://app.example", "email": "c@example.com"})
}

/// A stub of Clerk's JWKS endpoint on loopback: serves the keys given, counts fetches, can fail.
struct JwksStub {
    url: String,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
    down: Arc<AtomicBool>,
}

impl JwksStub {
    async fn start(key_files: &[&str]) -> Self {
        let keys = Arc::new(Mutex::new(jwks(key_files)));
        let fetches = Arc::new(AtomicUsize::new(0));
        let down = Arc::new(AtomicBool::new(false));
        let (k, f, d) = (keys.clone(), fetches.clone(), down.clone());
        let router = axum::Router::new().route(
            "/.well-known/jwks.json",
            axum::routing::get(move || {
                let (k, f, d) = (k.clone(), f.clone(), d.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    if d.load(Ordering::SeqCst) {
                        return Err(axum::http::StatusCode::SERVICE_UNAVAILABLE);
                    }
                    Ok(axum::Json(k.lock().unwrap().clone()))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/.well-known/jwks.json", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self { url, keys, fetches, down }
    }
}

fn jwks(key_files: &[&str]) -> Value {
    let keys: Vec<Value> =
        key_files.iter().map(|f| DevIssuer::from_pem(&fixture(f)).unwrap().jwks["keys"][0].clone()).collect();
    json!({"keys": keys})
}

async fn clerk_app(stub: &JwksStub) -> TestApp {
    let url = stub.url.clone();
    TestApp::spawn_with(move |c| {
        c.auth.clerk_jwks_url = Some(url);
        c.auth.clerk_issuer = Some(CLERK_ISSUER.into());
        c.auth.clerk_authorized_parties = vec!["https://app.example".into()];
    })
    .await
}

#[tokio::test]
async fn an_anonymous_caller_has_no_me() {
    let app = TestApp::spawn().await;
    let body = app.gql(ME, json!({})).await;
    assert_eq!(body["data"]["me"], Value::Null);
}

#[tokio::test]
async fn a_dev_token_signs_in_and_creates_the_user_just_in_time() {
    let app = TestApp::spawn().await;
    let token = app.token("user_alice", GlobalRole::Admin);
    for _ in 0..2 {
        let (status, body) = app.gql_as(&token, ME, json!({})).await;
        assert_eq!(status, 200);
        assert_eq!(body["data"]["me"], json!({"id": "user_alice", "email": "user_alice@example.com", "role": "ADMIN"}));
    }
    let stored = ensemble::service::users::find(&app.state.db, "user_alice").await.unwrap().expect("user row");
    assert_eq!(stored.email.as_deref(), Some("user_alice@example.com"));
}

#[tokio::test]
async fn the_dev_jwks_is_published() {
    let app = TestApp::spawn().await;
    let jwks: Value = app.client.get(app.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert_eq!(jwks["keys"][0]["kid"], app.state.auth.dev.as_ref().unwrap().kid);
}

#[tokio::test]
async fn bad_credentials_are_401_at_once() {
    let app = TestApp::spawn().await;
    for header in ["Bearer not-a-jwt", "Basic dXNlcjpwYXNz", "Bearer "] {
        let response = app
            .client
            .post(app.url("/graphql"))
            .header("authorization", header)
            .json(&json!({"query": ME}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{header}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(first_code(&body), "UNAUTHENTICATED", "{header}");
    }
}

#[tokio::test]
async fn a_token_over_8_kib_is_refused_before_decoding() {
    let app = TestApp::spawn().await;
    let (status, body) = app.gql_as(&"a".repeat(9 * 1024), ME, json!({})).await;
    assert_eq!(status, 401);
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("longer than 8192 bytes"));
    let huge = "a".repeat(1024 * 1024);
    let err = app.state.auth.from_token(&huge).await.unwrap_err();
    assert_eq!(err.code(), "UNAUTHENTICATED");
}

#[tokio::test]
async fn clerk_tokens_verify_with_the_pem_key() {
    let app = TestApp::spawn_with(common::clerk_pem).await;
    let (status, body) = app.gql_as(&clerk_token("clerk-key.pem", &good_claims()), ME, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["me"]["id"], "user_clerk");
    assert_eq!(body["data"]["me"]["role"], "MEMBER");
}

#[tokio::test]
async fn hostile_tokens_are_unauthenticated() {
    let stub = JwksStub::start(&["clerk-key.pem"]).await;
    let app = clerk_app(&stub).await;
    let with = |patch: Value| {
        let mut claims = good_claims();
        for (k, v) in patch.as_object().unwrap() {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        clerk_token("clerk-key.pem", &claims)
    };
    let good = with(json!({}));
    let (status, _) = app.gql_as(&good, ME, json!({})).await;
    assert_eq!(status, 200, "the good token passes");

    let parts: Vec<&str> = good.split('.').collect();
    let none_alg = format!("{}.{}.", URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#), parts[1]);
    let public_pem = fixture("clerk-key.pub.pem");
    let hs256 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &good_claims(),
        &EncodingKey::from_secret(public_pem.as_bytes()),
    )
    .unwrap();
    let mut swapped_claims = good_claims();
    swapped_claims["sub"] = json!("user_admin");
    let swapped = format!("{}.{}.{}", parts[0], URL_SAFE_NO_PAD.encode(swapped_claims.to_string()), parts[2]);
    let other_key = clerk_token("clerk-key-2.pem", &good_claims());

    let vectors = [
        ("alg none", none_alg),
        ("HS256 signed with the RSA public key", hs256),
        ("payload swapped", swapped),
        ("expired 30 s ago", with(json!({"exp": now() - 30}))),
        ("nbf an hour ahead", with(json!({"nbf": now() + 3600}))),
        ("iat an hour ahead", with(json!({"iat": now() + 3600}))),
        ("wrong iss", with(json!({"iss": "https://evil.example"}))),
        ("no iss", with(json!({"iss": null}))),
        ("no sub", with(json!({"sub": null}))),
        ("azp not allowed", with(json!({"azp": "https://evil.example"}))),
        ("unknown kid", other_key),
        ("non-base64url characters", format!("{}.{}*!.{}", parts[0], parts[1], parts[2])),
    ];
    for (name, token) in vectors {
        let (status, body) = app.gql_as(&token, ME, json!({})).await;
        assert_eq!(status, 401, "{name}: {body}");
        assert_eq!(first_code(&body), "UNAUTHENTICATED", "{name}");
    }
}

#[tokio::test]
async fn a_hundred_unknown_kids_cause_at_most_one_jwks_fetch() {
    let stub = JwksStub::start(&["clerk-key.pem"]).await;
    let app = clerk_app(&stub).await;
    let (status, _) = app.gql_as(&clerk_token("clerk-key.pem", &good_claims()), ME, json!({})).await;
    assert_eq!(status, 200);
    let before = stub.fetches.load(Ordering::SeqCst);
    let stranger = DevIssuer::from_pem(&fixture("clerk-key-2.pem")).unwrap();
    for i in 0..100 {
        let mut header = Header::new(Algorithm::RS256);
        header.kid = Some(format!("{}-{i}", stranger.kid));
        let token = jsonwebtoken::encode(
            &header,
            &good_claims(),
            &EncodingKey::from_rsa_pem(fixture("clerk-key-2.pem").as_bytes()).unwrap(),
        )
        .unwrap();
        let (status, _) = app.gql_as(&token, ME, json!({})).await;
        assert_eq!(status, 401);
    }
    assert!(stub.fetches.load(Ordering::SeqCst) - before <= 1, "fetches: {}", stub.fetches.load(Ordering::SeqCst));
}

#[tokio::test]
async fn a_rotated_key_is_accepted_after_a_refetch() {
    let stub = JwksStub::start(&["clerk-key.pem"]).await;
    let url = stub.url.clone();
    let app = TestApp::spawn_with(move |c| {
        c.auth.clerk_jwks_url = Some(url);
        c.auth.clerk_issuer = Some(CLERK_ISSUER.into());
        c.auth.clerk_jwks_refetch_secs = 1;
    })
    .await;
    assert_eq!(app.gql_as(&clerk_token("clerk-key.pem", &good_claims()), ME, json!({})).await.0, 200);
    // Clerk rotates: the new key is published and tokens signed with it arrive.
    *stub.keys.lock().unwrap() = jwks(&["clerk-key.pem", "clerk-key-2.pem"]);
    let rotated = clerk_token("clerk-key-2.pem", &good_claims());
    let (status, body) = app.gql_as(&rotated, ME, json!({})).await;
    assert_eq!(status, 401, "within the refetch interval the new kid is unknown: {body}");
    // A second later the keys are fetched again, and the new key verifies.
    let (app_ref, token) = (&app, &rotated);
    let verified = move || async move { app_ref.gql_as(token, ME, json!({})).await.0 == 200 };
    common::eventually(Duration::from_secs(5), "after a refetch the new key verifies", verified).await;
    assert_eq!(stub.fetches.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_new_kid_seen_first_is_fetched_and_accepted() {
    let stub = JwksStub::start(&["clerk-key.pem", "clerk-key-2.pem"]).await;
    let app = clerk_app(&stub).await;
    let (status, body) = app.gql_as(&clerk_token("clerk-key-2.pem", &good_claims()), ME, json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(stub.fetches.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn cached_keys_keep_working_while_the_jwks_endpoint_is_down() {
    let stub = JwksStub::start(&["clerk-key.pem"]).await;
    let app = clerk_app(&stub).await;
    let token = clerk_token("clerk-key.pem", &good_claims());
    assert_eq!(app.gql_as(&token, ME, json!({})).await.0, 200);
    stub.down.store(true, Ordering::SeqCst);
    assert_eq!(app.gql_as(&token, ME, json!({})).await.0, 200);
}

#[tokio::test]
async fn with_no_key_at_all_verification_fails_closed() {
    let stub = JwksStub::start(&["clerk-key.pem"]).await;
    stub.down.store(true, Ordering::SeqCst);
    let app = clerk_app(&stub).await;
    let (status, body) = app.gql_as(&clerk_token("clerk-key.pem", &good_claims()), ME, json!({})).await;
    assert_eq!(status, 401);
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("no signing keys"), "{body}");
}

#[tokio::test]
async fn both_org_claim_formats_are_read() {
    let app = TestApp::spawn_with(common::clerk_pem).await;
    let v1 = clerk_token("clerk-key.pem", &{
        let mut c = good_claims();
        c["org_id"] = json!("org_1");
        c["org_role"] = json!("org:admin");
        c
    });
    let v2 = clerk_token("clerk-key.pem", &{
        let mut c = good_claims();
        c["o"] = json!({"id": "org_2", "rol": "admin", "slg": "acme", "per": "read,write"});
        c
    });
    for (token, id) in [(v1, "org_1"), (v2, "org_2")] {
        let principal = app.state.auth.from_token(&token).await.unwrap();
        let ensemble::domain::Principal::User(user) = principal else { panic!("a user") };
        assert_eq!(user.org.unwrap().id, id);
    }
}

#[tokio::test]
async fn admin_users_from_the_environment_are_admins() {
    let app = TestApp::spawn_with(|c| {
        common::clerk_pem(c);
        c.auth.admin_users = vec!["user_clerk".into()];
    })
    .await;
    let (_, body) = app.gql_as(&clerk_token("clerk-key.pem", &good_claims()), ME, json!({})).await;
    assert_eq!(body["data"]["me"]["role"], "ADMIN");
}

#[tokio::test]
async fn a_websocket_carries_the_principal_of_its_init_payload() {
    let app = TestApp::spawn().await;
    for payload in [
        json!({"authorization": format!("Bearer {}", app.token("user_ws", GlobalRole::Member))}),
        json!({"token": app.token("user_ws", GlobalRole::Member)}),
    ] {
        let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
        ws.send(json!({"type": "connection_init", "payload": payload})).await;
        assert_eq!(ws.next_json().await["type"], "connection_ack");
        ws.send(json!({"id": "1", "type": "subscribe", "payload": {"query": ME}})).await;
        assert_eq!(ws.next_json().await["payload"]["data"]["me"]["id"], "user_ws");
    }
}

#[tokio::test]
async fn a_websocket_with_a_bad_token_closes_with_4403() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"authorization": "Bearer forged"}})).await;
    assert_eq!(ws.closed().await, (4403, "Forbidden".to_string()));
}

#[tokio::test]
async fn a_websocket_closes_with_4403_when_its_token_expires() {
    let app = TestApp::spawn().await;
    let dev = app.state.auth.dev.as_ref().unwrap();
    let token = dev.sign("user_brief", None, GlobalRole::Member, Duration::from_secs(2)).unwrap();
    let mut ws = WsClient::connect(app.addr, "graphql-transport-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"token": token}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    let (code, reason) = ws.closed().await;
    assert_eq!(code, 4403);
    assert!(reason.contains("expired"), "{reason}");
}

#[tokio::test]
async fn the_legacy_websocket_protocol_reads_the_same_credentials() {
    let app = TestApp::spawn().await;
    let mut ws = WsClient::connect(app.addr, "graphql-ws").await;
    let token = app.token("user_legacy", GlobalRole::Member);
    ws.send(json!({"type": "connection_init", "payload": {"authorization": format!("Bearer {token}")}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_ack");
    ws.send(json!({"id": "1", "type": "start", "payload": {"query": ME}})).await;
    assert_eq!(ws.next_json().await["payload"]["data"]["me"]["id"], "user_legacy");

    let mut ws = WsClient::connect(app.addr, "graphql-ws").await;
    ws.send(json!({"type": "connection_init", "payload": {"token": "forged"}})).await;
    assert_eq!(ws.next_json().await["type"], "connection_error");
}
