//! The shipped starters as a newcomer uses them: every one instantiates and runs offline with
//! its example, and the README's templates walkthrough works as written.

use crate::common;

use std::collections::HashMap;

use common::TestApp;
use ensemble::{
    domain::GlobalRole,
    service::templates::{body::Kind, starters},
};
use serde_json::{Value, json};

const INSTANTIATE: &str =
    "mutation($id: ID!, $input: InstantiateTemplateInput!) { instantiateTemplate(id: $id, input: $input) { id } }";
const RUN: &str =
    "mutation($t: ID!, $c: String!) { runTeam(teamId: $t, input: {content: $c}) { status output error } }";
const RENDER: &str = "query($id: ID!, $v: JSON) { renderTemplate(id: $id, variables: $v) }";
const WORKFLOW: &str = "mutation($id: ID!, $t: ID!, $v: JSON) { runWorkflow(templateId: $id, teamId: $t, variables: $v) { status failedStep steps { id iteration status output error run { id } } } }";

/// A team made from a TEAM or DEMO starter with its example's variables.
async fn make_team(app: &TestApp, token: &str, starter: &starters::Starter) -> Value {
    let input = json!({"name": format!("From {}", starter.slug), "variables": starter.example.variables});
    app.must(token, INSTANTIATE, json!({"id": starter.slug, "input": input})).await["instantiateTemplate"]["id"].clone()
}

#[tokio::test]
async fn every_starter_instantiates_and_runs_offline() {
    let app = TestApp::spawn_with(|config| config.rate_limit_per_minute = 0).await;
    let token = app.token("user_newcomer", GlobalRole::Member);
    let by_slug: HashMap<&str, &starters::Starter> = starters::all().iter().map(|s| (s.slug.as_str(), s)).collect();
    let plain = app.must(&token, "mutation { createTeam(input: {name: \"Plain\"}) { id } }", json!({})).await;
    let plain = plain["createTeam"]["id"].clone();
    for starter in starters::all() {
        let slug = starter.slug.as_str();
        let example = &starter.example;
        match starter.kind {
            Kind::Team | Kind::Demo => {
                let team = make_team(&app, &token, starter).await;
                let input = example.input.clone().unwrap_or_else(|| "Hello".into());
                let ran = app.must(&token, RUN, json!({"t": team, "c": input})).await["runTeam"].clone();
                assert_eq!(ran["status"], "SUCCEEDED", "{slug}: {ran}");
            }
            Kind::Query => {
                let rendered = app.must(&token, RENDER, json!({"id": slug, "v": example.variables})).await;
                let prompt = rendered["renderTemplate"].as_str().unwrap().to_string();
                assert!(!prompt.trim().is_empty() && !prompt.contains("{{"), "{slug}: {prompt}");
                let ran = app.must(&token, RUN, json!({"t": plain, "c": prompt})).await["runTeam"].clone();
                assert_eq!(ran["status"], "SUCCEEDED", "{slug}: {ran}");
            }
            Kind::Workflow => {
                let team_slug = example.team.as_deref().expect("a workflow's example names its team");
                let team = make_team(&app, &token, by_slug[team_slug]).await;
                let ran = app.must(&token, WORKFLOW, json!({"id": slug, "t": team, "v": example.variables})).await;
                let result = &ran["runWorkflow"];
                assert_eq!(result["status"], "SUCCEEDED", "{slug}: {result}");
                let steps = result["steps"].as_array().unwrap();
                // A step whose condition did not hold is skipped; every other one answered.
                assert!(
                    steps.iter().all(|s| s["status"] == "SUCCEEDED" && s["output"].is_string()
                        || s["status"] == "SKIPPED" && s["run"].is_null()),
                    "{slug}: {result}"
                );
                if slug == "draft-critique-revise" {
                    let text = |s: &Value, field: &str| s[field].as_str().unwrap_or_default().to_string();
                    let rounds: Vec<String> = steps
                        .iter()
                        .map(|s| format!("{}#{} {}", text(s, "id"), s["iteration"], text(s, "status")))
                        .collect();
                    let expected = [
                        "draft#0 SUCCEEDED",
                        "critique#1 SUCCEEDED",
                        "revision#1 SUCCEEDED",
                        "critique#2 SUCCEEDED",
                        "revision#2 SUCCEEDED",
                        "critique#3 SUCCEEDED",
                        "revision#3 SKIPPED",
                        "final#0 SUCCEEDED",
                    ];
                    assert_eq!(rounds, expected, "two rounds of changes, then the scripted critic approves");
                }
            }
        }
    }
}

/// The README's templates walkthrough, run as written.
#[tokio::test]
async fn the_readme_templates_walkthrough_works() {
    let readme = include_str!("../../README.md");
    let section = readme.split("### Templates walkthrough").nth(1).expect("the walkthrough section");
    let document = section.split("```graphql").nth(1).and_then(|b| b.split("```").next()).expect("the document");
    let app = TestApp::spawn().await;
    let token = app.token("user_reader", GlobalRole::Member);
    let run = |operation: &'static str, variables: Value| app.operation(&token, document, operation, variables);
    let starters = run("Starters", json!({})).await["templates"]["nodes"].clone();
    for kind in ["TEAM", "QUERY", "WORKFLOW", "DEMO"] {
        let count = starters.as_array().unwrap().iter().filter(|s| s["kind"] == kind).count();
        assert!(count >= 4, "{count} {kind} starters: {starters}");
    }
    let team = run("Instantiate", json!({})).await["instantiateTemplate"]["id"].clone();
    let report = run("Report", json!({"team": team})).await["runWorkflow"].clone();
    assert_eq!(report["status"], "SUCCEEDED", "{report}");
    let steps = report["steps"].as_array().unwrap();
    assert!(steps.len() >= 3, "{report}");
    let first = steps[0]["output"].as_str().unwrap();
    assert!(steps[1]["input"].as_str().unwrap().contains(first), "the second step reads the first: {report}");
    let rendered = run("Render", json!({})).await["renderTemplate"].as_str().unwrap().to_string();
    assert!(rendered.contains("Ensemble runs teams of agents."), "{rendered}");
}
