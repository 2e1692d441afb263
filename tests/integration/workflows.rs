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
        id templateId templateVersion teamId status failedStep
        steps { id agent input status output error run { id status output agent } } } }";

const START: &str = "mutation($team: ID!, $input: StartWorkflowInput!) {
    startWorkflow(teamId: $team, input: $input) { id status steps { id status } } }";

const READ: &str = "query($id: ID!) { workflowRun(id: $id) {
    id status failedStep errorCode error output tokensIn tokensOut costUsd finishedAt durationMs
    steps { id iteration agent input status output error attempts startedAt finishedAt
            run { id status output agent tokensIn tokensOut } } } }";

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
        .filter(audit_logs::Column::Action.eq("workflow.start"))
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(audited.len(), 1, "one row per workflow started");
    assert_eq!(
        (audited[0].resource_type.as_str(), audited[0].resource_id.as_deref(), audited[0].team_id.as_deref()),
        ("workflow_run", Some(text(&done, "id")), Some(team.as_str()))
    );
    let changes = audited[0].changes.clone().unwrap();
    assert_eq!((changes["templateId"].as_str(), &changes["version"]), (Some(article.as_str()), &json!(1)));

    let stored = app.must(&token, READ, json!({"id": done["id"]})).await["workflowRun"].clone();
    for (stored, answered) in stored["steps"].as_array().unwrap().iter().zip(steps) {
        for field in ["id", "agent", "input", "status", "output", "error"] {
            assert_eq!(stored[field], answered[field], "what runWorkflow answered is what is stored: {field}");
        }
        assert_eq!(stored["run"]["id"], answered["run"]["id"]);
    }
    assert_eq!(stored["output"], steps[2]["output"], "the workflow's output is its last step's");
    let sum = |field: &str| {
        stored["steps"].as_array().unwrap().iter().map(|s| s["run"][field].as_i64().unwrap()).sum::<i64>()
    };
    assert!(sum("tokensIn") > 0);
    assert_eq!(
        (stored["tokensIn"].as_i64(), stored["tokensOut"].as_i64()),
        (Some(sum("tokensIn")), Some(sum("tokensOut"))),
        "the steps' tokens add up on the workflow, each once: {stored}"
    );
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
async fn a_workflow_longer_than_the_wait_is_answered_running_and_ends_in_the_background() {
    // Two steps of a 2 s model take 4 s; runWorkflow waits 1 s, within the 3 s request limit.
    let app = TestApp::spawn_with(|c| {
        c.request_timeout_secs = 3;
        c.runs.run_wait_secs = 1;
    })
    .await;
    let token = app.token("user_author", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "slow", "model": "local/slow-2000"}]});
    let team = team_of(&app, &token, spec).await;
    let steps = json!([
        {"id": "first", "agent": "slow", "prompt": "About {{ topic }}"},
        {"id": "second", "agent": "slow", "prompt": "More: {{ steps.first.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;

    let started = std::time::Instant::now();
    let running = run_workflow(&app, &token, &article, &team, json!({"topic": "tides"})).await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2), "answered after the wait: {:?}", started.elapsed());
    assert_eq!(running["status"], "RUNNING", "{running}");
    let statuses: Vec<&str> = running["steps"].as_array().unwrap().iter().map(|s| text(s, "status")).collect();
    assert_eq!(statuses, ["RUNNING", "PENDING"], "{running}");

    let done = finished(&app, &token, text(&running, "id"), 15).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(text(&done["steps"][1], "input"), format!("More: {}", text(&done["steps"][0], "output")));
}

/// Reads workflow run `id` until it has finished (at most `secs`); answers it.
async fn finished(app: &TestApp, token: &str, id: &str, secs: u64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        let run = app.must(token, READ, json!({"id": id})).await["workflowRun"].clone();
        if run["finishedAt"].is_string() {
            return run;
        }
        assert!(std::time::Instant::now() < deadline, "not finished within {secs} s: {run}");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_workflow_on_a_nine_second_model_is_answered_at_once_and_stored_step_by_step() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "thinker", "model": "local/slow-9000"}]});
    let team = team_of(&app, &token, spec).await;
    let steps: Vec<Value> = (1..=4)
        .map(|n| json!({"id": format!("s{n}"), "agent": "thinker", "prompt": format!("Step {n} on {{{{ topic }}}}")}))
        .collect();
    let article = workflow(&app, &token, json!(steps)).await;

    let clock = std::time::Instant::now();
    let input = json!({"templateId": article, "variables": {"topic": "tides"}});
    let started = app.must(&token, START, json!({"team": team, "input": input})).await["startWorkflow"].clone();
    assert!(clock.elapsed() < std::time::Duration::from_secs(2), "startWorkflow answered in {:?}", clock.elapsed());
    assert_eq!(started["status"], "RUNNING", "{started}");
    let id = text(&started, "id").to_string();

    // Each step's output is stored before the next step starts.
    let mut seen_committed_while_next_ran = 0;
    let done = loop {
        let run = app.must(&token, READ, json!({"id": id})).await["workflowRun"].clone();
        let steps = run["steps"].as_array().unwrap().clone();
        for pair in steps.windows(2) {
            if pair[1]["status"] == "RUNNING" {
                assert_eq!(pair[0]["status"], "SUCCEEDED", "{run}");
                assert!(pair[0]["output"].is_string(), "{run}");
                seen_committed_while_next_ran += 1;
            }
        }
        if run["finishedAt"].is_string() {
            break run;
        }
        assert!(clock.elapsed() < std::time::Duration::from_secs(60), "not finished in 60 s: {run}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let took = clock.elapsed();
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert!(seen_committed_while_next_ran > 0, "a committed step was seen while the next ran");
    assert!(took >= std::time::Duration::from_secs(36) && took < std::time::Duration::from_secs(45), "{took:?}");
    let duration = done["durationMs"].as_i64().unwrap();
    assert!((36_000..42_000).contains(&duration), "about 4 × 9 s: {duration} ms");
    assert_eq!(done["output"], done["steps"][3]["output"], "{done}");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 4, "one run per step");
}

#[tokio::test]
async fn an_idempotency_key_starts_a_workflow_once() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team(&app, &token).await;
    let article =
        workflow(&app, &token, json!([{"id": "draft", "agent": "writer", "prompt": "About {{ topic }}"}])).await;
    let other = workflow(&app, &token, json!([{"id": "other", "agent": "editor", "prompt": "On {{ topic }}"}])).await;
    let input = |template: &str, key: &str| json!({"team": team, "input": {"templateId": template, "variables": {"topic": "tides"}, "idempotencyKey": key, "wait": true}});

    let first = app.must(&token, START, input(&article, "order-42")).await["startWorkflow"].clone();
    let again = app.must(&token, START, input(&article, "order-42")).await["startWorkflow"].clone();
    assert_eq!(again["id"], first["id"], "the same key answers the first run");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 1, "and starts nothing more");
    let started = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("workflow.start"));
    assert_eq!(started.count(&app.state.db).await.unwrap(), 1, "one start audited");

    let (_, body) = app.gql_as(&token, START, input(&other, "order-42")).await;
    assert_eq!(first_code(&body), "CONFLICT", "the key started another workflow: {body}");
    let fresh = app.must(&token, START, input(&article, "order-43")).await["startWorkflow"].clone();
    assert_ne!(fresh["id"], first["id"]);

    for (key, problem) in [("", "must not be empty"), (&"k".repeat(256) as &str, "the limit is 255")] {
        let (_, body) = app.gql_as(&token, START, input(&article, key)).await;
        assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(problem_paths(&body), ["input.idempotencyKey"], "{body}");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains(problem), "{body}");
    }
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 2, "refused starts run nothing");
}

#[tokio::test]
async fn a_cancelled_workflow_stops_its_step_and_starts_no_other() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "slow", "model": "local/slow-5000"}]});
    let team = team_of(&app, &token, spec).await;
    let viewer = app.token("user_viewer", GlobalRole::Member);
    app.gql_as(&viewer, "{ me { id } }", json!({})).await;
    let add = "mutation($team: ID!) { addTeamMember(teamId: $team, input: {userId: \"user_viewer\", role: VIEWER}) { role } }";
    app.must(&token, add, json!({"team": team})).await;
    let steps = json!([
        {"id": "first", "agent": "slow", "prompt": "About {{ topic }}"},
        {"id": "second", "agent": "slow", "prompt": "More: {{ steps.first.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;
    let input = json!({"templateId": article, "variables": {"topic": "tides"}});
    let started = app.must(&token, START, json!({"team": team, "input": input})).await["startWorkflow"].clone();
    let id = text(&started, "id");
    let first_running = || async {
        let run = app.must(&token, READ, json!({"id": id})).await;
        run["workflowRun"]["steps"][0]["status"] == "RUNNING"
    };
    common::eventually(std::time::Duration::from_secs(5), "the first step runs", first_running).await;

    const CANCEL: &str =
        "mutation($id: ID!) { cancelWorkflowRun(id: $id) { status errorCode steps { status run { status } } } }";
    let (_, body) = app.gql_as(&viewer, CANCEL, json!({"id": id})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "a viewer may not cancel: {body}");
    let (_, body) = app.gql_as(&token, CANCEL, json!({"id": "wfr_nope"})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");

    let cancelled = app.must(&token, CANCEL, json!({"id": id})).await["cancelWorkflowRun"].clone();
    assert_eq!((cancelled["status"].as_str(), cancelled["errorCode"].as_str()), (Some("CANCELLED"), Some("CANCELLED")));
    assert_eq!(cancelled["steps"][0]["status"], "CANCELLED", "{cancelled}");
    assert_eq!(cancelled["steps"][0]["run"]["status"], "CANCELLED", "its run is cancelled: {cancelled}");
    assert_eq!(cancelled["steps"][1]["status"], "SKIPPED", "{cancelled}");
    let (_, body) = app.gql_as(&token, CANCEL, json!({"id": id})).await;
    assert_eq!(first_code(&body), "CONFLICT", "an ended workflow: {body}");

    tokio::time::sleep(std::time::Duration::from_secs(6)).await;
    let after = app.must(&token, READ, json!({"id": id})).await["workflowRun"].clone();
    assert_eq!(after["status"], "CANCELLED", "{after}");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 1, "the second step never started");
    let audited = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("workflow.cancel"));
    let results: Vec<String> = audited.all(&app.state.db).await.unwrap().into_iter().map(|row| row.result).collect();
    assert_eq!(results, ["denied", "denied", "allowed"], "the cancel is audited, and so are the refused ones");
}

#[tokio::test]
async fn a_team_s_workflow_runs_are_listed_newest_first_and_hidden_from_strangers() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let team = team(&app, &token).await;
    let good = workflow(&app, &token, json!([{"id": "draft", "agent": "writer", "prompt": "About {{ topic }}"}])).await;
    let bad = workflow(&app, &token, json!([{"id": "fail", "agent": "broken", "prompt": "About {{ topic }}"}])).await;
    let mut ids = Vec::new();
    for template in [&good, &bad, &good] {
        ids.push(text(&run_workflow(&app, &token, template, &team, json!({"topic": "tides"})).await, "id").to_string());
    }

    const LIST: &str = "query($team: ID!, $status: WorkflowStatus, $first: Int, $after: String) {
        workflowRuns(teamId: $team, status: $status, first: $first, after: $after) {
            nodes { id status } pageInfo { hasNextPage endCursor } } }";
    let page = app.must(&token, LIST, json!({"team": team, "first": 2})).await["workflowRuns"].clone();
    let listed: Vec<&str> = page["nodes"].as_array().unwrap().iter().map(|n| text(n, "id")).collect();
    assert_eq!(listed, [ids[2].as_str(), ids[1].as_str()], "newest first");
    assert_eq!(page["pageInfo"]["hasNextPage"], true);
    let rest = app.must(&token, LIST, json!({"team": team, "after": page["pageInfo"]["endCursor"]})).await;
    assert_eq!(rest["workflowRuns"]["nodes"][0]["id"], ids[0].as_str(), "{rest}");
    let failed = app.must(&token, LIST, json!({"team": team, "status": "FAILED"})).await;
    assert_eq!(failed["workflowRuns"]["nodes"], json!([{"id": ids[1], "status": "FAILED"}]));

    let (_, body) = app.gql_as(&stranger, LIST, json!({"team": team})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    let (_, body) = app.gql_as(&stranger, READ, json!({"id": ids[0]})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
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

/// Starts `template` on `team` and waits for it (the wait is long enough for these workflows).
async fn start_and_wait(app: &TestApp, token: &str, team: &str, template: &str) -> Value {
    let input = json!({"templateId": template, "variables": {"topic": "tides"}, "wait": true});
    app.must(token, START, json!({"team": team, "input": input})).await["startWorkflow"].clone()
}

/// The stored workflow run `id`.
async fn read(app: &TestApp, token: &str, id: &Value) -> Value {
    app.must(token, READ, json!({"id": id})).await["workflowRun"].clone()
}

#[tokio::test]
async fn a_step_over_its_timeout_and_a_workflow_over_its_own_fail_with_timeout() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [
        {"name": "slow", "model": "local/slow-3000"}, {"name": "quick", "model": "local/slow-1000"}]});
    let team = team_of(&app, &token, spec).await;
    let step_limited = workflow(
        &app,
        &token,
        json!([{"id": "draft", "agent": "slow", "prompt": "About {{ topic }}", "timeoutMs": 1000}]),
    )
    .await;
    let clock = std::time::Instant::now();
    let started = start_and_wait(&app, &token, &team, &step_limited).await;
    let done = read(&app, &token, &started["id"]).await;
    assert!(clock.elapsed() < std::time::Duration::from_millis(2800), "stopped at its limit: {:?}", clock.elapsed());
    assert_eq!((done["status"].as_str(), done["errorCode"].as_str()), (Some("FAILED"), Some("TIMEOUT")), "{done}");
    assert_eq!(done["failedStep"], "draft");
    assert_eq!(done["steps"][0]["run"]["status"], "FAILED", "{done}");

    let variables = json!([{"name": "topic", "type": "string", "required": true}]);
    let body = json!({"steps": [
        {"id": "first", "agent": "quick", "prompt": "About {{ topic }}"},
        {"id": "second", "agent": "quick", "prompt": "More: {{ steps.first.output }}"}
    ], "limits": {"timeoutMs": 1500}});
    let limited = template(&app, &token, "kind: WORKFLOW, name: \"Hurried\"", body, variables).await;
    let started = start_and_wait(&app, &token, &team, &limited).await;
    let done = read(&app, &token, &started["id"]).await;
    assert_eq!((done["status"].as_str(), done["errorCode"].as_str()), (Some("FAILED"), Some("TIMEOUT")), "{done}");
    assert_eq!(done["failedStep"], "second", "the second step got what was left of 1.5 s: {done}");
    assert_eq!(done["steps"][0]["status"], "SUCCEEDED", "the earlier output is kept: {done}");
    assert!(done["steps"][0]["output"].is_string());
    let took = done["durationMs"].as_i64().unwrap();
    assert!((1400..2500).contains(&took), "{took} ms");
}

#[tokio::test]
async fn a_step_s_retry_policy_replaces_the_team_s() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "shaky", "model": "local/flaky-2"}],
                      "retry": {"maxAttempts": 1}});
    let team = team_of(&app, &token, spec).await;
    let steps = json!([
        {"id": "patient", "agent": "shaky", "prompt": "About {{ topic }}",
         "retry": {"maxAttempts": 3, "initialBackoffMs": 0, "maxBackoffMs": 0}},
        {"id": "hasty", "agent": "shaky", "prompt": "Again about {{ topic }}"}
    ]);
    let article = workflow(&app, &token, steps).await;
    let started = start_and_wait(&app, &token, &team, &article).await;
    let read_attempts =
        "query($id: ID!) { workflowRun(id: $id) { status failedStep steps { status run { attempts { outcome } } } } }";
    let done = app.must(&token, read_attempts, json!({"id": started["id"]})).await["workflowRun"].clone();
    assert_eq!((done["status"].as_str(), done["failedStep"].as_str()), (Some("FAILED"), Some("hasty")), "{done}");
    let attempts = |n: usize| done["steps"][n]["run"]["attempts"].as_array().map_or(0, Vec::len);
    assert_eq!(done["steps"][0]["status"], "SUCCEEDED", "three attempts, as the step asks: {done}");
    assert_eq!((attempts(0), attempts(1)), (3, 1), "the other step keeps the team's one attempt: {done}");
}

#[tokio::test]
async fn a_failed_workflow_is_retried_from_the_step_that_failed() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    // The editor's model is down until the team is fixed.
    let broken = json!({"format": "ensemble.team/v1", "agents": [
        {"name": "writer", "model": "local/echo"}, {"name": "editor", "model": "local/down"}]});
    let team = team_of(&app, &token, broken).await;
    let viewer = app.token("user_viewer", GlobalRole::Member);
    app.gql_as(&viewer, "{ me { id } }", json!({})).await;
    let add = "mutation($team: ID!) { addTeamMember(teamId: $team, input: {userId: \"user_viewer\", role: VIEWER}) { role } }";
    app.must(&token, add, json!({"team": team})).await;
    let steps = json!([
        {"id": "draft", "agent": "writer", "prompt": "Write about {{ topic }}"},
        {"id": "edit", "agent": "editor", "prompt": "Edit: {{ steps.draft.output }}"},
        {"id": "polish", "agent": "writer", "prompt": "Polish: {{ steps.edit.output }}"}
    ]);
    let article = workflow(&app, &token, steps).await;
    let started = start_and_wait(&app, &token, &team, &article).await;
    let failed = read(&app, &token, &started["id"]).await;
    assert_eq!((failed["status"].as_str(), failed["failedStep"].as_str()), (Some("FAILED"), Some("edit")), "{failed}");
    assert_eq!(failed["errorCode"], "SERVER_ERROR", "the run's error code: {failed}");

    const RETRY: &str = "mutation($id: ID!) { retryWorkflowRun(id: $id) { id status } }";
    let (_, body) = app.gql_as(&viewer, RETRY, json!({"id": started["id"]})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "{body}");
    let fixed = json!({"format": "ensemble.team/v1", "agents": [
        {"name": "writer", "model": "local/echo"}, {"name": "editor", "model": "local/echo"}]});
    let update = "mutation($id: ID!, $s: JSON) { updateTeam(id: $id, input: {spec: $s}) { version } }";
    app.must(&token, update, json!({"id": team, "s": fixed})).await;

    let again = app.must(&token, RETRY, json!({"id": started["id"]})).await["retryWorkflowRun"].clone();
    assert_eq!((&again["id"], again["status"].as_str()), (&started["id"], Some("RUNNING")), "{again}");
    let done = finished(&app, &token, text(&again, "id"), 10).await;
    assert_eq!((done["status"].as_str(), &done["failedStep"]), (Some("SUCCEEDED"), &Value::Null), "{done}");
    let attempts: Vec<i64> =
        done["steps"].as_array().unwrap().iter().map(|s| s["attempts"].as_i64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 1], "the first step is not run again: {done}");
    assert_eq!(done["steps"][0]["output"], failed["steps"][0]["output"], "its output is kept");
    assert_eq!(text(&done["steps"][1], "input"), format!("Edit: {}", text(&done["steps"][0], "output")));
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 4, "draft once, edit twice, polish once");
    let (_, body) = app.gql_as(&token, RETRY, json!({"id": started["id"]})).await;
    assert_eq!(first_code(&body), "CONFLICT", "a workflow that succeeded: {body}");
    let retried = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("workflow.retry"));
    let results: Vec<String> = retried.all(&app.state.db).await.unwrap().into_iter().map(|row| row.result).collect();
    assert_eq!(results, ["denied", "allowed"], "the refused retry and the retry; a CONFLICT writes nothing");
}

#[tokio::test]
async fn workflow_limits_stop_it_at_the_step_that_would_pass_them() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let token = app.token("user_author", GlobalRole::Member);
    let price = "mutation { upsertModelPrice(input: {model: \"local/*\", inputUsdPerMtok: 1.0, outputUsdPerMtok: 1.0}) { model } }";
    app.must(&admin, price, json!({})).await;
    // One attempt a step, so that a step's worst case is one call's.
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "writer", "model": "local/echo", "maxTokens": 20}],
                      "retry": {"maxAttempts": 1}});
    let team = team_of(&app, &token, spec).await;
    let estimate = "query($t: ID!) { estimateCost(teamId: $t, input: \"Hi\") { worstCaseCostUsd } }";
    let worst =
        app.must(&token, estimate, json!({"t": team})).await["estimateCost"]["worstCaseCostUsd"].as_f64().unwrap();
    assert!(worst > 0.0);
    let variables = json!([{"name": "topic", "type": "string"}]);
    let three = json!([
        {"id": "one", "agent": "writer", "prompt": "Hi"},
        {"id": "two", "agent": "writer", "prompt": "Hi"},
        {"id": "three", "agent": "writer", "prompt": "Hi"}
    ]);

    // Room for one step's worst case and a half: the second cannot be paid for.
    let body = json!({"steps": three, "limits": {"maxCostUsd": worst * 1.5}});
    let costly = template(&app, &token, "kind: WORKFLOW, name: \"Costly\"", body, variables.clone()).await;
    let started = start_and_wait(&app, &token, &team, &costly).await;
    let done = read(&app, &token, &started["id"]).await;
    assert_eq!((done["status"].as_str(), done["failedStep"].as_str()), (Some("FAILED"), Some("two")), "{done}");
    assert_eq!(done["errorCode"], "COST_LIMIT", "{done}");
    assert_eq!(done["steps"][0]["status"], "SUCCEEDED", "{done}");
    assert!(done["costUsd"].as_f64().unwrap() <= worst * 1.5, "{done}");

    let body = json!({"steps": three, "limits": {"maxSteps": 2}});
    let short = template(&app, &token, "kind: WORKFLOW, name: \"Short\"", body, variables).await;
    let started = start_and_wait(&app, &token, &team, &short).await;
    let done = read(&app, &token, &started["id"]).await;
    assert_eq!((done["status"].as_str(), done["failedStep"].as_str()), (Some("FAILED"), Some("three")), "{done}");
    assert_eq!(done["errorCode"], "LIMIT_EXCEEDED", "{done}");
    assert_eq!(done["steps"][2]["run"], Value::Null, "the step past the limit ran nothing: {done}");
    assert!(text(&done, "error").contains("maxSteps"), "{done}");
}

#[tokio::test]
async fn a_daily_budget_exhausted_mid_workflow_fails_it_at_that_step_with_quota_exceeded() {
    let spec =
        json!({"format": "ensemble.team/v1", "agents": [{"name": "writer", "model": "local/echo", "maxTokens": 20}]});
    // The worst case of one step, estimated where no budget applies.
    let worst = {
        let app = TestApp::spawn().await;
        let token = app.token("user_author", GlobalRole::Member);
        let team = team_of(&app, &token, spec.clone()).await;
        let estimate = "query($t: ID!) { estimateCost(teamId: $t, input: \"Hi\") { worstCaseTokens } }";
        app.must(&token, estimate, json!({"t": team})).await["estimateCost"]["worstCaseTokens"].as_i64().unwrap()
    };
    // One step's worst case and a token: the first step fits, the second does not.
    let app = TestApp::spawn_with(|c| c.runs.daily_token_budget = Some(worst + 1)).await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team_of(&app, &token, spec).await;
    let steps = json!([
        {"id": "one", "agent": "writer", "prompt": "Hi"},
        {"id": "two", "agent": "writer", "prompt": "Hi"}
    ]);
    let article = workflow(&app, &token, steps).await;
    let started = start_and_wait(&app, &token, &team, &article).await;
    let done = read(&app, &token, &started["id"]).await;
    assert_eq!((done["status"].as_str(), done["failedStep"].as_str()), (Some("FAILED"), Some("two")), "{done}");
    assert_eq!(done["errorCode"], "QUOTA_EXCEEDED", "{done}");
    assert_eq!(done["steps"][0]["status"], "SUCCEEDED", "the earlier output is kept: {done}");
    assert!(done["steps"][0]["output"].is_string(), "{done}");
    assert!(text(&done["steps"][1], "error").contains("budget"), "{done}");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 1, "the refused step ran nothing");
}

#[tokio::test]
async fn step_timeouts_retry_policies_and_limits_are_checked_when_the_template_is_saved() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    const VALIDATE: &str =
        "query($input: TemplateInput!) { validateTemplate(input: $input) { valid problems { path message } body } }";
    let bad = json!({"kind": "WORKFLOW", "name": "Bad", "body": {
        "steps": [
            {"id": "one", "prompt": "Hi", "timeoutMs": 0, "retry": {"maxAttempts": 99}},
            {"id": "two", "prompt": "Hi", "timeoutMs": "soon", "retry": "often"}
        ],
        "limits": {"maxSteps": 0, "maxCostUsd": -1, "timeoutMs": 99999999999u64, "maxTurns": 3}
    }});
    let answer = app.must(&token, VALIDATE, json!({"input": bad})).await["validateTemplate"].clone();
    assert_eq!(answer["valid"], false);
    let mut paths: Vec<&str> = answer["problems"].as_array().unwrap().iter().map(|p| text(p, "path")).collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "input.body.limits.maxCostUsd",
            "input.body.limits.maxSteps",
            "input.body.limits.maxTurns",
            "input.body.limits.timeoutMs",
            "input.body.steps[0].retry.maxAttempts",
            "input.body.steps[0].timeoutMs",
            "input.body.steps[1].retry",
            "input.body.steps[1].timeoutMs",
        ],
        "{answer}"
    );

    let good = json!({"kind": "WORKFLOW", "name": "Good", "body": {
        "steps": [{"id": "one", "prompt": "Hi", "timeoutMs": 5000, "retry": {"maxAttempts": 2}}],
        "limits": {"maxSteps": 5, "maxCostUsd": 0.5, "timeoutMs": 60000}
    }});
    let answer = app.must(&token, VALIDATE, json!({"input": good})).await["validateTemplate"].clone();
    assert_eq!(answer["valid"], true, "{answer}");
    assert_eq!(answer["body"]["steps"][0]["timeoutMs"], 5000, "kept in the canonical body: {answer}");
    assert_eq!(answer["body"]["limits"], json!({"maxSteps": 5, "maxCostUsd": 0.5, "timeoutMs": 60000}));
}

/// Starts `template` on `team` with `variables` and waits for it to end.
async fn ran(app: &TestApp, token: &str, team: &str, template: &str, variables: Value) -> Value {
    let input = json!({"templateId": template, "variables": variables, "wait": true});
    let started = app.must(token, START, json!({"team": team, "input": input})).await["startWorkflow"].clone();
    finished(app, token, text(&started, "id"), 20).await
}

/// Each execution as `id#iteration STATUS`.
fn timeline(run: &Value) -> Vec<String> {
    let steps = run["steps"].as_array().unwrap();
    steps.iter().map(|s| format!("{}#{} {}", text(s, "id"), s["iteration"], text(s, "status"))).collect()
}

#[tokio::test]
async fn the_critic_loop_revises_until_the_critic_approves() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    // The scripted critic answers its n-th line on its n-th turn in a workflow run.
    let spec = json!({"format": "ensemble.team/v1", "agents": [
        {"name": "writer", "model": "local/echo"},
        {"name": "critic", "model": "local/script",
         "systemPrompt": "Needs work: more detail\nNeeds work: shorter\nAPPROVED"}]});
    let team = team_of(&app, &token, spec).await;
    let latest = "steps.revise.output if steps.revise is defined else steps.draft.output";
    let body = json!({"steps": [
        {"id": "draft", "agent": "writer", "prompt": "Write about {{ topic }}"},
        {"id": "review", "loop": {
            "steps": [
                {"id": "critique", "agent": "critic", "prompt": format!("Critique: {{{{ {latest} }}}}")},
                {"id": "revise", "agent": "writer", "when": "'APPROVED' not in steps.critique.output",
                 "prompt": format!("Round {{{{ loop.index }}}}, {{{{ steps.critique.output }}}}: {{{{ {latest} }}}}")}
            ],
            "until": "'APPROVED' in steps.critique.output",
            "maxIterations": 5}},
        {"id": "publish", "agent": "writer",
         "prompt": "After {{ steps.critique.iterations | length }} rounds ({{ steps.critique.iterations[-1].output }}): {{ steps.revise.output }}"}
    ]});
    let variables = json!([{"name": "topic", "type": "string", "required": true}]);
    let critic_loop = template(&app, &token, "kind: WORKFLOW, name: \"Critic loop\"", body, variables).await;

    let done = ran(&app, &token, &team, &critic_loop, json!({"topic": "tides"})).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(
        timeline(&done),
        [
            "draft#0 SUCCEEDED",
            "critique#1 SUCCEEDED",
            "revise#1 SUCCEEDED",
            "critique#2 SUCCEEDED",
            "revise#2 SUCCEEDED",
            "critique#3 SUCCEEDED",
            "revise#3 SKIPPED",
            "publish#0 SUCCEEDED"
        ],
        "draft, then critique and revise until the critic approves: {done}"
    );
    let steps = done["steps"].as_array().unwrap();
    let verdicts: Vec<&str> = [1, 3, 5].iter().map(|&i| text(&steps[i], "output")).collect();
    assert_eq!(verdicts, ["[critic] Needs work: more detail", "[critic] Needs work: shorter", "[critic] APPROVED"]);
    assert_eq!(
        text(&steps[2], "input"),
        format!("Round 1, [critic] Needs work: more detail: {}", text(&steps[0], "output"))
    );
    assert_eq!(text(&steps[3], "input"), format!("Critique: {}", text(&steps[2], "output")), "the latest revision");
    assert_eq!(steps[6]["run"], Value::Null, "a skipped step runs nothing");
    let publish = text(&steps[7], "input");
    assert!(publish.starts_with("After 3 rounds ([critic] APPROVED): "), "{publish}");
    assert!(publish.ends_with(text(&steps[4], "output")), "the last revision is published: {publish}");
    assert_eq!(
        runs::Entity::find().count(&app.state.db).await.unwrap(),
        7,
        "1 draft, 3 critiques, 2 revisions, 1 publish"
    );

    // A critic that never approves: the loop stops after maxIterations and the workflow goes on.
    let body = json!({"steps": [
        {"id": "review", "loop": {"steps": [{"id": "critique", "agent": "critic", "prompt": "Again"}],
                                   "until": "'NEVER' in steps.critique.output", "maxIterations": 2}},
        {"id": "after", "agent": "writer", "prompt": "{{ steps.critique.iterations | length }} rounds"}
    ]});
    let stubborn = template(&app, &token, "kind: WORKFLOW, name: \"Stubborn\"", body, json!([])).await;
    let done = ran(&app, &token, &team, &stubborn, json!({})).await;
    assert_eq!(timeline(&done), ["critique#1 SUCCEEDED", "critique#2 SUCCEEDED", "after#0 SUCCEEDED"], "{done}");
    assert_eq!(text(&done["steps"][2], "input"), "2 rounds");
}

#[tokio::test]
async fn a_step_whose_condition_does_not_hold_is_skipped_and_one_that_cannot_be_evaluated_fails_the_workflow() {
    let app = TestApp::spawn().await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team(&app, &token).await;
    let variables = json!([{"name": "topic", "type": "string", "required": true}, {"name": "urgent", "type": "boolean", "default": false}]);
    let body = json!({"steps": [
        {"id": "draft", "agent": "writer", "prompt": "About {{ topic }}"},
        {"id": "escalate", "agent": "editor", "when": "urgent", "prompt": "Escalate: {{ steps.draft.output }}"},
        {"id": "file", "agent": "writer", "prompt": "File: {{ steps.draft.output }}"}
    ]});
    let triage = template(&app, &token, "kind: WORKFLOW, name: \"Triage\"", body, variables.clone()).await;
    let calm = ran(&app, &token, &team, &triage, json!({"topic": "tides"})).await;
    assert_eq!(timeline(&calm), ["draft#0 SUCCEEDED", "escalate#0 SKIPPED", "file#0 SUCCEEDED"], "{calm}");
    assert_eq!(calm["steps"][1]["run"], Value::Null);
    let urgent = ran(&app, &token, &team, &triage, json!({"topic": "tides", "urgent": true})).await;
    assert_eq!(timeline(&urgent), ["draft#0 SUCCEEDED", "escalate#0 SUCCEEDED", "file#0 SUCCEEDED"], "{urgent}");

    // The skipped step has no output for the next condition to read.
    let body = json!({"steps": [
        {"id": "maybe", "agent": "writer", "when": "urgent", "prompt": "Maybe {{ topic }}"},
        {"id": "after", "agent": "writer", "when": "'x' in steps.maybe.output", "prompt": "After"}
    ]});
    let fragile = template(&app, &token, "kind: WORKFLOW, name: \"Fragile\"", body, variables).await;
    let failed = ran(&app, &token, &team, &fragile, json!({"topic": "tides"})).await;
    assert_eq!((failed["status"].as_str(), failed["failedStep"].as_str()), (Some("FAILED"), Some("after")), "{failed}");
    assert_eq!(failed["errorCode"], "BAD_CONDITION", "{failed}");
    assert!(text(&failed, "error").contains("body.steps[1].when"), "the condition is named: {failed}");

    // A loop whose `until` cannot be evaluated fails as itself, its steps' outputs kept.
    let body = json!({"steps": [{"id": "rounds", "loop": {
        "steps": [{"id": "work", "agent": "writer", "prompt": "Work"},
                  {"id": "check", "agent": "writer", "when": "false", "prompt": "Check"}],
        "until": "'done' in steps.check.output", "maxIterations": 3}}]});
    let looping = template(&app, &token, "kind: WORKFLOW, name: \"Looping\"", body, json!([])).await;
    let failed = ran(&app, &token, &team, &looping, json!({})).await;
    assert_eq!((failed["failedStep"].as_str(), failed["errorCode"].as_str()), (Some("rounds"), Some("BAD_CONDITION")));
    assert_eq!(timeline(&failed), ["work#1 SUCCEEDED", "check#1 SKIPPED", "rounds#1 FAILED"], "{failed}");
    assert!(text(&failed, "error").contains("body.steps[0].loop.until"), "{failed}");
}

#[tokio::test]
async fn loops_and_conditions_are_checked_when_the_template_is_saved() {
    let app = TestApp::spawn_with(|c| c.runs.workflow_max_iterations = 10).await;
    let token = app.token("user_author", GlobalRole::Member);
    const VALIDATE: &str = "query($input: TemplateInput!) { validateTemplate(input: $input) { valid problems { path message line column } } }";
    let problems = |body: Value| {
        let app = &app;
        let token = &token;
        async move {
            let input = json!({"kind": "WORKFLOW", "name": "Checked", "body": body,
                               "variables": [{"name": "topic", "type": "string"}]});
            let answer = app.must(token, VALIDATE, json!({"input": input})).await["validateTemplate"].clone();
            answer["problems"].as_array().unwrap().clone()
        }
    };
    let step = |id: &str| json!({"id": id, "prompt": "Hi"});

    let missing = problems(json!({"steps": [{"id": "l", "loop": {"steps": [step("a")], "until": "true"}}]})).await;
    assert_eq!(missing.len(), 1, "{missing:?}");
    assert_eq!(missing[0]["path"], "input.body.steps[0].loop.maxIterations");
    assert!(text(&missing[0], "message").contains("is required"), "{missing:?}");

    let over =
        problems(json!({"steps": [{"id": "l", "loop": {"steps": [step("a")], "until": "true", "maxIterations": 11}}]}))
            .await;
    assert_eq!(over[0]["path"], "input.body.steps[0].loop.maxIterations", "{over:?}");
    assert!(text(&over[0], "message").contains("from 1 to 10"), "the configured cap: {over:?}");

    let syntax =
        problems(json!({"steps": [step("a"), {"id": "b", "prompt": "Hi", "when": "steps.a.output ==\n )"}]})).await;
    assert_eq!(syntax.len(), 1, "{syntax:?}");
    assert_eq!(syntax[0]["path"], "input.body.steps[1].when");
    assert!(text(&syntax[0], "message").contains("is not a valid condition"), "{syntax:?}");
    assert_eq!((syntax[0]["line"].as_i64(), syntax[0]["column"].as_i64().is_some()), (Some(2), true), "{syntax:?}");

    let order = problems(json!({"steps": [
        {"id": "a", "prompt": "Hi", "when": "'x' in steps.b.output"},
        step("b"),
        {"id": "l", "loop": {"steps": [{"id": "c", "prompt": "{{ steps.d.output }}"}, step("d")],
                             "until": "steps.d.output and ghost", "maxIterations": 3}},
        {"id": "e", "prompt": "{{ loop.index }}"}
    ]}))
    .await;
    let found: Vec<(String, String)> =
        order.iter().map(|p| (text(p, "path").to_string(), text(p, "message").to_string())).collect();
    assert_eq!(found.len(), 3, "a later step, an undeclared name, `loop` outside a loop: {found:?}");
    assert!(found[0].0 == "input.body.steps[0].when" && found[0].1.contains("runs later"), "{found:?}");
    assert!(
        found.iter().any(|(path, m)| path == "input.body.steps[2].loop.until" && m.contains("`ghost`")),
        "{found:?}"
    );
    assert!(found.iter().any(|(path, m)| path == "input.body.steps[3].prompt" && m.contains("`loop`")), "{found:?}");

    let nested = problems(json!({"steps": [{"id": "outer", "loop": {"steps": [
        {"id": "inner", "loop": {"steps": [step("a")], "until": "true", "maxIterations": 2}}],
        "until": "true", "maxIterations": 2}}]}))
    .await;
    assert_eq!(nested[0]["path"], "input.body.steps[0].loop.steps[0]", "{nested:?}");
    assert!(text(&nested[0], "message").contains("plain steps"), "{nested:?}");

    let approvals = problems(json!({"steps": [
        {"id": "a", "approval": {"onTimeout": "approve"}},
        {"id": "b", "approval": {"timeoutMs": 1000, "onTimeout": "maybe", "message": "{{ steps.c.output }}"}},
        step("c"),
        {"id": "l", "loop": {"steps": [{"id": "d", "approval": {}}], "until": "true", "maxIterations": 2}}
    ]}))
    .await;
    let found: Vec<(&str, &str)> = approvals.iter().map(|p| (text(p, "path"), text(p, "message"))).collect();
    assert_eq!(found.len(), 4, "{found:?}");
    assert!(
        found.contains(&(
            "input.body.steps[0].approval.onTimeout",
            "needs a `timeoutMs`: without one, an approval waits forever"
        )),
        "{found:?}"
    );
    assert!(
        found.contains(&("input.body.steps[1].approval.onTimeout", "must be `fail`, `approve` or `reject`")),
        "{found:?}"
    );
    assert!(
        found.contains(&("input.body.steps[1].approval.message", "refers to step `c`, which runs later")),
        "{found:?}"
    );
    assert!(
        found.contains(&("input.body.steps[3].loop.steps[0]", "is an approval; a loop's steps are plain steps")),
        "{found:?}"
    );
}

const APPROVE: &str = "mutation($id: ID!, $input: ApproveWorkflowStepInput!) {
    approveWorkflowStep(workflowRunId: $id, input: $input) { id status } }";

/// A team of the author's with `user_operator` and `user_viewer` as members; answers its id
/// and their tokens.
async fn team_with_members(app: &TestApp, token: &str) -> (String, String, String) {
    let team = team(app, token).await;
    let add = "mutation($team: ID!, $user: ID!, $role: TeamRole!) { addTeamMember(teamId: $team, input: {userId: $user, role: $role}) { role } }";
    let mut tokens = Vec::new();
    for (user, role) in [("user_operator", "OPERATOR"), ("user_viewer", "VIEWER")] {
        let member = app.token(user, GlobalRole::Member);
        app.gql_as(&member, "{ me { id } }", json!({})).await;
        app.must(token, add, json!({"team": team, "user": user, "role": role})).await;
        tokens.push(member);
    }
    let viewer = tokens.pop().unwrap();
    (team, tokens.pop().unwrap(), viewer)
}

#[tokio::test]
async fn a_workflow_waits_for_approval_and_goes_on_or_fails_as_an_operator_decides() {
    let app = TestApp::spawn_with(|c| c.rate_limit_per_minute = 0).await;
    let token = app.token("user_author", GlobalRole::Member);
    let (team, operator, viewer) = team_with_members(&app, &token).await;
    let body = json!({"steps": [
        {"id": "draft", "agent": "writer", "prompt": "Write about {{ topic }}"},
        {"id": "signoff", "approval": {"message": "Publish this? {{ steps.draft.output }}"}},
        {"id": "publish", "agent": "writer", "prompt": "Publish: {{ steps.draft.output }} ({{ steps.signoff.output }})"}
    ]});
    let variables = json!([{"name": "topic", "type": "string", "required": true}]);
    let gated = template(&app, &token, "kind: WORKFLOW, name: \"Gated\"", body, variables).await;

    let waiting = start_and_wait(&app, &token, &team, &gated).await;
    let id = waiting["id"].clone();
    let waiting = read(&app, &operator, &id).await;
    assert_eq!(waiting["status"], "WAITING", "{waiting}");
    assert_eq!(timeline(&waiting), ["draft#0 SUCCEEDED", "signoff#0 WAITING", "publish#0 PENDING"], "{waiting}");
    let asked = format!("Publish this? {}", text(&waiting["steps"][0], "output"));
    assert_eq!(text(&waiting["steps"][1], "input"), asked, "the operator is shown the message");

    let decide = |approve: bool, comment: &str, step: &str| json!({"id": id, "input": {"stepId": step, "approve": approve, "comment": comment}});
    let (_, body) = app.gql_as(&viewer, APPROVE, decide(true, "Fine", "signoff")).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "a viewer may not approve: {body}");
    let (_, body) = app.gql_as(&operator, APPROVE, decide(true, "Fine", "draft")).await;
    assert_eq!((first_code(&body), problem_paths(&body)), ("BAD_USER_INPUT", vec!["input.stepId"]), "{body}");
    let (_, body) = app.gql_as(&operator, APPROVE, decide(true, &"x".repeat(2001), "signoff")).await;
    assert_eq!(problem_paths(&body), ["input.comment"], "{body}");

    app.must(&operator, APPROVE, decide(true, "Ship it", "signoff")).await;
    let done = finished(&app, &operator, id.as_str().unwrap(), 10).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(timeline(&done), ["draft#0 SUCCEEDED", "signoff#0 SUCCEEDED", "publish#0 SUCCEEDED"], "{done}");
    assert!(text(&done["steps"][2], "input").ends_with("(Ship it)"), "later steps read the comment: {done}");
    let (_, body) = app.gql_as(&operator, APPROVE, decide(true, "Again", "signoff")).await;
    assert_eq!(first_code(&body), "CONFLICT", "approving twice: {body}");

    // Rejected, the workflow fails there.
    let waiting = start_and_wait(&app, &token, &team, &gated).await;
    let id = waiting["id"].clone();
    let reject = json!({"id": id, "input": {"stepId": "signoff", "approve": false, "comment": "Not yet"}});
    app.must(&operator, APPROVE, reject).await;
    let failed = read(&app, &operator, &id).await;
    assert_eq!(
        (failed["status"].as_str(), failed["errorCode"].as_str()),
        (Some("FAILED"), Some("REJECTED")),
        "{failed}"
    );
    assert_eq!(failed["failedStep"], "signoff");
    assert!(text(&failed, "error").contains("rejected by user_operator: Not yet"), "{failed}");
    assert_eq!(timeline(&failed), ["draft#0 SUCCEEDED", "signoff#0 FAILED", "publish#0 SKIPPED"], "{failed}");

    let decided = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("workflow.approve"));
    let allowed = decided.all(&app.state.db).await.unwrap().into_iter().filter(|row| row.result == "allowed").count();
    assert_eq!(allowed, 2, "each decision is audited");
    assert_eq!(runs::Entity::find().count(&app.state.db).await.unwrap(), 3, "no run while waiting");
}

#[tokio::test]
async fn an_approval_that_times_out_takes_its_declared_default() {
    // A short lease: instances look for workflows to take up every 1/3 s.
    let app = TestApp::spawn_with(|c| c.runs.workflow_lease_secs = 1).await;
    let token = app.token("user_author", GlobalRole::Member);
    let team = team(&app, &token).await;
    let gated = |on_timeout: &str| {
        json!({"steps": [
            {"id": "signoff", "approval": {"timeoutMs": 1000, "onTimeout": on_timeout}},
            {"id": "after", "agent": "writer", "prompt": "After: {{ steps.signoff.output }}"}
        ]})
    };
    let lenient = template(&app, &token, "kind: WORKFLOW, name: \"Lenient\"", gated("approve"), json!([])).await;
    let strict = template(&app, &token, "kind: WORKFLOW, name: \"Strict\"", gated("fail"), json!([])).await;

    let start = |template: &str| json!({"team": team, "input": {"templateId": template, "wait": true}});
    let started = app.must(&token, START, start(&lenient)).await["startWorkflow"].clone();
    assert_eq!(read(&app, &token, &started["id"]).await["status"], "WAITING");
    let done = finished(&app, &token, started["id"].as_str().unwrap(), 10).await;
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(text(&done["steps"][0], "output"), "approved: no decision within 1000 ms", "{done}");
    assert_eq!(text(&done["steps"][1], "input"), "After: approved: no decision within 1000 ms");

    let started = app.must(&token, START, start(&strict)).await["startWorkflow"].clone();
    let failed = finished(&app, &token, started["id"].as_str().unwrap(), 10).await;
    assert_eq!((failed["status"].as_str(), failed["errorCode"].as_str()), (Some("FAILED"), Some("APPROVAL_TIMEOUT")));
    assert_eq!(failed["failedStep"], "signoff", "{failed}");
}
