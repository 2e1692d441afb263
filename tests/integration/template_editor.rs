//! Templates as an editor UI and its users drive them: save, validate on each keystroke,
//! version, diff, restore, fork, share, render, instantiate, delete — and the bad inputs each
//! of those gets.

use crate::common;

use common::{TestApp, first_code, problem_paths};
use ensemble::{
    domain::GlobalRole,
    error::AppError,
    service::templates::{TemplateInput, body::Kind},
};
use entity::{audit_logs, messages, template_versions, templates};
use sea_orm::{ColumnTrait, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};

const FIELDS: &str = "id kind name slug visibility version latestVersion body changelog isStarter teamId forkedFromId forkedFromVersion variables { name type required default } category { slug }";

fn create_doc() -> String {
    format!("mutation($input: TemplateInput!) {{ createTemplate(input: $input) {{ {FIELDS} }} }}")
}

fn update_doc() -> String {
    format!(
        "mutation($id: ID!, $input: TemplateInput!, $expected: Int) {{ updateTemplate(id: $id, input: $input, expectedVersion: $expected) {{ {FIELDS} }} }}"
    )
}

const RENDER: &str = "query($id: ID!, $variables: JSON, $version: Int) { renderTemplate(id: $id, variables: $variables, version: $version) }";
const GET: &str = "query($id: ID!) { template(id: $id) { id name version } }";
const VALIDATE: &str = "query($input: TemplateInput!) { validateTemplate(input: $input) { valid problems { path message line column } body } }";

fn summarise() -> Value {
    json!({
        "kind": "QUERY",
        "name": "Summarise",
        "body": {"prompt": "Summarise for {{ audience }} in {{ sentences }} sentences:\n{{ text }}"},
        "variables": [
            {"name": "text", "type": "string", "required": true},
            {"name": "audience", "type": "string", "default": "a busy reader"},
            {"name": "sentences", "type": "integer", "default": 2}
        ]
    })
}

async fn create_team(app: &TestApp, token: &str, name: &str) -> String {
    let data =
        app.must(token, "mutation($n: String!) { createTeam(input: {name: $n}) { id } }", json!({"n": name})).await;
    data["createTeam"]["id"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn every_save_is_a_version_with_history_diff_and_restore() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let created = app.must(&alice, &create_doc(), json!({"input": summarise()})).await["createTemplate"].clone();
    let id = created["id"].clone();
    assert_eq!((created["kind"].as_str(), created["version"].as_i64()), (Some("QUERY"), Some(1)), "{created}");
    assert_eq!(created["visibility"], "PRIVATE");
    // A starter ships with the slug `summarise`, so this one gets the id's tail.
    assert!(created["slug"].as_str().unwrap().starts_with("summarise-"), "{created}");
    assert_eq!(
        created["variables"][2],
        json!({"name": "sentences", "type": "INTEGER", "required": false, "default": 2})
    );

    let rendered = app.must(&alice, RENDER, json!({"id": id, "variables": {"text": "Rust is fast."}})).await;
    assert_eq!(rendered["renderTemplate"], "Summarise for a busy reader in 2 sentences:\nRust is fast.");

    let change = json!({"body": {"prompt": "TL;DR for {{ audience }}: {{ text }}"}, "changelog": "Shorter"});
    let updated = app.must(&alice, &update_doc(), json!({"id": id, "input": change, "expected": 1})).await;
    assert_eq!(updated["updateTemplate"]["version"], 2);
    assert_eq!(updated["updateTemplate"]["changelog"], "Shorter");
    // Renaming is a save too, and a version.
    let renamed = app.must(&alice, &update_doc(), json!({"id": id, "input": {"name": "TL;DR"}})).await;
    assert_eq!(renamed["updateTemplate"]["version"], 3);
    assert_eq!(renamed["updateTemplate"]["body"]["prompt"], "TL;DR for {{ audience }}: {{ text }}");
    let fresh = app.must(&alice, GET, json!({"id": id})).await;
    assert_eq!(
        (fresh["template"]["name"].as_str(), fresh["template"]["version"].as_i64()),
        (Some("TL;DR"), Some(3)),
        "no stale cache"
    );

    // A stale expectedVersion is CONFLICT and changes nothing.
    let (_, body) =
        app.gql_as(&alice, &update_doc(), json!({"id": id, "input": {"name": "Lost"}, "expected": 2})).await;
    assert_eq!(first_code(&body), "CONFLICT", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("version 3"), "{body}");

    let history = app
        .must(
            &alice,
            "query($id: ID!) { templateVersions(id: $id, first: 10) { nodes { version changelog authorId } } }",
            json!({"id": id}),
        )
        .await;
    let versions: Vec<i64> = history["templateVersions"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect();
    assert_eq!(versions, [3, 2, 1]);
    assert_eq!(history["templateVersions"]["nodes"][2]["authorId"], "user_alice");

    let diff = app
        .must(
            &alice,
            "query($id: ID!) { templateDiff(id: $id, from: 1, to: 2) { operations summary } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(diff["templateDiff"]["operations"][0]["path"], "/body/prompt", "{diff}");
    assert_eq!(diff["templateDiff"]["operations"].as_array().unwrap().len(), 1, "{diff}");

    let restore = "mutation($id: ID!) { restoreTemplateVersion(id: $id, version: 1) { version body changelog } }";
    let restored = app.must(&alice, restore, json!({"id": id})).await["restoreTemplateVersion"].clone();
    assert_eq!(restored["version"], 4);
    assert_eq!(restored["changelog"], "Restored version 1");
    assert_eq!(restored["body"], created["body"]);
    let old = app.must(&alice, RENDER, json!({"id": id, "version": 2, "variables": {"text": "x"}})).await;
    assert_eq!(old["renderTemplate"], "TL;DR for a busy reader: x", "an old version still renders");

    let rows = template_versions::Entity::find()
        .filter(template_versions::Column::TemplateId.eq(id.as_str().unwrap()))
        .count(&app.state.db)
        .await
        .unwrap();
    assert_eq!(rows, 4);
    let audited: Vec<String> = audit_logs::Entity::find()
        .filter(audit_logs::Column::ResourceType.eq("template"))
        .all(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|r| format!("{}:{}", r.action, r.result))
        .collect();
    assert_eq!(
        audited,
        ["template.create:allowed", "template.update:allowed", "template.update:allowed", "template.restore:allowed"]
    );
}

#[tokio::test]
async fn validation_lists_every_problem_with_its_place_and_saves_nothing() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let bad_team = json!({
        "kind": "TEAM",
        "name": "Broken team",
        "body": {"format": "ensemble.team/v1", "agents": [
            {"name": "a", "model": "local/echo", "systemPrompt": "Help {{ customer }}"},
            {"name": "b", "model": "nowhere/model", "systemPrompt": "x"}
        ]},
        "variables": [{"name": "tier", "type": "string", "required": true, "default": "gold"}]
    });
    let (_, body) = app.gql_as(&alice, VALIDATE, json!({"input": bad_team})).await;
    let result = &body["data"]["validateTemplate"];
    assert_eq!(result["valid"], false, "{body}");
    let paths: Vec<&str> = result["problems"].as_array().unwrap().iter().map(|p| p["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"input.variables[0].default"), "a required variable with a default: {paths:?}");
    assert!(paths.contains(&"input.body.agents[0].systemPrompt"), "an undeclared variable: {paths:?}");
    assert!(paths.iter().any(|p| p.starts_with("input.body.agents[1]")), "an invalid TeamSpec: {paths:?}");

    let syntax = json!({"kind": "QUERY", "name": "Oops", "body": {"prompt": "Line one\nline two\nhello {{ name "},
        "variables": [{"name": "name", "type": "string"}]});
    let (_, body) = app.gql_as(&alice, VALIDATE, json!({"input": syntax})).await;
    let problem = &body["data"]["validateTemplate"]["problems"][0];
    assert_eq!(problem["path"], "input.body.prompt", "{body}");
    assert_eq!(problem["line"], 3, "{body}");
    assert!(problem["column"].as_i64().unwrap() >= 1, "{body}");

    let workflow = json!({"kind": "WORKFLOW", "name": "Backwards", "body": {"steps": [
        {"id": "first", "prompt": "Use {{ steps.second.output }}"},
        {"id": "second", "prompt": "Use {{ steps.ghost.output }}"}
    ]}});
    let (_, body) = app.gql_as(&alice, VALIDATE, json!({"input": workflow})).await;
    let problems = body["data"]["validateTemplate"]["problems"].as_array().unwrap().clone();
    assert_eq!(problems.len(), 2, "{body}");
    assert!(problems[0]["message"].as_str().unwrap().contains("second"), "a later step: {body}");
    assert!(problems[1]["message"].as_str().unwrap().contains("ghost"), "an unknown step: {body}");

    let good = app.must(&alice, VALIDATE, json!({"input": summarise()})).await;
    assert_eq!(good["validateTemplate"]["valid"], true);
    assert_eq!(good["validateTemplate"]["problems"], json!([]));

    // The same bad inputs refused by createTemplate, all problems at once, nothing saved.
    let (_, body) = app.gql_as(&alice, &create_doc(), json!({"input": bad_team})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(problem_paths(&body).len() >= 3, "{body}");
    let (_, body) = app
        .gql_as(&alice, &create_doc(), json!({"input": {"kind": "QUERY", "name": " ", "category": "nope", "body": {}}}))
        .await;
    assert_eq!(problem_paths(&body)[..2], ["input.name", "input.category"], "{body}");
    let saved =
        templates::Entity::find().filter(templates::Column::IsStarter.eq(false)).count(&app.state.db).await.unwrap();
    assert_eq!(saved, 0);
}

/// Apollo Client and urql show an error's `message` only: it says the first problem in words,
/// under the path the caller knows it by.
#[tokio::test]
async fn refused_saves_and_instantiations_say_their_first_problem_in_the_message() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let input = json!({"kind": "QUERY", "name": " ", "category": "nope", "body": {}});
    let (_, body) = app.gql_as(&alice, &create_doc(), json!({"input": input})).await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("input.name: ") && message.ends_with(" more problems)"), "{body}");

    let spec = json!({"format": "ensemble.team/v1",
        "agents": [{"name": "support", "model": "local/echo", "systemPrompt": "You help customers of {{ company }}."}]});
    let template = json!({"kind": "TEAM", "name": "Helpdesk", "body": spec,
        "variables": [{"name": "company", "type": "string", "required": true}]});
    let id = app.must(&alice, &create_doc(), json!({"input": template})).await["createTemplate"]["id"].clone();
    let instantiate =
        "mutation($id: ID!, $input: InstantiateTemplateInput!) { instantiateTemplate(id: $id, input: $input) { id } }";
    let (_, body) = app.gql_as(&alice, instantiate, json!({"id": id, "input": {"name": "Desk"}})).await;
    assert!(body["errors"][0]["message"].as_str().unwrap().starts_with("variables.company: "), "{body}");
    let input = json!({"name": " ", "variables": {"company": "Acme"}});
    let (_, body) = app.gql_as(&alice, instantiate, json!({"id": id, "input": input})).await;
    assert_eq!(body["errors"][0]["message"], "input.name: must be 1 to 100 characters", "{body}");
}

#[tokio::test]
async fn renders_name_every_bad_variable_and_stop_runaway_loops() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let id = app.must(&alice, &create_doc(), json!({"input": summarise()})).await["createTemplate"]["id"].clone();
    let (_, body) =
        app.gql_as(&alice, RENDER, json!({"id": id, "variables": {"sentences": "three", "colour": "red"}})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(problem_paths(&body), ["variables.colour", "variables.sentences", "variables.text"], "{body}");

    let loop_body = json!({"kind": "QUERY", "name": "Runaway",
        "body": {"prompt": "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}"}});
    let runaway = app.must(&alice, &create_doc(), json!({"input": loop_body})).await["createTemplate"]["id"].clone();
    let started = std::time::Instant::now();
    let (_, body) = app.gql_as(&alice, RENDER, json!({"id": runaway})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(started.elapsed() < std::time::Duration::from_secs(10), "the render stopped");
    // The server still answers.
    assert!(app.must(&alice, GET, json!({"id": id})).await["template"]["id"].is_string());

    let team = json!({"kind": "TEAM", "name": "A team", "body": {"format": "ensemble.team/v1",
        "agents": [{"name": "a", "model": "local/echo", "systemPrompt": "Hi"}]}});
    let team_template = app.must(&alice, &create_doc(), json!({"input": team})).await["createTemplate"]["id"].clone();
    let (_, body) = app.gql_as(&alice, RENDER, json!({"id": team_template})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "only QUERY templates render: {body}");
}

#[tokio::test]
async fn sharing_decides_who_sees_a_template() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let bob = app.token("user_bob", GlobalRole::Member);
    let carol = app.token("user_carol", GlobalRole::Member);
    app.must(&bob, "{ me { id } }", json!({})).await;
    let team = create_team(&app, &alice, "Writers").await;
    let add = "mutation($t: ID!) { addTeamMember(teamId: $t, input: {userId: \"user_bob\", role: VIEWER}) { userId } }";
    app.must(&alice, add, json!({"t": team})).await;

    let private = app.must(&alice, &create_doc(), json!({"input": summarise()})).await["createTemplate"]["id"].clone();
    let mut shared = summarise();
    shared["name"] = json!("Team summary");
    shared["visibility"] = json!("TEAM");
    shared["teamId"] = json!(team);
    let shared = app.must(&alice, &create_doc(), json!({"input": shared})).await["createTemplate"]["id"].clone();
    let mut public = summarise();
    public["name"] = json!("Public summary");
    public["visibility"] = json!("PUBLIC");
    let public = app.must(&alice, &create_doc(), json!({"input": public})).await["createTemplate"]["id"].clone();

    for (who, token, visible) in [("bob", &bob, [false, true, true]), ("carol", &carol, [false, false, true])] {
        for (id, expected) in [&private, &shared, &public].into_iter().zip(visible) {
            let (_, body) = app.gql_as(token, GET, json!({"id": id})).await;
            if expected {
                assert!(body.get("errors").is_none(), "{who} sees {id}: {body}");
            } else {
                assert_eq!(first_code(&body), "NOT_FOUND", "{who} must not see {id}: {body}");
            }
        }
    }
    let list = "query($f: TemplateFilter) { templates(filter: $f, first: 50) { nodes { id } } }";
    let ids = |data: &Value| -> Vec<Value> {
        data["templates"]["nodes"].as_array().unwrap().iter().map(|n| n["id"].clone()).collect()
    };
    let bobs = ids(&app.must(&bob, list, json!({"f": {"starter": false}})).await);
    assert_eq!(bobs, [shared.clone(), public.clone()]);
    let carols = ids(&app.must(&carol, list, json!({"f": {"starter": false}})).await);
    assert_eq!(carols, std::slice::from_ref(&public));
    let searched =
        ids(&app.must(&alice, list, json!({"f": {"search": "TEAM SUM", "kind": "QUERY", "starter": false}})).await);
    assert_eq!(searched, std::slice::from_ref(&shared));
    let percent = ids(&app.must(&alice, list, json!({"f": {"search": "100%", "starter": false}})).await);
    assert!(percent.is_empty(), "% matches itself only");

    // A viewer of the team may use its template but not change it; a stranger learns nothing.
    let (_, body) = app.gql_as(&bob, &update_doc(), json!({"id": shared, "input": {"name": "Mine"}})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "{body}");
    let (_, body) = app.gql_as(&carol, &update_doc(), json!({"id": private, "input": {"name": "Mine"}})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    // Forking makes one's own private copy.
    let fork = "mutation($id: ID!) { forkTemplate(id: $id) { id name visibility forkedFromId forkedFromVersion } }";
    let forked = app.must(&bob, fork, json!({"id": shared})).await["forkTemplate"].clone();
    assert_eq!(forked["name"], "Team summary (fork)");
    assert_eq!((forked["visibility"].as_str(), forked["forkedFromId"].clone()), (Some("PRIVATE"), shared.clone()));
    let renamed = app.must(&bob, &update_doc(), json!({"id": forked["id"], "input": {"name": "Bob's"}})).await;
    assert_eq!(renamed["updateTemplate"]["version"], 2);
    // Sharing with a team one does not edit is refused.
    let mut sneaky = summarise();
    sneaky["visibility"] = json!("TEAM");
    sneaky["teamId"] = json!(team);
    let (_, body) = app.gql_as(&carol, &create_doc(), json!({"input": sneaky})).await;
    assert_eq!(problem_paths(&body), ["input.teamId"], "{body}");

    let delete = "mutation($id: ID!) { deleteTemplate(id: $id) { slug version } }";
    let (_, body) = app.gql_as(&bob, delete, json!({"id": public})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "{body}");
    app.must(&alice, delete, json!({"id": public})).await;
    let (_, body) = app.gql_as(&alice, GET, json!({"id": public})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "deleted, and not served from a cache: {body}");
    assert_eq!(first_code(&app.gql(GET, json!({"id": private})).await), "UNAUTHENTICATED");
}

#[tokio::test]
async fn instantiating_makes_a_team_with_rendered_prompts_and_the_demo_conversation() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1",
        "agents": [{"name": "support", "model": "local/echo", "systemPrompt": "You help customers of {{ company }}."}]});
    let team_template = json!({"kind": "TEAM", "name": "Helpdesk", "body": spec,
        "variables": [{"name": "company", "type": "string", "required": true}]});
    let id = app.must(&alice, &create_doc(), json!({"input": team_template})).await["createTemplate"]["id"].clone();
    let instantiate = "mutation($id: ID!, $input: InstantiateTemplateInput!) { instantiateTemplate(id: $id, input: $input) { id name spec version } }";
    let (_, body) = app.gql_as(&alice, instantiate, json!({"id": id, "input": {"name": "Acme desk"}})).await;
    assert_eq!(problem_paths(&body), ["variables.company"], "{body}");
    let team = app
        .must(&alice, instantiate, json!({"id": id, "input": {"name": "Acme desk", "variables": {"company": "Acme"}}}))
        .await["instantiateTemplate"]
        .clone();
    assert_eq!(team["spec"]["agents"][0]["systemPrompt"], "You help customers of Acme.", "{team}");
    let run = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"Where is my order?\"}) { status output } }";
    let ran = app.must(&alice, run, json!({"t": team["id"]})).await;
    assert_eq!(ran["runTeam"]["status"], "SUCCEEDED", "{ran}");

    let demo = json!({"kind": "DEMO", "name": "Helpdesk demo", "body": {"team": spec, "conversation": [
        {"role": "user", "content": "My parcel is late."},
        {"role": "assistant", "agent": "support", "content": "Sorry! Let me check."}
    ]}, "variables": [{"name": "company", "type": "string", "default": "Initech"}]});
    let demo_id = app.must(&alice, &create_doc(), json!({"input": demo})).await["createTemplate"]["id"].clone();
    let made = app.must(&alice, instantiate, json!({"id": demo_id, "input": {"name": "Demo desk"}})).await;
    let team_id = made["instantiateTemplate"]["id"].as_str().unwrap().to_string();
    assert_eq!(made["instantiateTemplate"]["spec"]["agents"][0]["systemPrompt"], "You help customers of Initech.");
    let conversation = entity::conversations::Entity::find()
        .filter(entity::conversations::Column::TeamId.eq(&team_id))
        .one(&app.state.db)
        .await
        .unwrap()
        .expect("the demo's conversation");
    let replayed = messages::Entity::find()
        .filter(messages::Column::ConversationId.eq(&conversation.id))
        .all(&app.state.db)
        .await
        .unwrap();
    assert_eq!(replayed.len(), 2);
    assert_eq!(replayed[1].parent_id.as_ref(), Some(&replayed[0].id), "one thread");
    assert_eq!(replayed[1].agent.as_deref(), Some("support"));
    // The conversation continues from the replayed answer.
    let send = "mutation($c: ID!, $p: ID) { sendMessage(conversationId: $c, content: \"Any news?\", parentMessageId: $p) { status } }";
    let sent = app.must(&alice, send, json!({"c": conversation.id, "p": replayed[1].id})).await;
    assert_eq!(sent["sendMessage"]["status"], "SUCCEEDED", "{sent}");

    let query = app.must(&alice, &create_doc(), json!({"input": summarise()})).await["createTemplate"]["id"].clone();
    let (_, body) = app.gql_as(&alice, instantiate, json!({"id": query, "input": {"name": "Nope"}})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "a QUERY template makes no team: {body}");
}

#[tokio::test]
async fn a_category_in_use_cannot_be_deleted() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let create = "mutation { createTemplateCategory(input: {name: \"Filed\"}) { id slug } }";
    let category = app.must(&admin, create, json!({})).await["createTemplateCategory"].clone();
    let mut filed = summarise();
    filed["category"] = category["slug"].clone();
    let template = app.must(&admin, &create_doc(), json!({"input": filed})).await["createTemplate"].clone();
    assert_eq!(template["category"]["slug"], "filed");
    let delete = "mutation($id: ID!) { deleteTemplateCategory(id: $id) { slug } }";
    let (_, body) = app.gql_as(&admin, delete, json!({"id": category["id"]})).await;
    assert_eq!(first_code(&body), "CONFLICT", "{body}");
    app.must(&admin, "mutation($id: ID!) { deleteTemplate(id: $id) { slug } }", json!({"id": template["id"]})).await;
    app.must(&admin, delete, json!({"id": category["id"]})).await;
}

/// A QUERY template's input whose prompt says `text`.
fn prompt(text: &str) -> TemplateInput {
    TemplateInput { body: Some(json!({"prompt": text})), ..Default::default() }
}

#[tokio::test]
async fn a_save_that_met_another_save_is_numbered_after_it_or_refused_with_the_version_it_met() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let input = json!({"kind": "QUERY", "name": "Greeting", "body": {"prompt": "Hello"}});
    let id = app.must(&alice, &create_doc(), json!({"input": input})).await["createTemplate"]["id"].clone();
    let id = id.as_str().unwrap();
    let caller = app.caller(&alice).await;
    let save = |text: &str| app.later(&alice, &update_doc(), json!({"id": id, "input": {"body": {"prompt": text}}}));

    // Saved by someone else between this save's read and its batch: read again, the next version.
    let other = app.meanwhile(save("Hello from the other save"));
    let saved = other.templates.update(&caller, id, prompt("Hello from this save"), None).await.unwrap();
    assert_eq!((saved.template.version, saved.version.version), (3, 3));
    // With the version the caller saw, the same meeting is CONFLICT naming the version it met.
    let other = app.meanwhile(save("Hello again from the other save"));
    let refused = other.templates.update(&caller, id, prompt("Hello again"), Some(3)).await.err().unwrap();
    assert_eq!(
        refused.to_string(),
        "The template is at version 4, not 3: reload it and apply your change again.",
        "{refused:?}"
    );

    let versions = template_versions::Entity::find()
        .filter(template_versions::Column::TemplateId.eq(id))
        .all(&app.state.db)
        .await
        .unwrap();
    let prompts: Vec<(i32, &str)> = versions.iter().map(|v| (v.version, v.body["prompt"].as_str().unwrap())).collect();
    assert_eq!(
        prompts,
        [
            (1, "Hello"),
            (2, "Hello from the other save"),
            (3, "Hello from this save"),
            (4, "Hello again from the other save")
        ]
    );
    let template = app.must(&alice, GET, json!({"id": id})).await["template"].clone();
    assert_eq!(template["version"], 4);
    assert_audit_chain(&app, 4).await;
}

#[tokio::test]
async fn a_template_saved_or_deleted_meanwhile_is_read_again_before_it_is_deleted() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let caller = app.caller(&alice).await;
    let create = |name: &str| json!({"input": {"kind": "QUERY", "name": name, "body": {"prompt": "Hello"}}});
    let saved = app.must(&alice, &create_doc(), create("Saved meanwhile")).await["createTemplate"]["id"].clone();
    let saved = saved.as_str().unwrap();
    let gone = app.must(&alice, &create_doc(), create("Deleted meanwhile")).await["createTemplate"]["id"].clone();
    let gone = gone.as_str().unwrap();

    let save = app.later(&alice, &update_doc(), json!({"id": saved, "input": {"name": "Saved again"}}));
    let deleted = app.meanwhile(save).templates.delete(&caller, saved).await.unwrap();
    assert_eq!((deleted.name.as_str(), deleted.version), ("Saved again", 2), "answered as it was when deleted");
    let delete = app.later(&alice, "mutation($id: ID!) { deleteTemplate(id: $id) { slug } }", json!({"id": gone}));
    let refused = app.meanwhile(delete).templates.delete(&caller, gone).await.err().unwrap();
    assert!(matches!(refused, AppError::NotFound(_)), "{refused:?}");

    let left = templates::Entity::find().filter(templates::Column::Id.is_in([saved, gone])).count(&app.state.db);
    assert_eq!(left.await.unwrap(), 0);
    let deletes: Vec<Value> = audit_logs::Entity::find()
        .filter(audit_logs::Column::Action.eq("template.delete"))
        .order_by_asc(audit_logs::Column::Seq)
        .all(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| row.changes.unwrap()["version"].clone())
        .collect();
    assert_eq!(deletes, [json!(2), json!(1)], "one row per deletion, with the version deleted");
}

#[tokio::test]
async fn a_template_made_meanwhile_under_the_same_name_leaves_the_slug_to_it() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let caller = app.caller(&alice).await;
    let input = json!({"kind": "QUERY", "name": "Morning Greeting", "body": {"prompt": "Hello"}});
    let first = app.later(&alice, &create_doc(), json!({"input": input}));

    let input = TemplateInput { kind: Some(Kind::Query), name: Some("Morning Greeting".into()), ..prompt("Hi") };
    let made = app.meanwhile(first).templates.create(&caller, input).await.unwrap();

    let slugs: Vec<String> = templates::Entity::find()
        .filter(templates::Column::Name.eq("Morning Greeting"))
        .all(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|t| t.slug)
        .collect();
    assert_eq!(slugs.len(), 2, "{slugs:?}");
    assert!(slugs.contains(&"morning-greeting".to_string()), "{slugs:?}");
    assert!(made.template.slug.starts_with("morning-greeting-") && slugs.contains(&made.template.slug), "{slugs:?}");
    assert_eq!(made.version.version, 1);
    assert_audit_chain(&app, 2).await;
}

/// The audit log holds `rows` rows and its chain verifies.
async fn assert_audit_chain(app: &TestApp, rows: u64) {
    assert_eq!(audit_logs::Entity::find().count(&app.state.db).await.unwrap(), rows, "one row per mutation");
    let admin = app.token("user_admin", GlobalRole::Admin);
    let verified = app.must(&admin, "{ verifyAuditLog { ok checkedRows } }", json!({})).await;
    assert_eq!(verified["verifyAuditLog"], json!({"ok": true, "checkedRows": rows}));
}

#[tokio::test]
async fn a_long_demo_conversation_is_copied_whole_in_order() {
    let app = TestApp::spawn().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "support", "model": "local/echo"}]});
    // More messages than one statement binds on D1, some of them long.
    let conversation: Vec<Value> = (0..40)
        .map(|n| match n % 2 {
            0 => {
                json!({"role": "user", "content": format!("{n} {}", "é".repeat(if n % 10 == 0 { 19_000 } else { 10 }))})
            }
            _ => json!({"role": "assistant", "agent": "support", "content": format!("{n}")}),
        })
        .collect();
    let demo = json!({"kind": "DEMO", "name": "Long demo", "body": {"team": spec, "conversation": conversation}});
    let id = app.must(&alice, &create_doc(), json!({"input": demo})).await["createTemplate"]["id"].clone();
    let instantiate =
        "mutation($id: ID!, $input: InstantiateTemplateInput!) { instantiateTemplate(id: $id, input: $input) { id } }";
    let made = app.must(&alice, instantiate, json!({"id": id, "input": {"name": "Long desk"}})).await;
    let team_id = made["instantiateTemplate"]["id"].as_str().unwrap().to_string();

    let db = &app.state.db;
    let replay = entity::conversations::Entity::find().filter(entity::conversations::Column::TeamId.eq(&team_id));
    let replay = replay.one(db).await.unwrap().expect("the demo's conversation");
    let rows = messages::Entity::find().filter(messages::Column::ConversationId.eq(&replay.id)).all(db).await.unwrap();
    let mut rows: Vec<_> = rows.into_iter().map(|m| (m.created_at, m)).collect();
    rows.sort_by_key(|(at, _)| *at);
    let contents: Vec<&str> = rows.iter().map(|(_, m)| m.content.as_str()).collect();
    let expected: Vec<&str> = conversation.iter().map(|m| m["content"].as_str().unwrap()).collect();
    assert_eq!(contents, expected, "every message, in order");
    for pair in rows.windows(2) {
        assert_eq!(pair[1].1.parent_id.as_ref(), Some(&pair[0].1.id), "one thread");
    }
    let rows = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("template.instantiate"));
    assert_eq!(rows.count(db).await.unwrap(), 1);
}
