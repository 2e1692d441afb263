//! Export and import: a self-contained document that round-trips, refuses what it cannot read,
//! and never carries members or secrets.

mod common;

use common::{TestApp, first_code};
use ensemble::auth::GlobalRole;
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

    let mut older = document.clone();
    older.as_object_mut().unwrap().remove("minor");
    let (_, body) = app.gql_as(&owner, IMPORT, json!({"doc": older})).await;
    assert_eq!(body["data"]["importTeam"]["warnings"].as_array().map(Vec::len), Some(1), "{body}");

    let huge = json!({"query": IMPORT, "variables": {"doc": {"format": "ensemble.team-export/v1", "name": "x".repeat(2 * 1024 * 1024)}}});
    let response = app.client.post(app.url("/graphql")).bearer_auth(&owner).json(&huge).send().await.unwrap();
    assert_eq!(response.status(), 413);
}
