//! Export and import: a self-contained document that round-trips, refuses what it cannot read,
//! and never carries members or secrets.

use crate::common;

use common::{TestApp, first_code};
use ensemble::domain::GlobalRole;
use sea_orm::EntityTrait;
use serde_json::{Value, json};

const EXPORT: &str = "query($id: ID!, $v: Int) { exportTeam(id: $id, version: $v) }";
const IMPORT: &str = "mutation($doc: JSON!, $name: String) { importTeam(document: $doc, name: $name) { team { id name version spec myRole } warnings } }";

async fn team(app: &TestApp, token: &str) -> String {
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "solo", "model": "local/echo", "systemPrompt": "Hi"}]});
    let create =
        "mutation($spec: JSON) { createTeam(input: {name: \"Exported\", description: \"d\", spec: $spec}) { id } }";
    let (_, body) = app.gql_as(token, create, json!({"spec": spec})).await;
    let id = body["data"]["createTeam"]["id"].as_str().unwrap().to_string();
    let guest = app.token("user_guest", GlobalRole::Member);
    app.gql_as(&guest, "{ me { id } }", json!({})).await;
    let add =
        "mutation($id: ID!) { addTeamMember(teamId: $id, input: {userId: \"user_guest\", role: VIEWER}) { userId } }";
    app.gql_as(token, add, json!({"id": id})).await;
    id
}

#[tokio::test]
async fn export_then_import_then_export_round_trips_the_spec() {
    let app = TestApp::spawn().await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let id = team(&app, &owner).await;
    let (_, body) = app.gql_as(&owner, EXPORT, json!({"id": id})).await;
    let document = body["data"]["exportTeam"].clone();
    assert_eq!(document["format"], "ensemble.team-export/v1");
    assert_eq!(document["source"]["version"], 1);
    let text = document.to_string();
    assert!(!text.contains("user_guest") && !text.contains("user_owner"), "no member identities: {text}");

    let importer = app.token("user_importer", GlobalRole::Member);
    let (_, body) = app.gql_as(&importer, IMPORT, json!({"doc": document, "name": "Copy"})).await;
    let imported = &body["data"]["importTeam"];
    assert_eq!(imported["warnings"], json!([]));
    assert_eq!(imported["team"]["name"], "Copy");
    assert_eq!(imported["team"]["myRole"], "OWNER");
    assert_ne!(imported["team"]["id"], id.as_str(), "fresh ids");
    let (_, again) = app.gql_as(&importer, EXPORT, json!({"id": imported["team"]["id"]})).await;
    assert_eq!(again["data"]["exportTeam"]["spec"], document["spec"], "the spec round-trips identically");
}

#[tokio::test]
async fn the_download_needs_access_like_the_query() {
    let app = TestApp::spawn().await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let id = team(&app, &owner).await;
    let response = app.client.get(app.url(&format!("/teams/{id}/export"))).bearer_auth(&owner).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-disposition"].to_str().unwrap().starts_with("attachment"));
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["name"], "Exported");

    let stranger = app.token("user_stranger", GlobalRole::Member);
    let response = app.client.get(app.url(&format!("/teams/{id}/export"))).bearer_auth(&stranger).send().await.unwrap();
    assert_eq!(response.status(), 404, "another user's team");
    let (_, body) = app.gql_as(&stranger, EXPORT, json!({"id": id})).await;
    assert_eq!(first_code(&body), "NOT_FOUND");
}

async fn download(app: &TestApp, path: &str, token: Option<&str>) -> reqwest::Response {
    let request = app.client.get(app.url(path));
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.expect("request sent")
}

/// The status, and the one error of a GraphQL-shaped error body: `{"errors": [{"message",
/// "extensions": {"code", …}}]}` and nothing else.
async fn failure(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let body: Value = response.json().await.expect("a JSON body");
    assert_eq!(body.as_object().map(|o| o.keys().collect::<Vec<_>>()), Some(vec![&"errors".to_string()]), "{body}");
    let error = body["errors"][0].clone();
    assert!(error["message"].is_string() && error["extensions"]["code"].is_string(), "{body}");
    (status, error)
}

#[tokio::test]
async fn download_failures_answer_the_graphql_error_shape_with_the_status_of_their_code() {
    let app = TestApp::spawn().await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let id = team(&app, &owner).await;
    let path = format!("/teams/{id}/export");

    // Without credentials a private team is not found, as `exportTeam` says.
    let (status, error) = failure(download(&app, &path, None).await).await;
    assert_eq!((status, error["extensions"]["code"].as_str()), (404, Some("NOT_FOUND")), "{error}");
    assert_eq!(first_code(&app.gql(EXPORT, json!({"id": id})).await), "NOT_FOUND");
    let response = download(&app, &path, Some("not-a-token")).await;
    assert_eq!(response.headers().get("www-authenticate").map(|v| v.to_str().unwrap()), Some("Bearer"));
    let (status, error) = failure(response).await;
    assert_eq!((status, error["extensions"]["code"].as_str()), (401, Some("UNAUTHENTICATED")), "{error}");

    let stranger = app.token("user_stranger", GlobalRole::Member);
    let (status, error) = failure(download(&app, &path, Some(&stranger)).await).await;
    assert_eq!((status, error["extensions"]["code"].as_str()), (404, Some("NOT_FOUND")), "{error}");

    let (status, error) = failure(download(&app, &format!("{path}?version=two"), Some(&owner)).await).await;
    assert_eq!((status, error["extensions"]["code"].as_str()), (400, Some("BAD_USER_INPUT")), "{error}");
    assert_eq!(error["extensions"]["problems"][0]["path"], "version", "{error}");
    assert!(error["message"].as_str().unwrap().starts_with("version: "), "{error}");
    let (status, error) = failure(download(&app, &format!("{path}?version=9"), Some(&owner)).await).await;
    assert_eq!((status, error["extensions"]["code"].as_str()), (404, Some("NOT_FOUND")), "{error}");

    let response = download(&app, &format!("{path}?version=1"), Some(&owner)).await;
    assert_eq!(response.status(), 200);
    let document: Value = response.json().await.unwrap();
    assert_eq!(document["source"]["version"], 1);
}

#[tokio::test]
async fn downloads_are_counted_and_rate_limited_like_graphql_operations() {
    let app = TestApp::spawn_with(|c| {
        c.usage_flush_secs = 3600;
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    let owner = app.token("user_owner", GlobalRole::Member);
    // Creating the team takes one of the burst of three; two downloads take the rest.
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "solo", "model": "local/echo"}]});
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Exported\", spec: $spec}) { id } }";
    let (_, body) = app.gql_as(&owner, create, json!({"spec": spec})).await;
    let id = body["data"]["createTeam"]["id"].as_str().unwrap().to_string();
    app.state.usage.flush().await.unwrap();
    let requests = || async {
        app.state.usage.flush().await.unwrap();
        let rows = entity::usage_daily::Entity::find().all(&app.state.db).await.unwrap();
        rows.iter().filter(|r| r.user_id == "user_owner").map(|r| r.requests).sum::<i64>()
    };
    let before = requests().await;
    let path = format!("/teams/{id}/export");

    assert_eq!(download(&app, &path, Some(&owner)).await.status(), 200);
    assert_eq!(requests().await, before + 1, "the download counts as a request");
    assert_eq!(download(&app, &path, Some(&owner)).await.status(), 200);
    let limited = download(&app, &path, Some(&owner)).await;
    let retry_after: u64 = limited.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!(retry_after >= 1, "{retry_after}");
    let (status, error) = failure(limited).await;
    assert_eq!((status, error["extensions"]["code"].as_str()), (429, Some("RATE_LIMITED")), "{error}");
    let (_, body) = app.gql_as(&owner, "{ me { id } }", json!({})).await;
    assert_eq!(first_code(&body), "RATE_LIMITED", "downloads and operations share one limit: {body}");
}

#[tokio::test]
async fn imports_refuse_what_they_cannot_read() {
    let app = TestApp::spawn().await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let id = team(&app, &owner).await;
    let document = app.gql_as(&owner, EXPORT, json!({"id": id})).await.1["data"]["exportTeam"].clone();

    let mut newer = document.clone();
    newer["format"] = json!("ensemble.team-export/v2");
    let (_, body) = app.gql_as(&owner, IMPORT, json!({"doc": newer})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("newer Ensemble"), "{body}");

    let mut cyclic = document.clone();
    cyclic["spec"]["agents"] = json!([{"name": "a", "model": "local/echo"}, {"name": "b", "model": "local/echo"}]);
    cyclic["spec"]["fallbacks"] = json!({"a": ["b"], "b": ["a"]});
    let (_, body) = app.gql_as(&owner, IMPORT, json!({"doc": cyclic})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    assert!(body.to_string().contains("cycle"), "{body}");

    let (_, body) = app.gql_as(&owner, IMPORT, json!({"doc": "not an object"})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    assert_eq!(body["errors"][0]["message"], "document: must be a JSON object", "{body}");

    let mut elsewhere = document.clone();
    elsewhere["spec"]["agents"][0]["model"] = json!("mistral/large");
    let (_, body) = app.gql_as(&owner, IMPORT, json!({"doc": elsewhere})).await;
    let unknown = "spec.agents[0].model: unknown provider \"mistral\" — set ENSEMBLE_PROVIDER_MISTRAL_BASE_URL";
    assert_eq!(body["errors"][0]["message"], unknown, "the first problem in words: {body}");

    let mut older = document.clone();
    older.as_object_mut().unwrap().remove("minor");
    let (_, body) = app.gql_as(&owner, IMPORT, json!({"doc": older})).await;
    assert_eq!(body["data"]["importTeam"]["warnings"].as_array().map(Vec::len), Some(1), "{body}");

    let huge = json!({"query": IMPORT, "variables": {"doc": {"format": "ensemble.team-export/v1", "name": "x".repeat(2 * 1024 * 1024)}}});
    let response = app.client.post(app.url("/graphql")).bearer_auth(&owner).json(&huge).send().await.unwrap();
    assert_eq!(response.status(), 413);
}
