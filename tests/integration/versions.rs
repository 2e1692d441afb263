//! Team versions: specs validated as a whole, immutable history, diff, rollback, and
//! concurrent updates that lose nothing.

use crate::common;

use common::{TestApp, first_code, meanwhile};
use ensemble::{
    domain::{Caller, GlobalRole},
    service::{
        teams::{self, TeamChanges},
        versions,
    },
};
use sea_orm::EntityTrait;
use serde_json::{Value, json};

const UPDATE: &str = "mutation($id: ID!, $spec: JSON, $message: String, $v: Int) { updateTeam(id: $id, input: {spec: $spec, message: $message}, expectedVersion: $v) { version spec } }";

fn spec(model: &str) -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [
            {"name": "triage", "model": "local/echo", "systemPrompt": "Sort requests."},
            {"name": "billing", "model": model, "systemPrompt": "Answer billing questions."}
        ],
        "routing": {"rules": [{"name": "money", "when": {"any": [{"contains": ["invoice", "refund"]}, {"regex": "(?i)charge"}]}, "routeTo": "billing"}], "default": "triage"},
        "fallbacks": {"billing": ["triage"]}
    })
}

async fn team(app: &TestApp) -> (String, String) {
    let token = app.token("user_v", GlobalRole::Member);
    let (_, body) = app
        .gql_as(
            &token,
            "mutation($spec: JSON) { createTeam(input: {name: \"Support\", spec: $spec}) { id version } }",
            json!({"spec": spec("local/echo")}),
        )
        .await;
    assert_eq!(body["data"]["createTeam"]["version"], 1, "{body}");
    (token, body["data"]["createTeam"]["id"].as_str().unwrap().to_string())
}

#[tokio::test]
async fn each_spec_change_is_a_new_immutable_version() {
    let app = TestApp::spawn().await;
    let (token, id) = team(&app).await;
    for (model, expected) in [("openai/gpt-4o-mini", 2), ("openai/gpt-4o", 3), ("openai/gpt-4o", 3)] {
        let (_, body) =
            app.gql_as(&token, UPDATE, json!({"id": id, "spec": spec(model), "message": format!("use {model}")})).await;
        assert_eq!(body["data"]["updateTeam"]["version"], expected, "{body}");
    }
    let history = "query($id: ID!) { teamVersions(teamId: $id, first: 2) { nodes { version message } pageInfo { hasNextPage endCursor } } }";
    let (_, body) = app.gql_as(&token, history, json!({"id": id})).await;
    let page = &body["data"]["teamVersions"];
    assert_eq!(
        page["nodes"],
        json!([{"version": 3, "message": "use openai/gpt-4o"}, {"version": 2, "message": "use openai/gpt-4o-mini"}])
    );
    assert_eq!(page["pageInfo"]["hasNextPage"], true);
    let at = "query($id: ID!) { team(id: $id) { version versionAt(n: 1) { spec message } } }";
    let (_, body) = app.gql_as(&token, at, json!({"id": id})).await;
    assert_eq!(body["data"]["team"]["version"], 3);
    assert_eq!(body["data"]["team"]["versionAt"]["spec"]["agents"][1]["model"], "local/echo");
    assert_eq!(body["data"]["team"]["versionAt"]["message"], "Created");
}

#[tokio::test]
async fn the_diff_of_two_versions_is_a_json_patch_with_readable_lines() {
    let app = TestApp::spawn().await;
    let (token, id) = team(&app).await;
    app.gql_as(&token, UPDATE, json!({"id": id, "spec": spec("openai/gpt-4o-mini")})).await;
    let diff = "query($id: ID!, $from: Int!, $to: Int!) { teamDiff(teamId: $id, from: $from, to: $to) { operations summary } }";
    let (_, body) = app.gql_as(&token, diff, json!({"id": id, "from": 1, "to": 2})).await;
    assert_eq!(
        body["data"]["teamDiff"]["operations"],
        json!([{"op": "replace", "path": "/agents/1/model", "value": "openai/gpt-4o-mini"}])
    );
    assert_eq!(body["data"]["teamDiff"]["summary"], json!(["agent billing: model local/echo → openai/gpt-4o-mini"]));
    let (_, body) = app.gql_as(&token, diff, json!({"id": id, "from": 1, "to": 9})).await;
    assert_eq!(first_code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn rollback_appends_a_version_equal_to_the_old_one() {
    let app = TestApp::spawn().await;
    let (token, id) = team(&app).await;
    app.gql_as(&token, UPDATE, json!({"id": id, "spec": spec("openai/gpt-4o")})).await;
    let rollback = "mutation($id: ID!, $v: Int!) { rollbackTeam(teamId: $id, version: $v) { version spec } }";
    let (_, body) = app.gql_as(&token, rollback, json!({"id": id, "v": 1})).await;
    assert_eq!(body["data"]["rollbackTeam"]["version"], 3);
    assert_eq!(body["data"]["rollbackTeam"]["spec"]["agents"][1]["model"], "local/echo");
    let (_, body) = app.gql_as(&token, rollback, json!({"id": id, "v": 3})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "rolling back to the current version");
    let (_, body) = app.gql_as(&token, rollback, json!({"id": id, "v": 42})).await;
    assert_eq!(first_code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn an_invalid_spec_lists_every_problem_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let (token, id) = team(&app).await;
    let mut bad = spec("nowhere/model");
    bad["fallbacks"] = json!({"billing": ["triage"], "triage": ["billing"]});
    bad["agents"][0]["temperature"] = json!(5);
    bad["routing"]["rules"][0]["when"] = json!({"regex": "(unclosed"});
    let (_, body) = app.gql_as(&token, UPDATE, json!({"id": id, "spec": bad})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    let problems: Vec<&str> = body["errors"][0]["extensions"]["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["path"].as_str().unwrap())
        .collect();
    for path in
        ["spec.agents[0].temperature", "spec.agents[1].model", "spec.routing.rules[0].when.regex", "spec.fallbacks"]
    {
        assert!(problems.contains(&path), "{path} in {problems:?}");
    }
    let (_, body) = app.gql_as(&token, "query($id: ID!) { team(id: $id) { version } }", json!({"id": id})).await;
    assert_eq!(body["data"]["team"]["version"], 1);
}

#[tokio::test]
async fn twenty_concurrent_updates_make_twenty_contiguous_versions() {
    let app = TestApp::spawn().await;
    let (token, id) = team(&app).await;
    let updates: Vec<_> = (0..20)
        .map(|i| {
            let variables = json!({"id": id, "spec": spec(&format!("openai/model-{i}"))});
            app.gql_as(&token, UPDATE, variables)
        })
        .collect();
    for (status, body) in futures_util::future::join_all(updates).await {
        assert_eq!(status, 200);
        assert!(body.get("errors").is_none(), "{body}");
    }
    let history = "query($id: ID!) { teamVersions(teamId: $id, first: 100) { nodes { version } } }";
    let (_, body) = app.gql_as(&token, history, json!({"id": id})).await;
    let versions: Vec<i64> = body["data"]["teamVersions"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, (1..=21).rev().collect::<Vec<i64>>());
}

#[tokio::test]
async fn of_two_updates_from_the_same_version_exactly_one_wins() {
    let app = TestApp::spawn().await;
    let (token, id) = team(&app).await;
    let a = app.gql_as(&token, UPDATE, json!({"id": id, "spec": spec("openai/a"), "v": 1}));
    let b = app.gql_as(&token, UPDATE, json!({"id": id, "spec": spec("openai/b"), "v": 1}));
    let (a, b) = tokio::join!(a, b);
    let codes = [first_code(&a.1).to_string(), first_code(&b.1).to_string()];
    assert_eq!(codes.iter().filter(|c| *c == "CONFLICT").count(), 1, "{a:?} {b:?}");
    assert_eq!(codes.iter().filter(|c| *c == "<no code>").count(), 1, "{a:?} {b:?}");
}

/// The README's versioning walkthrough, run as written.
#[tokio::test]
async fn the_readme_versioning_walkthrough_works() {
    let readme = include_str!("../../README.md");
    let section = readme.split("### Versioning walkthrough").nth(1).expect("the walkthrough section");
    let blocks: Vec<&str> =
        section.split("```graphql").skip(1).map(|b| b.split("```").next().unwrap()).take(2).collect();
    let document = blocks.join("\n");
    let app = TestApp::spawn().await;
    let token = app.token("user_reader", GlobalRole::Member);
    let run = |operation: &'static str, variables: Value| app.operation(&token, &document, operation, variables);
    let id = run("Create", json!({})).await["createTeam"]["id"].clone();
    assert_eq!(run("UpdateOnce", json!({"id": id})).await["updateTeam"]["version"], 2);
    assert_eq!(run("UpdateTwice", json!({"id": id})).await["updateTeam"]["version"], 3);
    let diff = run("Diff", json!({"id": id})).await;
    assert_eq!(diff["teamDiff"]["summary"], json!(["agent billing: model openai/gpt-4o-mini → openai/gpt-4o"]));
    assert_eq!(run("History", json!({"id": id})).await["teamVersions"]["nodes"].as_array().map(Vec::len), Some(3));
    assert_eq!(run("Rollback", json!({"id": id})).await["rollbackTeam"]["version"], 4);
    let exported = run("Export", json!({"id": id})).await["exportTeam"].clone();
    let copy = run("Import", json!({"document": exported})).await;
    assert_eq!(copy["importTeam"]["team"]["version"], 1, "{copy}");
    assert_ne!(copy["importTeam"]["team"]["id"], id, "the copy is a new team");
}

#[tokio::test]
async fn a_rollback_that_meets_another_change_restores_on_top_of_it() {
    let app = TestApp::spawn().await;
    let (token, id) = team(&app).await;
    app.must(&token, UPDATE, json!({"id": id, "spec": spec("openai/gpt-4o")})).await;
    let caller = Caller { principal: app.state.auth.from_token(&token).await.unwrap(), meta: Default::default() };
    let (state, other, team_id) = (app.state.clone(), caller.clone(), id.clone());
    let meanwhile = meanwhile::chain(&app.state, async move {
        let changes = TeamChanges {
            name: None,
            description: None,
            visibility: None,
            spec: Some(spec("openai/gpt-4o-mini")),
            message: None,
            expected_version: None,
        };
        let providers = &state.config.runs.providers;
        teams::update(&state.db, &state.audit, &state.caches, providers, &other, &team_id, changes).await.unwrap();
    });

    let team = versions::rollback(&app.state.db, &meanwhile, &caller, &id, 1, None).await.unwrap();
    assert_eq!(team.version, 4, "after the other change's version 3");
    assert_eq!(team.spec["agents"][1]["model"], "local/echo");
    let history = "query($id: ID!) { teamVersions(teamId: $id) { nodes { version message } } }";
    let nodes = app.must(&token, history, json!({"id": id})).await["teamVersions"]["nodes"].clone();
    assert_eq!(nodes[0], json!({"version": 4, "message": "Rollback to version 1"}));
    assert_eq!(nodes.as_array().map(Vec::len), Some(4), "{nodes}");
    let stored = entity::teams::Entity::find_by_id(&id).one(&app.state.db).await.unwrap();
    assert_eq!(stored.as_ref(), Some(&team), "the team answered is the team stored");
}
