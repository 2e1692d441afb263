//! Workflows end to end: WORKFLOW templates run step by step on a team, outputs chained into
//! later steps, a failing step stopping the rest, and the bad inputs refused before anything runs.

use crate::common;

use common::{TestApp, first_code, problem_paths};
use ensemble::domain::GlobalRole;
use entity::{audit_logs, runs};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter};
use serde_json::{Value, json};

const RUN_WORKFLOW: &str = "mutation($template: ID!, $team: ID!, $variables: JSON) {
    runWorkflow(templateId: $template, teamId: $team, variables: $variables) {
        templateId templateVersion teamId status failedStep
        steps { id agent input status output error run { id status output agent } } } }";

/// Two echoing agents (the local echo model signs answers `[agent] You said: …`) and one that
/// is always down.
fn spec() -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [
            {"name": "writer", "model": "local/echo"},
            {"name": "editor", "model": "local/echo"},
            {"name": "broken", "model": "local/down"}
        ],
        "routing": {"default": "writer"}
    })
}

async fn team(app: &TestApp, token: &str) -> String {
    team_of(app, token, spec()).await
}

/// A team with `spec`; answers its id.
async fn team_of(app: &TestApp, token: &str, spec: Value) -> String {
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Writers\", spec: $spec}) { id } }";
    let (_, body) = app.gql_as(token, create, json!({"spec": spec})).await;
    body["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string()
}

/// Creates a template from its scalar `fields` (GraphQL, e.g. `kind: QUERY, name: "X"`), `body`
/// and variable declarations, and answers its id.
async fn template(app: &TestApp, token: &str, fields: &str, body: Value, variables: Value) -> String {
    let create = format!(
        "mutation($body: JSON!, $variables: JSON!) {{ createTemplate(input: {{{fields}, body: $body, variables: $variables}}) {{ id }} }}"
    );
    let (_, answer) = app.gql_as(token, &create, json!({"body": body, "variables": variables})).await;
    answer["data"]["createTemplate"]["id"].as_str().unwrap_or_else(|| panic!("{fields}: {answer}")).to_string()
}

/// A QUERY template that summarises its `text`.
async fn summarise(app: &TestApp, token: &str) -> String {
    let body = json!({"prompt": "Summarise: {{ text }}"});
    let variables = json!([{"name": "text", "type": "string", "required": true}]);
    template(app, token, "kind: QUERY, name: \"Summarise\"", body, variables).await
}

/// A WORKFLOW template with `steps`, a required `topic` and `words` (100 by default).
async fn workflow(app: &TestApp, token: &str, steps: Value) -> String {
    let variables = json!([
        {"name": "topic", "type": "string", "required": true},
        {"name": "words", "type": "integer", "default": 100}
    ]);
    template(app, token, "kind: WORKFLOW, name: \"Article\"", json!({"steps": steps}), variables).await
}

async fn run_workflow(app: &TestApp, token: &str, template: &str, team: &str, variables: Value) -> Value {
    let (_, body) =
        app.gql_as(token, RUN_WORKFLOW, json!({"template": template, "team": team, "variables": variables})).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["runWorkflow"].clone()
}

/// Runs a workflow that must be refused as BAD_USER_INPUT; answers its problems' paths, sorted,
/// and the whole answer.
async fn refused(app: &TestApp, token: &str, template: &str, team: &str, variables: Value) -> (Vec<String>, Value) {
    let (_, body) =
        app.gql_as(token, RUN_WORKFLOW, json!({"template": template, "team": team, "variables": variables})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    let mut paths: Vec<String> = problem_paths(&body).into_iter().map(String::from).collect();
    paths.sort();
    (paths, body)
}

fn text<'a>(value: &'a Value, field: &str) -> &'a str {
    value[field].as_str().unwrap_or_else(|| panic!("no {field} in {value}"))
}

#[tokio::test]
async fn each_step_reads_the_output_of_the_one_before() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team(&app, &token).await;
    let query = summarise(&app, &token).await;
    let steps = json!([
        {"id": "first", "agent": "writer", "prompt": "Write {{ words }} words about {{ topic }}"},
        {"id": "second", "agent": "editor", "template": query, "variables": {"text": "{{ steps.first.output }}"}},
        {"id": "third", "prompt": "Polish this: {{ steps.second.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;

    let done = run_workflow(&app, &token, &article, &team, json!({"topic": "tides"})).await;
    assert_eq!((done["status"].as_str(), &done["failedStep"]), (Some("SUCCEEDED"), &Value::Null), "{done}");
    assert_eq!((text(&done, "templateId"), text(&done, "teamId")), (article.as_str(), team.as_str()));
    assert_eq!(done["templateVersion"], 1);
    let steps = done["steps"].as_array().unwrap();
    let ids: Vec<&str> = steps.iter().map(|s| text(s, "id")).collect();
    assert_eq!(ids, ["first", "second", "third"]);
    for step in steps {
        assert_eq!((step["status"].as_str(), &step["error"]), (Some("SUCCEEDED"), &Value::Null), "{step}");
        assert_eq!(step["run"]["status"], "SUCCEEDED", "{step}");
        assert_eq!(step["output"], step["run"]["output"], "the step's output is its run's: {step}");
    }
    assert_eq!(text(&steps[0], "input"), "Write 100 words about tides", "the default fills in `words`");
    assert_eq!(text(&steps[0], "output"), "[writer] You said: Write 100 words about tides");
    assert_eq!(text(&steps[1], "input"), format!("Summarise: {}", text(&steps[0], "output")));
    assert!(text(&steps[1], "output").starts_with("[editor] "), "{}", steps[1]);
    assert_eq!(text(&steps[2], "input"), format!("Polish this: {}", text(&steps[1], "output")));
    assert_eq!((&steps[2]["agent"], steps[2]["run"]["agent"].as_str()), (&Value::Null, Some("writer")), "routed");

    let read = "query($id: ID!) { run(id: $id) { id status input output agent } }";
    let (_, body) = app.gql_as(&token, read, json!({"id": steps[1]["run"]["id"]})).await;
    let stored = &body["data"]["run"];
    assert_eq!((stored["status"].as_str(), stored["agent"].as_str()), (Some("SUCCEEDED"), Some("editor")), "{body}");
    assert_eq!((&stored["input"], &stored["output"]), (&steps[1]["input"], &steps[1]["output"]));
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 3);

    let audited = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("template.workflow.run"))
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(audited.len(), 1, "one row per workflow");
    assert_eq!(
        (audited[0].resource_id.as_deref(), audited[0].team_id.as_deref()),
        (Some(article.as_str()), Some(team.as_str()))
    );
    let changes = audited[0].changes.clone().unwrap();
    assert_eq!((changes["status"].as_str(), changes["runs"].as_array().map(Vec::len)), (Some("succeeded"), Some(3)));
}

#[tokio::test]
async fn a_failing_step_stops_the_workflow_and_skips_the_rest() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team(&app, &token).await;
    let steps = json!([
        {"id": "draft", "agent": "writer", "prompt": "Write about {{ topic }}"},
        {"id": "check", "agent": "broken", "prompt": "Check: {{ steps.draft.output }}"},
        {"id": "publish", "agent": "editor", "prompt": "Publish: {{ steps.check.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;

    let done = run_workflow(&app, &token, &article, &team, json!({"topic": "tides"})).await;
    assert_eq!((done["status"].as_str(), done["failedStep"].as_str()), (Some("FAILED"), Some("check")), "{done}");
    let steps = done["steps"].as_array().unwrap();
    assert_eq!(steps[0]["status"], "SUCCEEDED");
    assert_eq!(text(&steps[0], "output"), "[writer] You said: Write about tides");
    assert_eq!((steps[1]["status"].as_str(), steps[1]["run"]["status"].as_str()), (Some("FAILED"), Some("FAILED")));
    assert_eq!(text(&steps[1], "input"), format!("Check: {}", text(&steps[0], "output")));
    assert!(text(&steps[1], "error").contains("local/down is always down"), "{}", steps[1]);
    assert_eq!(steps[1]["output"], Value::Null);
    assert_eq!(steps[2]["status"], "SKIPPED");
    for field in ["run", "input", "output", "error"] {
        assert_eq!(steps[2][field], Value::Null, "a skipped step has no {field}");
    }
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 2, "the skipped step ran nothing");
}

#[tokio::test]
async fn the_workflow_s_variables_are_each_step_s_run_variables() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    let spec = json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "writer", "model": "local/echo", "systemPrompt": "You write about {{ topic }}."}]
    });
    let team = team_of(&app, &token, spec).await;
    let steps = json!([
        {"id": "draft", "agent": "writer", "prompt": "Draft {{ words }} words"},
        {"id": "again", "agent": "writer", "prompt": "Again: {{ steps.draft.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;

    let done = run_workflow(&app, &token, &article, &team, json!({"topic": "tides"})).await;
    // The writer's system prompt needs `topic`: without the workflow's values its runs fail.
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let read = "query($id: ID!) { run(id: $id) { variables } }";
    for step in done["steps"].as_array().unwrap() {
        let (_, body) = app.gql_as(&token, read, json!({"id": step["run"]["id"]})).await;
        let variables = &body["data"]["run"]["variables"];
        assert_eq!(variables, &json!({"topic": "tides", "words": 100}), "{}: {body}", step["id"]);
    }
}

#[tokio::test]
async fn a_workflow_that_outlives_the_request_time_limit_is_answered_in_graphql_form_and_its_run_goes_on() {
    // Two steps of a 2 s model take 4 s; the server's limit is 3 s.
    let app = TestApp::spawn_with(|c| c.request_timeout_secs = 3).await;
    let token = app.token("user_author", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "slow", "model": "local/slow-2000"}]});
    let team = team_of(&app, &token, spec).await;
    let steps = json!([
        {"id": "first", "agent": "slow", "prompt": "About {{ topic }}"},
        {"id": "second", "agent": "slow", "prompt": "More: {{ steps.first.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;

    let started = std::time::Instant::now();
    let (status, body) = app
        .gql_as(&token, RUN_WORKFLOW, json!({"template": article, "team": team, "variables": {"topic": "tides"}}))
        .await;
    assert_eq!((status, first_code(&body)), (504, "REQUEST_TIMEOUT"), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.contains("longer than 3 s") && message.contains("runs it started go on"), "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(4), "answered at the limit: {:?}", started.elapsed());

    // The step that was running when the request stopped finishes all the same.
    let finished = || async {
        let list = "query($team: ID!) { runs(teamId: $team) { nodes { status input } } }";
        let (_, body) = app.gql_as(&token, list, json!({"team": team})).await;
        body["data"]["runs"]["nodes"]
            .as_array()
            .is_some_and(|runs| runs.iter().any(|run| run["status"] == "SUCCEEDED" && run["input"] == "About tides"))
    };
    common::eventually(std::time::Duration::from_secs(10), "the first step's run succeeds", finished).await;
}

#[tokio::test]
async fn bad_input_is_refused_before_any_step_runs() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team(&app, &token).await;
    let query = summarise(&app, &token).await;
    let article =
        workflow(&app, &token, json!([{"id": "draft", "agent": "writer", "prompt": "About {{ topic }}"}])).await;
    let ghostly = workflow(
        &app,
        &token,
        json!([
            {"id": "one", "agent": "ghost", "prompt": "{{ topic }}"},
            {"id": "two", "agent": "writer", "prompt": "{{ topic }}"},
            {"id": "three", "agent": "phantom", "prompt": "{{ topic }}"}
        ]),
    )
    .await;

    let (paths, _) = refused(&app, &token, &article, &team, json!({})).await;
    assert_eq!(paths, ["variables.topic"], "missing");
    let (paths, _) = refused(&app, &token, &article, &team, json!({"topic": 7, "words": "many", "tone": "dry"})).await;
    assert_eq!(paths, ["variables.tone", "variables.topic", "variables.words"], "mistyped and unknown, all listed");
    let (paths, _) = refused(&app, &token, &query, &team, json!({"text": "hello"})).await;
    assert_eq!(paths, ["templateId"], "a QUERY template does not run as a workflow");
    let (paths, body) = refused(&app, &token, &ghostly, &team, json!({"topic": "tides"})).await;
    assert_eq!(paths, ["body.steps[0].agent", "body.steps[2].agent"], "every missing agent");
    let problems = body["errors"][0]["extensions"]["problems"].to_string();
    assert!(problems.contains("`ghost`") && problems.contains("writer, editor, broken"), "{problems}");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 0, "nothing ran");
}

#[tokio::test]
async fn only_operators_of_a_team_they_can_see_run_workflows_on_it() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let strangers_team = team(&app, &stranger).await;
    let team = team(&app, &token).await;
    let fields = format!("kind: WORKFLOW, name: \"Shared\", visibility: TEAM, teamId: \"{team}\"");
    let steps = json!({"steps": [{"id": "draft", "prompt": "Hello"}]});
    let shared = template(&app, &token, &fields, steps, json!([])).await;
    let viewer = app.token("user_viewer", GlobalRole::Member);
    app.gql_as(&viewer, "{ me { id } }", json!({})).await;
    let add = "mutation($team: ID!) { addTeamMember(teamId: $team, input: {userId: \"user_viewer\", role: VIEWER}) { role } }";
    let (_, body) = app.gql_as(&token, add, json!({"team": team})).await;
    assert_eq!(body["data"]["addTeamMember"]["role"], "VIEWER", "{body}");

    for (who, on, code) in [
        (&token, strangers_team.as_str(), "NOT_FOUND"),
        (&token, "team_nope", "NOT_FOUND"),
        (&viewer, team.as_str(), "FORBIDDEN"),
    ] {
        let (_, body) = app.gql_as(who, RUN_WORKFLOW, json!({"template": shared, "team": on})).await;
        assert_eq!(first_code(&body), code, "{on}: {body}");
    }
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 0, "nothing ran");
    let done = run_workflow(&app, &token, &shared, &team, Value::Null).await;
    assert_eq!(done["status"], "SUCCEEDED", "the operator may: {done}");
}

/// `/metrics`' value of `series`; 0 before it first appears.
async fn metric(app: &TestApp, series: &str) -> f64 {
    let text = app.client.get(app.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let prefix = format!("{series} ");
    text.lines().find_map(|line| line.strip_prefix(prefix.as_str())).map_or(0.0, |v| v.parse().unwrap())
}

#[tokio::test]
async fn metrics_count_workflow_steps_by_how_they_ended() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team(&app, &token).await;
    let steps = json!([
        {"id": "draft", "agent": "writer", "prompt": "Write about {{ topic }}"},
        {"id": "check", "agent": "broken", "prompt": "Check: {{ steps.draft.output }}"},
        {"id": "publish", "agent": "editor", "prompt": "Publish: {{ steps.check.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;
    let series = |status: &str| format!("ensemble_workflow_steps_total{{status=\"{status}\"}}");
    let mut before = Vec::new();
    for status in ["succeeded", "failed", "skipped"] {
        before.push(metric(&app, &series(status)).await);
    }

    run_workflow(&app, &token, &article, &team, json!({"topic": "tides"})).await;

    for (status, before) in ["succeeded", "failed", "skipped"].into_iter().zip(before) {
        assert_eq!(metric(&app, &series(status)).await - before, 1.0, "{status}");
    }
}
