//! Usage counting and rate limits.

use crate::common;

use common::{TestApp, first_code};
use ensemble::domain::GlobalRole;
use entity::usage_daily;
use sea_orm::EntityTrait;
use serde_json::json;

#[tokio::test]
async fn every_request_counts_against_its_principal() {
    let app = TestApp::spawn().await;
    let token = app.token("user_u", GlobalRole::Member);
    for _ in 0..3 {
        app.gql_as(&token, "{ me { id } }", json!({})).await;
    }
    let (_, body) = app
        .gql_as(
            &token,
            "mutation { createApiKey(input: {name: \"k\", scopes: [TEAMS_READ]}) { secret apiKey { id } } }",
            json!({}),
        )
        .await;
    let key = body["data"]["createApiKey"]["secret"].as_str().unwrap().to_string();
    let key_id = body["data"]["createApiKey"]["apiKey"]["id"].as_str().unwrap().to_string();
    app.gql_as(&key, "{ me { id } }", json!({})).await;
    app.state.usage.flush().await.unwrap();

    let rows = usage_daily::Entity::find().all(&app.state.db).await.unwrap();
    let today = chrono::Utc::now().format("%Y-%m-%d").to_string();
    let as_user = rows.iter().find(|r| r.user_id == "user_u" && r.api_key_id.is_empty()).expect("user row");
    assert_eq!((as_user.day.as_str(), as_user.requests), (today.as_str(), 4));
    let as_key = rows.iter().find(|r| r.api_key_id == key_id).expect("key row");
    assert_eq!((as_key.user_id.as_str(), as_key.requests), ("user_u", 1));

    // Counts add up across flushes.
    app.gql_as(&token, "{ me { id } }", json!({})).await;
    app.state.usage.flush().await.unwrap();
    let rows = usage_daily::Entity::find().all(&app.state.db).await.unwrap();
    assert_eq!(rows.iter().find(|r| r.user_id == "user_u" && r.api_key_id.is_empty()).unwrap().requests, 5);
}

#[tokio::test]
async fn past_the_allowance_requests_are_429_with_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_minute = 60;
        c.rate_limit_burst = 5;
    })
    .await;
    let token = app.token("user_busy", GlobalRole::Member);
    for i in 0..5 {
        let (status, _) = app.gql_as(&token, "{ me { id } }", json!({})).await;
        assert_eq!(status, 200, "request {i} is within the burst");
    }
    let response = app
        .client
        .post(app.url("/graphql"))
        .bearer_auth(&token)
        .json(&json!({"query": "{ me { id } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "1");
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(first_code(&body), "RATE_LIMITED");
    assert_eq!(body["errors"][0]["extensions"]["retryAfter"], 1);

    let other = app.token("user_calm", GlobalRole::Member);
    assert_eq!(app.gql_as(&other, "{ me { id } }", json!({})).await.0, 200, "limits are per principal");
}
