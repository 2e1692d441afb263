use std::time::{Duration, Instant};

use serde_json::json;

use super::*;

fn paths(problems: &[Problem]) -> Vec<&str> {
    problems.iter().map(|problem| problem.path.as_str()).collect()
}

fn problems(kind: Kind, body: Value, variables: Value) -> Vec<Problem> {
    check(kind, &body, &variables, &Allowed::default()).expect_err("the body should have problems")
}

fn message_at<'a>(problems: &'a [Problem], path: &str) -> &'a str {
    problems.iter().find(|problem| problem.path == path).map(|problem| problem.message.as_str()).unwrap_or_default()
}

fn team_body(prompt: &str) -> Value {
    json!({"format": "ensemble.team/v1", "agents": [
        {"name": "triage", "model": "local/echo", "systemPrompt": prompt},
        {"name": "billing", "model": "local/echo", "systemPrompt": "You handle invoices."}
    ]})
}

fn context(value: Value) -> Map<String, Value> {
    value.as_object().cloned().unwrap_or_default()
}

#[test]
fn every_problem_with_the_variable_declarations_is_listed_at_once() {
    let variables = json!([
        {"name": "ok", "type": "string", "colour": "red"},
        {"name": "1st", "type": "string"},
        {"name": "steps", "type": "string"},
        {"name": "ok", "type": "string"},
        {"name": "count", "type": "float"},
        {"name": "tier", "type": "string", "required": true, "default": "gold"},
        {"name": "limit", "type": "integer", "default": 2.5},
        {"name": "notes", "type": "string", "description": "x".repeat(501)},
        {"name": "a".repeat(65), "type": "string"},
        "plain"
    ]);
    let found = problems(Kind::Query, json!({"prompt": "Hi"}), variables);
    assert_eq!(
        paths(&found),
        [
            "variables[0].colour",
            "variables[1].name",
            "variables[2].name",
            "variables[3].name",
            "variables[4].type",
            "variables[5].default",
            "variables[6].default",
            "variables[7].description",
            "variables[8].name",
            "variables[9]",
        ]
    );
    assert!(message_at(&found, "variables[5].default").contains("required"), "{found:?}");
    assert!(message_at(&found, "variables[6].default").contains("whole number"), "{found:?}");
}

#[test]
fn variables_must_be_a_list() {
    let found = problems(Kind::Query, json!({"prompt": "Hi"}), json!({"name": "x"}));
    assert_eq!(paths(&found), ["variables"]);
}

#[test]
fn declarations_come_back_as_given_with_defaults() {
    let variables = json!([
        {"name": "customer", "type": "string", "required": true, "description": "Who asks"},
        {"name": "tone", "type": "string", "default": "friendly"}
    ]);
    let checked =
        check(Kind::Query, &json!({"prompt": "{{ customer }} {{ tone }}"}), &variables, &Allowed::default()).unwrap();
    assert_eq!(checked.variables[0].name, "customer");
    assert!(checked.variables[0].required);
    assert_eq!(checked.variables[1].default, Some(json!("friendly")));
}

#[test]
fn a_team_body_is_checked_as_a_spec_and_its_prompts_as_templates() {
    let mut body = team_body("Line one\nline two\nHelp {{ customer }} with {{ product");
    body["agents"][1]["model"] = json!("echo");
    body["agents"][1]["systemPrompt"] = json!("Serve {{ customer }} in {{ language }}.");
    body["extra"] = json!(true);
    let variables = json!([{"name": "customer", "type": "string"}]);
    let found = problems(Kind::Team, body, variables);
    assert_eq!(
        paths(&found),
        ["body.extra", "body.agents[1].model", "body.agents[0].systemPrompt", "body.agents[1].systemPrompt"]
    );
    let syntax = &found[2];
    assert!(syntax.message.starts_with("is not a valid template"), "{syntax:?}");
    assert_eq!((syntax.line, syntax.column), (Some(3), Some(29)));
    assert_eq!(found[3].message, "uses `language`, which is not declared in variables");
}

#[test]
fn a_team_body_is_stored_as_the_canonical_spec() {
    let body = team_body("Help {{ customer }}.");
    let variables = json!([{"name": "customer", "type": "string", "required": true}]);
    let checked = check(Kind::Team, &body, &variables, &Allowed::default()).unwrap();
    assert_eq!(checked.body, versions::validate_spec(&body, &ProviderSettings::default()).unwrap());
    assert_eq!(check(Kind::Team, &checked.body, &variables, &Allowed::default()).unwrap().body, checked.body);
}

#[test]
fn a_query_lists_every_problem_at_once() {
    let found = problems(Kind::Query, json!({"prompt": "  ", "title": "x"}), Value::Null);
    assert_eq!(paths(&found), ["body.title", "body.prompt"]);
    let found = problems(Kind::Query, json!({"prompt": "x".repeat(100_001)}), Value::Null);
    assert_eq!(paths(&found), ["body.prompt"]);
    assert_eq!(paths(&problems(Kind::Query, json!("Hi"), Value::Null)), ["body"]);
}

#[test]
fn a_syntax_error_is_placed_at_its_line_and_column() {
    let found = problems(
        Kind::Query,
        json!({"prompt": "Dear {{ name }},\n\nPlease é {% if %}"}),
        json!([{"name": "name", "type": "string"}]),
    );
    assert_eq!(paths(&found), ["body.prompt"]);
    assert_eq!((found[0].line, found[0].column), (Some(3), Some(16)), "{found:?}");
}

#[test]
fn a_query_may_use_only_declared_variables_and_builtins() {
    let prompt = "{% for i in range(3) %}{{ topic.title }}{% endfor %}{% if tone is defined %}{{ tone }}{% endif %}";
    let found = problems(Kind::Query, json!({"prompt": prompt}), json!([{"name": "topic", "type": "object"}]));
    assert_eq!(paths(&found), ["body.prompt"]);
    assert_eq!(found[0].message, "uses `tone`, which is not declared in variables");
    let variables = json!([{"name": "topic", "type": "object"}, {"name": "tone", "type": "string"}]);
    assert!(check(Kind::Query, &json!({"prompt": prompt}), &variables, &Allowed::default()).is_ok());
}

#[test]
fn a_variable_whose_declaration_is_broken_is_not_also_called_undeclared() {
    let found = problems(Kind::Query, json!({"prompt": "{{ tone }}"}), json!([{"name": "tone", "type": "text"}]));
    assert_eq!(paths(&found), ["variables[0].type"]);
}

fn workflow(steps: Value) -> Value {
    json!({ "steps": steps })
}

#[test]
fn workflow_steps_read_only_earlier_outputs() {
    let body = workflow(json!([
        {"id": "draft", "prompt": "{{ steps.review.output }} {{ steps.missing.output }} {{ steps.draft.output }}"},
        {"id": "review", "agent": "critic", "prompt": "Review {{ steps.draft.output | upper }} for {{ audience }}"},
        {"id": "final", "template": "summarise", "variables": {"text": "{{ steps.final.output }}", "n": 3, "all": "{{ steps }}"}}
    ]));
    let found = problems(Kind::Workflow, body, json!([{"name": "audience", "type": "string"}]));
    let got: Vec<(&str, &str)> = found.iter().map(|p| (p.path.as_str(), p.message.as_str())).collect();
    assert_eq!(
        got,
        [
            ("body.steps[0].prompt", "refers to its own step `draft`, whose output does not exist yet"),
            ("body.steps[0].prompt", "refers to step `missing`, which does not exist"),
            ("body.steps[0].prompt", "refers to step `review`, which runs later"),
            (
                "body.steps[2].variables.all",
                "uses `steps` other than as `steps.<id>.output` or `steps.<id>.iterations`"
            ),
            ("body.steps[2].variables.text", "refers to its own step `final`, whose output does not exist yet"),
        ]
    );
}

#[test]
fn every_problem_with_workflow_steps_is_listed_at_once() {
    let body = workflow(json!([
        {"id": "Research", "prompt": "a"},
        {"id": "ok", "prompt": "b", "template": "t"},
        {"id": "ok", "agent": "", "colour": 1},
        {"id": "t", "template": "", "version": 0, "variables": []},
        {"id": "p", "prompt": "{{ x ", "version": 2},
        7
    ]));
    let found = problems(Kind::Workflow, body, Value::Null);
    assert_eq!(
        paths(&found),
        [
            "body.steps[0].id",
            "body.steps[1]",
            "body.steps[2].colour",
            "body.steps[2].id",
            "body.steps[2].agent",
            "body.steps[2]",
            "body.steps[3].template",
            "body.steps[3].version",
            "body.steps[3].variables",
            "body.steps[4].version",
            "body.steps[5]",
            "body.steps[4].prompt",
        ]
    );
    assert_eq!(paths(&problems(Kind::Workflow, workflow(json!([])), Value::Null)), ["body.steps"]);
    let many: Vec<Value> = (0..21).map(|i| json!({"id": format!("s{i}"), "prompt": "x"})).collect();
    assert_eq!(paths(&problems(Kind::Workflow, workflow(json!(many)), Value::Null)), ["body.steps"]);
}

#[test]
fn a_valid_workflow_is_stored_in_canonical_form_and_read_back_as_steps() {
    let body = workflow(json!([
        {"prompt": "Research {{ topic }}", "agent": "researcher", "id": "research"},
        {"variables": {"text": "{{ steps.research.output }}"}, "version": 2, "template": "summarise", "id": "summary"},
        {"id": "plain", "template": "notes", "variables": {}}
    ]));
    let variables = json!([{"name": "topic", "type": "string", "required": true}]);
    let checked = check(Kind::Workflow, &body, &variables, &Allowed::default()).unwrap();
    assert_eq!(
        checked.body,
        workflow(json!([
            {"id": "research", "agent": "researcher", "prompt": "Research {{ topic }}"},
            {"id": "summary", "template": "summarise", "version": 2, "variables": {"text": "{{ steps.research.output }}"}},
            {"id": "plain", "template": "notes"}
        ]))
    );
    assert_eq!(check(Kind::Workflow, &checked.body, &variables, &Allowed::default()).unwrap().body, checked.body);
    let read = steps(&checked.body);
    assert_eq!(read.len(), 3);
    assert_eq!(read[0].agent.as_deref(), Some("researcher"));
    assert_eq!(read[0].source, StepSource::Prompt("Research {{ topic }}".into()));
    let StepSource::Template { template, version, variables } = &read[1].source else {
        panic!("the second step runs a template: {read:?}");
    };
    assert_eq!((template.as_str(), *version), ("summarise", Some(2)));
    assert_eq!(variables["text"], json!("{{ steps.research.output }}"));
}

fn demo(conversation: Value) -> Value {
    json!({"team": team_body("Help {{ customer }}."), "conversation": conversation})
}

#[test]
fn every_problem_with_a_demo_is_listed_at_once() {
    let mut body = demo(json!([
        {"role": "user", "agent": "triage", "content": "Hi"},
        {"role": "assistant", "agent": "nobody", "content": ""},
        {"role": "system", "content": "x".repeat(20_001), "mood": "calm"}
    ]));
    body["team"]["agents"][0]["model"] = json!("nowhere/model");
    body["notes"] = json!("x");
    let found = problems(Kind::Demo, body, Value::Null);
    assert_eq!(
        paths(&found),
        [
            "body.notes",
            "body.team.agents[0].model",
            "body.team.agents[0].systemPrompt",
            "body.conversation[0].agent",
            "body.conversation[1].content",
            "body.conversation[1].agent",
            "body.conversation[2].mood",
            "body.conversation[2].role",
            "body.conversation[2].content",
        ]
    );
    assert_eq!(
        paths(&problems(Kind::Demo, demo(json!([])), json!([{"name": "customer", "type": "string"}]))),
        ["body.conversation"]
    );
    assert_eq!(paths(&problems(Kind::Demo, json!({}), Value::Null)), ["body.team", "body.conversation"]);
}

#[test]
fn a_valid_demo_is_canonical_and_gives_back_its_team_and_conversation() {
    let sample = json!([
        {"content": "My invoice is wrong", "role": "user"},
        {"agent": "billing", "role": "assistant", "content": "Let me look."}
    ]);
    let variables = json!([{"name": "customer", "type": "string", "default": "you"}]);
    let checked = check(Kind::Demo, &demo(sample), &variables, &Allowed::default()).unwrap();
    assert_eq!(
        checked.body["team"],
        versions::validate_spec(&team_body("Help {{ customer }}."), &ProviderSettings::default()).unwrap()
    );
    assert_eq!(check(Kind::Demo, &checked.body, &variables, &Allowed::default()).unwrap().body, checked.body);
    let messages = conversation(&checked.body);
    assert_eq!(messages.len(), 2);
    assert_eq!((messages[1].role.as_str(), messages[1].agent.as_deref()), ("assistant", Some("billing")));
    let given = values(&checked.variables, &Value::Null).unwrap();
    let spec = team_spec(Kind::Demo, &checked.body, &given).unwrap();
    assert_eq!(spec["agents"][0]["systemPrompt"], "Help you.");
    assert_eq!(spec["agents"][1]["systemPrompt"], "You handle invoices.");
}

#[test]
fn team_spec_renders_system_prompts_and_names_their_problems() {
    let body = team_body("Help {{ customer | upper }}.");
    let spec = team_spec(Kind::Team, &body, &context(json!({"customer": "ada"}))).unwrap();
    assert_eq!(spec["agents"][0]["systemPrompt"], "Help ADA.");
    let found = team_spec(Kind::Team, &body, &Map::new()).unwrap_err();
    assert_eq!(paths(&found), ["body.agents[0].systemPrompt"]);
    assert_eq!(found[0].message, "uses `customer`, which has no value");
    let found = team_spec(Kind::Demo, &json!({"team": body}), &Map::new()).unwrap_err();
    assert_eq!(paths(&found), ["body.team.agents[0].systemPrompt"]);
    assert!(team_spec(Kind::Query, &json!({"prompt": "x"}), &Map::new()).is_err());
}

fn declared() -> Vec<Variable> {
    let variables = json!([
        {"name": "customer", "type": "string", "required": true},
        {"name": "count", "type": "integer", "default": 3},
        {"name": "ratio", "type": "number"},
        {"name": "tone", "type": "string"}
    ]);
    check(Kind::Query, &json!({"prompt": "x"}), &variables, &Allowed::default()).unwrap().variables
}

#[test]
fn values_name_a_missing_a_mistyped_and_an_unknown_variable_at_once() {
    let found = values(&declared(), &json!({"count": "three", "colour": "red"})).unwrap_err();
    assert_eq!(paths(&found), ["variables.colour", "variables.count", "variables.customer"]);
    assert_eq!(found[2].message, "is required");
    let found = values(&declared(), &json!({"customer": null, "count": 1.5, "ratio": "x"})).unwrap_err();
    assert_eq!(paths(&found), ["variables.count", "variables.customer", "variables.ratio"]);
    assert_eq!(paths(&values(&declared(), &json!([1])).unwrap_err()), ["variables"]);
}

#[test]
fn defaults_fill_absent_optional_variables_and_others_stay_unset() {
    let given = values(&declared(), &json!({"customer": "Ada", "ratio": 2})).unwrap();
    assert_eq!(Value::Object(given.clone()), json!({"customer": "Ada", "count": 3, "ratio": 2}));
    let text = "{{ customer }} x{{ count }}{% if tone is defined %} in a {{ tone }} tone{% endif %}";
    assert_eq!(render("body.prompt", text, &given).unwrap(), "Ada x3");
    let given = values(&declared(), &json!({"customer": "Ada", "count": 5, "tone": "warm"})).unwrap();
    assert_eq!(render("body.prompt", text, &given).unwrap(), "Ada x5 in a warm tone");
}

#[test]
fn rendering_names_the_missing_variable_where_it_is_used() {
    let found = render("body.prompt", "Hello\n  {{ customer.name }}", &Map::new()).unwrap_err();
    assert_eq!(paths(&found), ["body.prompt"]);
    assert_eq!(found[0].message, "uses `customer`, which has no value");
    assert_eq!((found[0].line, found[0].column), (Some(2), Some(6)));
    let found = render("body.prompt", "{{ x", &Map::new()).unwrap_err();
    assert!(found[0].message.starts_with("is not a valid template"), "{found:?}");
}

#[test]
fn runaway_templates_stop_quickly() {
    let started = Instant::now();
    let looped = "{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}{% endfor %}";
    let found = render("body.prompt", looped, &Map::new()).unwrap_err();
    assert!(started.elapsed() < Duration::from_millis(500), "took {:?}", started.elapsed());
    assert_eq!(found[0].message, "stopped: the template ran too long (a loop that is too big?)");
    let recursive = "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}";
    let found = render("body.prompt", recursive, &Map::new()).unwrap_err();
    assert_eq!(found[0].message, "stopped: the template ran too long (a loop that is too big?)");
    let found = render("body.prompt", "{{ 'x' * 2000000 }}", &Map::new()).unwrap_err();
    assert_eq!(paths(&found), ["body.prompt"]);
}

#[test]
fn ordinary_loops_render() {
    let items: Vec<Value> = (0..300).map(|i| json!({"name": format!("item {i}"), "price": i})).collect();
    let text = "{% for item in items %}{{ loop.index }}. {{ item.name | title }}: {{ item.price }}\n{% endfor %}";
    let out = render("body.prompt", text, &context(json!({"items": items}))).unwrap();
    assert_eq!(out.lines().count(), 300);
}

#[test]
fn templates_cannot_reach_files_or_engine_state() {
    for text in ["{% include '/etc/passwd' %}", "{{ debug() }}"] {
        assert!(render("body.prompt", text, &Map::new()).is_err(), "{text}");
    }
}

#[test]
fn checking_twice_stores_the_same_json() {
    let body = json!({"prompt": "Summarise {{ text }}"});
    let variables = json!([{"name": "text", "type": "string", "required": true}]);
    let first = check(Kind::Query, &body, &variables, &Allowed::default()).unwrap();
    let second =
        check(Kind::Query, &first.body, &serde_json::to_value(&first.variables).unwrap(), &Allowed::default()).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.body, body);
}
