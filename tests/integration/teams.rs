//! Teams: creating, listing, editing, archiving, deleting, and their members and roles.

use crate::common;

use common::{TestApp, first_code, meanwhile, problem_paths};
use ensemble::{
    domain::{Caller, GlobalRole, TeamRole},
    service::teams::{self, NewTeam},
};
use entity::audit_logs;
use sea_orm::{EntityTrait, PaginatorTrait, QueryOrder};
use serde_json::{Value, json};

const CREATE: &str = "mutation($input: CreateTeamInput!) { createTeam(input: $input) { id name slug version visibility myRole spec members { userId role user { id email } } } }";
const ADD: &str = "mutation($team: ID!, $user: ID!, $role: TeamRole!) { addTeamMember(teamId: $team, input: {userId: $user, role: $role}) { userId role } }";
const UPDATE_MEMBER: &str = "mutation($team: ID!, $user: ID!, $role: TeamRole!) { updateTeamMember(teamId: $team, input: {userId: $user, role: $role}) { userId role } }";
const REMOVE: &str = "mutation($team: ID!, $user: ID!) { removeTeamMember(teamId: $team, userId: $user) { userId } }";

async fn signed_in(app: &TestApp, user: &str) -> String {
    let token = app.token(user, GlobalRole::Member);
    app.gql_as(&token, "{ me { id } }", json!({})).await;
    token
}

async fn create(app: &TestApp, token: &str, input: Value) -> Value {
    let (_, body) = app.gql_as(token, CREATE, json!({"input": input})).await;
    body
}

#[tokio::test]
async fn a_new_team_has_its_creator_as_owner_and_a_default_spec() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let body = create(&app, &owner, json!({"name": "  Support Triage "})).await;
    let team = &body["data"]["createTeam"];
    assert_eq!(team["name"], "Support Triage");
    assert_eq!(team["slug"], "support-triage");
    assert_eq!(team["version"], 1);
    assert_eq!(team["visibility"], "PRIVATE");
    assert_eq!(team["myRole"], "OWNER");
    assert_eq!(team["spec"]["format"], "ensemble.team/v1");
    assert_eq!(team["spec"]["agents"][0]["model"], "local/echo");
    assert_eq!(
        team["members"],
        json!([{"userId": "user_o", "role": "OWNER", "user": {"id": "user_o", "email": "user_o@example.com"}}])
    );

    let again = create(&app, &owner, json!({"name": "Support triage"})).await;
    let slug = again["data"]["createTeam"]["slug"].as_str().unwrap();
    assert!(slug.starts_with("support-triage-") && slug.len() == "support-triage-".len() + 6, "{slug}");
}

#[tokio::test]
async fn bad_team_input_lists_every_problem_and_creates_nothing() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let body = create(&app, &owner, json!({"name": " ", "description": "d".repeat(2001), "spec": [1, 2]})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");
    assert_eq!(problem_paths(&body), ["name", "description", "spec"]);
    let (_, list) = app.gql_as(&owner, "{ teams { nodes { id } } }", json!({})).await;
    assert_eq!(list["data"]["teams"]["nodes"], json!([]));
}

/// Apollo Client and urql show an error's `message` only: it says the first problem in words.
#[tokio::test]
async fn a_refused_team_says_its_first_problem_in_the_message() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let mistral = json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": "mistral/large"}]});
    let unknown = "spec.agents[0].model: unknown provider \"mistral\" — set ENSEMBLE_PROVIDER_MISTRAL_BASE_URL";
    let body = create(&app, &owner, json!({"name": "Mistral", "spec": mistral})).await;
    assert_eq!(body["errors"][0]["message"], unknown, "{body}");
    assert_eq!(problem_paths(&body), ["spec.agents[0].model"], "the list is still there");

    let body = create(&app, &owner, json!({"name": " ", "description": "d".repeat(2001), "spec": [1, 2]})).await;
    assert_eq!(body["errors"][0]["message"], "name: must be 1 to 100 characters (and 2 more problems)", "{body}");

    let id = create(&app, &owner, json!({"name": "Fine"})).await["data"]["createTeam"]["id"].clone();
    let update = "mutation($id: ID!, $spec: JSON) { updateTeam(id: $id, input: {spec: $spec}) { version } }";
    let (_, body) = app.gql_as(&owner, update, json!({"id": id, "spec": mistral})).await;
    assert_eq!(body["errors"][0]["message"], unknown, "{body}");
}

#[tokio::test]
async fn teams_lists_your_teams_newest_first_page_by_page() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let other = signed_in(&app, "user_x").await;
    for name in ["One", "Two", "Three"] {
        create(&app, &owner, json!({"name": name})).await;
    }
    create(&app, &other, json!({"name": "Not yours"})).await;
    let list = "query($after: String) { teams(first: 2, after: $after) { nodes { name } pageInfo { hasNextPage endCursor } } }";
    let (_, page1) = app.gql_as(&owner, list, json!({})).await;
    assert_eq!(page1["data"]["teams"]["nodes"], json!([{"name": "Three"}, {"name": "Two"}]));
    let after = page1["data"]["teams"]["pageInfo"]["endCursor"].clone();
    let (_, page2) = app.gql_as(&owner, list, json!({"after": after})).await;
    assert_eq!(page2["data"]["teams"]["nodes"], json!([{"name": "One"}]));
    assert_eq!(page2["data"]["teams"]["pageInfo"]["hasNextPage"], false);
}

#[tokio::test]
async fn a_stale_expected_version_is_a_conflict_naming_the_current_one() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let id = create(&app, &owner, json!({"name": "Support"})).await["data"]["createTeam"]["id"].clone();
    let update =
        "mutation($id: ID!, $v: Int) { updateTeam(id: $id, input: {name: \"Renamed\"}, expectedVersion: $v) { name } }";
    let (_, body) = app.gql_as(&owner, update, json!({"id": id, "v": 7})).await;
    assert_eq!(first_code(&body), "CONFLICT");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("version 1"));
    let (_, body) = app.gql_as(&owner, update, json!({"id": id, "v": 1})).await;
    assert_eq!(body["data"]["updateTeam"]["name"], "Renamed");
}

#[tokio::test]
async fn the_last_owner_can_be_neither_demoted_nor_removed() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    signed_in(&app, "user_p").await;
    let team = create(&app, &owner, json!({"name": "Support"})).await["data"]["createTeam"]["id"].clone();
    let (_, body) = app.gql_as(&owner, UPDATE_MEMBER, json!({"team": team, "user": "user_o", "role": "EDITOR"})).await;
    assert_eq!(first_code(&body), "CONFLICT");
    let (_, body) = app.gql_as(&owner, REMOVE, json!({"team": team, "user": "user_o"})).await;
    assert_eq!(first_code(&body), "CONFLICT");

    app.gql_as(&owner, ADD, json!({"team": team, "user": "user_p", "role": "OWNER"})).await;
    let (_, body) = app.gql_as(&owner, UPDATE_MEMBER, json!({"team": team, "user": "user_o", "role": "EDITOR"})).await;
    assert_eq!(body["data"]["updateTeamMember"], json!({"userId": "user_o", "role": "EDITOR"}));
}

#[tokio::test]
async fn members_are_added_once_and_may_leave() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let viewer = signed_in(&app, "user_v").await;
    let team = create(&app, &owner, json!({"name": "Support"})).await["data"]["createTeam"]["id"].clone();
    let (_, body) = app.gql_as(&owner, ADD, json!({"team": team, "user": "user_v", "role": "VIEWER"})).await;
    assert_eq!(body["data"]["addTeamMember"], json!({"userId": "user_v", "role": "VIEWER"}));
    let (_, body) = app.gql_as(&owner, ADD, json!({"team": team, "user": "user_v", "role": "EDITOR"})).await;
    assert_eq!(first_code(&body), "CONFLICT");
    let (_, body) = app.gql_as(&owner, ADD, json!({"team": team, "user": "user_never_seen", "role": "EDITOR"})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT");

    let (_, body) = app.gql_as(&viewer, REMOVE, json!({"team": team, "user": "user_v"})).await;
    assert_eq!(body["data"]["removeTeamMember"]["userId"], "user_v", "a member may leave: {body}");
    let (_, body) = app.gql_as(&viewer, "query($id: ID!) { team(id: $id) { id } }", json!({"id": team})).await;
    assert_eq!(first_code(&body), "NOT_FOUND");
}

#[tokio::test]
async fn a_public_team_is_visible_to_anyone_but_its_members_are_not() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let team =
        create(&app, &owner, json!({"name": "Showcase", "visibility": "PUBLIC"})).await["data"]["createTeam"]["id"]
            .clone();
    let body = app.gql("query($id: ID!) { team(id: $id) { name myRole } }", json!({"id": team})).await;
    assert_eq!(body["data"]["team"], json!({"name": "Showcase", "myRole": null}));
    let body = app.gql("query($id: ID!) { team(id: $id) { members { userId } } }", json!({"id": team})).await;
    assert_eq!(first_code(&body), "FORBIDDEN");
    let body =
        app.gql("mutation($id: ID!) { updateTeam(id: $id, input: {name: \"x\"}) { id } }", json!({"id": team})).await;
    assert_eq!(first_code(&body), "UNAUTHENTICATED");
}

#[tokio::test]
async fn archiving_keeps_the_team_and_deleting_removes_it() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let team = create(&app, &owner, json!({"name": "Old"})).await["data"]["createTeam"]["id"].clone();
    let (_, body) =
        app.gql_as(&owner, "mutation($id: ID!) { archiveTeam(id: $id) { archivedAt } }", json!({"id": team})).await;
    assert!(body["data"]["archiveTeam"]["archivedAt"].is_string(), "{body}");
    let (_, body) =
        app.gql_as(&owner, "mutation($id: ID!) { deleteTeam(id: $id) { name } }", json!({"id": team})).await;
    assert_eq!(body["data"]["deleteTeam"]["name"], "Old");
    let (_, body) = app.gql_as(&owner, "query($id: ID!) { team(id: $id) { id } }", json!({"id": team})).await;
    assert_eq!(first_code(&body), "NOT_FOUND");
}

/// `template` with every string `"$BAD"` in it replaced by `bad`.
fn fill(template: &Value, bad: &str) -> Value {
    match template {
        Value::String(s) if s == "$BAD" => Value::String(bad.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(|v| fill(v, bad)).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), fill(v, bad))).collect()),
        other => other.clone(),
    }
}

#[tokio::test]
async fn names_with_control_bidi_or_invisible_characters_are_refused_wherever_a_name_is_taken() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let body = create(&app, &owner, json!({"name": "Support"})).await;
    let team = body["data"]["createTeam"]["id"].as_str().unwrap().to_string();
    let (_, exported) = app.gql_as(&owner, "query($id: ID!) { exportTeam(id: $id) }", json!({"id": team})).await;
    let document = exported["data"]["exportTeam"].clone();
    let agent = |name: &str| json!({"format": "ensemble.team/v1", "agents": [{"name": name, "model": "local/echo"}]});
    let rule = json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": "local/echo"}],
        "routing": {"rules": [{"name": "$BAD", "when": {"contains": ["x"]}, "routeTo": "a"}], "default": "a"}});
    let cases = [
        (&owner, "mutation($v: String!) { createTeam(input: {name: $v}) { id } }", json!({"v": "$BAD"}), "name"),
        (
            &owner,
            "mutation($v: String!, $id: ID!) { updateTeam(id: $id, input: {name: $v}) { id } }",
            json!({"v": "$BAD", "id": team}),
            "name",
        ),
        (
            &owner,
            "mutation($v: String!, $doc: JSON!) { importTeam(document: $doc, name: $v) { team { id } } }",
            json!({"v": "$BAD", "doc": document}),
            "name",
        ),
        (
            &owner,
            "mutation($v: String!) { createApiKey(input: {name: $v, scopes: [TEAMS_READ]}) { secret } }",
            json!({"v": "$BAD"}),
            "name",
        ),
        (
            &owner,
            "mutation($v: String!, $t: ID!) { startConversation(teamId: $t, title: $v) { id } }",
            json!({"v": "$BAD", "t": team}),
            "title",
        ),
        (
            &owner,
            "mutation($v: String!) { updateProfile(input: {displayName: $v}) { id } }",
            json!({"v": "$BAD"}),
            "displayName",
        ),
        (
            &owner,
            "mutation($v: String!) { createTemplate(input: {kind: QUERY, name: $v, body: {prompt: \"Hi\"}}) { id } }",
            json!({"v": "$BAD"}),
            "input.name",
        ),
        (
            &admin,
            "mutation($v: String!) { createTemplateCategory(input: {name: $v, slug: \"odd\"}) { id } }",
            json!({"v": "$BAD"}),
            "input.name",
        ),
        (
            &owner,
            "mutation($s: JSON, $id: ID!) { updateTeam(id: $id, input: {spec: $s}) { id } }",
            json!({"s": agent("$BAD"), "id": team}),
            "spec.agents[0].name",
        ),
        (
            &owner,
            "mutation($s: JSON, $id: ID!) { updateTeam(id: $id, input: {spec: $s}) { id } }",
            json!({"s": rule, "id": team}),
            "spec.routing.rules[0].name",
        ),
    ];
    let templates_before = entity::templates::Entity::find().count(&app.state.db).await.unwrap();
    let categories_before = entity::template_categories::Entity::find().count(&app.state.db).await.unwrap();
    for bad in [
        "Sup\nport",
        "Sup\r\nport",
        "Sup\0port",
        "Sup\tport",
        "invoice\u{202E}fdp.exe",
        "ad\u{200B}min",
        "a\u{2066}b\u{2069}",
        "ad\u{200D}min",
    ] {
        for (token, query, variables, path) in &cases {
            let (_, body) = app.gql_as(token, query, fill(variables, bad)).await;
            assert_eq!(first_code(&body), "BAD_USER_INPUT", "{bad:?} in {query}: {body}");
            // NUL is refused in any text before the name is looked at, naming the variable.
            let paths = problem_paths(&body);
            if bad.contains('\0') {
                assert!(paths.len() == 1 && paths[0].starts_with("variables."), "{bad:?} in {query}: {body}");
            } else {
                assert_eq!(paths, [*path], "{bad:?} in {query}: {body}");
            }
            let message = body["errors"][0]["extensions"]["problems"][0]["message"].as_str().unwrap();
            assert!(message.starts_with("must not contain "), "{message}");
        }
    }
    let (_, answer) = app
        .gql_as(&owner, "{ teams { nodes { name version } } me { displayName } apiKeys { nodes { id } } }", json!({}))
        .await;
    assert_eq!(answer["data"]["teams"]["nodes"], json!([{"name": "Support", "version": 1}]), "{answer}");
    assert_eq!(answer["data"]["me"]["displayName"], Value::Null, "{answer}");
    assert_eq!(answer["data"]["apiKeys"]["nodes"], json!([]), "{answer}");
    assert_eq!(entity::conversations::Entity::find().count(&app.state.db).await.unwrap(), 0);
    assert_eq!(entity::templates::Entity::find().count(&app.state.db).await.unwrap(), templates_before);
    assert_eq!(entity::template_categories::Entity::find().count(&app.state.db).await.unwrap(), categories_before);

    // Accents, scripts, emoji and the joiners real words need are names like any other.
    for name in ["👩\u{200D}💻 Devs", "می\u{200C}خواهم", "Ünïcödé 日本語 ❤\u{FE0F}"] {
        let body = create(&app, &owner, json!({"name": name})).await;
        assert_eq!(body["data"]["createTeam"]["name"], name, "{body}");
    }
}

/// The caller a token stands for, to call a service directly.
async fn caller_of(app: &TestApp, token: &str) -> Caller {
    Caller { principal: app.state.auth.from_token(token).await.unwrap(), meta: Default::default() }
}

/// The audit log's actions, oldest first.
async fn actions(app: &TestApp) -> Vec<String> {
    let rows = audit_logs::Entity::find().order_by_asc(audit_logs::Column::Seq).all(&app.state.db).await.unwrap();
    rows.into_iter().map(|row| row.action).collect()
}

fn new_team(name: &str) -> NewTeam {
    NewTeam { name: name.into(), description: None, visibility: None, spec: None }
}

#[tokio::test]
async fn a_team_whose_slug_is_taken_between_the_read_and_the_insert_takes_a_suffix() {
    let app = TestApp::spawn().await;
    let owner = caller_of(&app, &signed_in(&app, "user_o").await).await;
    let (state, other) = (app.state.clone(), owner.clone());
    let providers = &app.state.config.runs.providers;
    let meanwhile = meanwhile::chain(&app.state, async move {
        let first = teams::create(&state.db, &state.audit, &state.config.runs.providers, &other, new_team("Support"));
        assert_eq!(first.await.unwrap().slug, "support");
    });

    let team = teams::create(&app.state.db, &meanwhile, providers, &owner, new_team("Support")).await.unwrap();
    assert!(team.slug.starts_with("support-") && team.slug.len() == "support-".len() + 6, "{}", team.slug);
    let stored = entity::teams::Entity::find_by_id(&team.id).one(&app.state.db).await.unwrap();
    assert_eq!(stored.as_ref(), Some(&team), "the team answered is the team stored");
    assert_eq!(entity::team_versions::Entity::find().count(&app.state.db).await.unwrap(), 2);
    assert_eq!(entity::team_members::Entity::find().count(&app.state.db).await.unwrap(), 2);
    assert_eq!(actions(&app).await, ["team.create", "team.create"]);
}

#[tokio::test]
async fn archiving_a_team_deleted_meanwhile_is_not_found() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "user_o").await;
    let owner = caller_of(&app, &token).await;
    let team =
        create(&app, &token, json!({"name": "Old"})).await["data"]["createTeam"]["id"].as_str().unwrap().to_string();
    let (state, other, id) = (app.state.clone(), owner.clone(), team.clone());
    let meanwhile = meanwhile::chain(&app.state, async move {
        teams::delete(&state.db, &state.audit, &state.caches, &other, &id).await.unwrap();
    });

    let err = teams::archive(&app.state.db, &meanwhile, &owner, &team).await.unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND", "{err}");
    assert_eq!(actions(&app).await, ["team.create", "team.delete"]);
}

#[tokio::test]
async fn an_invitation_that_another_owner_sent_meanwhile_is_a_conflict() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "user_o").await;
    signed_in(&app, "user_v").await;
    let owner = caller_of(&app, &token).await;
    let team = create(&app, &token, json!({"name": "Support"})).await["data"]["createTeam"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (state, other, id) = (app.state.clone(), owner.clone(), team.clone());
    let meanwhile = meanwhile::chain(&app.state, async move {
        teams::add_member(&state.db, &state.audit, &other, &id, "user_v", TeamRole::Viewer).await.unwrap();
    });

    let err =
        teams::add_member(&app.state.db, &meanwhile, &owner, &team, "user_v", TeamRole::Editor).await.unwrap_err();
    assert_eq!(err.to_string(), "user_v is already a member; change their role instead.");
    let role = teams::membership(&app.state.db, &team, "user_v").await.unwrap().map(|m| m.role);
    assert_eq!(role, Some(TeamRole::Viewer), "the first invitation stands");
    assert_eq!(actions(&app).await, ["team.create", "team.member.add"]);
}

#[tokio::test]
async fn removing_a_member_who_left_meanwhile_is_not_found() {
    let app = TestApp::spawn().await;
    let token = signed_in(&app, "user_o").await;
    let viewer = signed_in(&app, "user_v").await;
    let owner = caller_of(&app, &token).await;
    let team = create(&app, &token, json!({"name": "Support"})).await["data"]["createTeam"]["id"].clone();
    app.must(&token, ADD, json!({"team": team, "user": "user_v", "role": "VIEWER"})).await;
    let team = team.as_str().unwrap().to_string();
    let (state, leaving, id) = (app.state.clone(), caller_of(&app, &viewer).await, team.clone());
    let meanwhile = meanwhile::chain(&app.state, async move {
        teams::remove_member(&state.db, &state.audit, &state.caches, &leaving, &id, "user_v").await.unwrap();
    });

    let err =
        teams::remove_member(&app.state.db, &meanwhile, &app.state.caches, &owner, &team, "user_v").await.unwrap_err();
    assert_eq!(err.code(), "NOT_FOUND", "{err}");
    assert_eq!(actions(&app).await, ["team.create", "team.member.add", "team.member.remove"]);
}

#[tokio::test]
async fn owners_demoting_each_other_at_the_same_moment_keep_an_owner() {
    let app = TestApp::spawn().await;
    let (o, p) = (signed_in(&app, "user_o").await, signed_in(&app, "user_p").await);
    let team = create(&app, &o, json!({"name": "Support"})).await["data"]["createTeam"]["id"].clone();
    app.must(&o, ADD, json!({"team": team, "user": "user_p", "role": "OWNER"})).await;
    let team = team.as_str().unwrap().to_string();
    let (state, demoting_o, id) = (app.state.clone(), caller_of(&app, &p).await, team.clone());
    let meanwhile = meanwhile::chain(&app.state, async move {
        let caches = &state.caches;
        teams::update_member(&state.db, &state.audit, caches, &demoting_o, &id, "user_o", TeamRole::Editor)
            .await
            .unwrap();
    });

    // o read two owners and demotes p; p demoted o in between: o is no owner any more.
    let owner = caller_of(&app, &o).await;
    let caches = &app.state.caches;
    let err = teams::update_member(&app.state.db, &meanwhile, caches, &owner, &team, "user_p", TeamRole::Editor)
        .await
        .unwrap_err();
    assert_eq!(err.code(), "FORBIDDEN", "{err}");
    let role = teams::membership(&app.state.db, &team, "user_p").await.unwrap().map(|m| m.role);
    assert_eq!(role, Some(TeamRole::Owner), "the team kept an owner");
    assert_eq!(actions(&app).await, ["team.create", "team.member.add", "team.member.update"]);
}

/// Text that looks like SQL (quotes, backslashes, placeholders, escapes) is stored as written,
/// in a plain column and in the spec's JSON, on create and on update (PostgreSQL's batches carry
/// their values inside the SQL: docs/write-path.md).
#[tokio::test]
async fn text_that_looks_like_sql_is_stored_as_it_was_written() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let tricky = "it's \"quoted\" \\ back\\'slash \\\\ $1 $2 ?1 E'\\x41' ''; DROP TABLE teams; -- \u{1a}\t\n🎻 ü";
    let spec = |prompt: String| json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": "local/echo", "systemPrompt": prompt}]});
    let created =
        create(&app, &owner, json!({"name": "Tricky", "description": tricky, "spec": spec(tricky.into())})).await;
    let id = created["data"]["createTeam"]["id"].clone();
    let read = "query($id: ID!) { team(id: $id) { description spec } }";
    let (_, body) = app.gql_as(&owner, read, json!({"id": id})).await;
    assert_eq!(body["data"]["team"]["description"], tricky, "{body}");
    assert_eq!(body["data"]["team"]["spec"]["agents"][0]["systemPrompt"], tricky, "{body}");

    let again = format!("{tricky} (again)");
    let update = "mutation($id: ID!, $input: UpdateTeamInput!) { updateTeam(id: $id, input: $input) { version } }";
    let input = json!({"description": again, "spec": spec(again.clone())});
    let (_, updated) = app.gql_as(&owner, update, json!({"id": id, "input": input})).await;
    assert_eq!(updated["data"]["updateTeam"]["version"], 2, "{updated}");
    let (_, body) = app.gql_as(&owner, read, json!({"id": id})).await;
    assert_eq!(body["data"]["team"]["description"], again.as_str(), "{body}");
    assert_eq!(body["data"]["team"]["spec"]["agents"][0]["systemPrompt"], again.as_str(), "{body}");
    let teams = entity::teams::Entity::find().count(&app.state.db).await.unwrap();
    assert_eq!(teams, 1, "and the table is still there");
}

/// PostgreSQL cannot store NUL (U+0000) in text: a description or a prompt holding one, given in
/// a variable or written in the document, is refused on every database, naming where, and
/// nothing is created (it answered INTERNAL on PostgreSQL before).
#[tokio::test]
async fn text_holding_a_nul_character_is_refused_naming_where() {
    let app = TestApp::spawn().await;
    let owner = signed_in(&app, "user_o").await;
    let body = create(&app, &owner, json!({"name": "Nul", "description": "a\u{0}b"})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(
        body["errors"][0]["message"], "variables.input.description: must not contain the NUL character (U+0000)",
        "{body}"
    );
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": "local/echo", "systemPrompt": "x\u{0}y"}]});
    let body = create(&app, &owner, json!({"name": "Nul", "spec": spec})).await;
    assert_eq!(
        body["errors"][0]["message"],
        "variables.input.spec.agents[0].systemPrompt: must not contain the NUL character (U+0000)",
        "{body}"
    );
    let written = r#"mutation { createTeam(input: {name: "Nul", description: "a\u0000b"}) { id } }"#;
    let (_, body) = app.gql_as(&owner, written, json!({})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "input.description of \"createTeam\": must not contain the NUL character (U+0000)",
        "{body}"
    );
    let (_, list) = app.gql_as(&owner, "{ teams { nodes { id } } }", json!({})).await;
    assert_eq!(list["data"]["teams"]["nodes"], json!([]), "nothing was created");
}
