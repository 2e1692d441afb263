//! Conversations as trees: each answer continues its path, answering an earlier message starts
//! a branch that sees only its own path, forks copy a path, and foreign parents are refused.

use crate::common;

use chrono::{SubsecRound, Utc};
use common::{TestApp, first_code};
use ensemble::domain::GlobalRole;
use entity::{messages, states::MessageRole};
use sea_orm::ActiveModelTrait;
use serde_json::{Value, json};

const SEND: &str = "mutation($c: ID!, $text: String!, $parent: ID) { sendMessage(conversationId: $c, content: $text, parentMessageId: $parent) {
    status output tokensIn messageId responseMessageId conversationId } }";
const SHOW: &str = "query($c: ID!, $leaf: ID) { conversation(id: $c) { title forkedFromMessageId
    branches { id content } messages(leafId: $leaf) { id parentId role agent content } tree { id parentId } } }";

async fn setup(app: &TestApp) -> (String, String) {
    let token = app.token("user_talker", GlobalRole::Member);
    let (_, body) = app.gql_as(&token, "mutation { createTeam(input: {name: \"Chat\"}) { id } }", json!({})).await;
    let team = body["data"]["createTeam"]["id"].as_str().unwrap().to_string();
    (token, team)
}

async fn start(app: &TestApp, token: &str, team: &str) -> String {
    let (_, body) = app
        .gql_as(
            token,
            "mutation($t: ID!) { startConversation(teamId: $t, title: \"Trip\") { id title } }",
            json!({"t": team}),
        )
        .await;
    body["data"]["startConversation"]["id"].as_str().unwrap_or_else(|| panic!("{body}")).to_string()
}

async fn send(app: &TestApp, token: &str, conversation: &str, text: &str, parent: Option<&str>) -> Value {
    let (_, body) = app.gql_as(token, SEND, json!({"c": conversation, "text": text, "parent": parent})).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["sendMessage"].clone()
}

async fn show(app: &TestApp, token: &str, conversation: &str, leaf: Option<&str>) -> Value {
    let (_, body) = app.gql_as(token, SHOW, json!({"c": conversation, "leaf": leaf})).await;
    assert!(body.get("errors").is_none(), "{body}");
    body["data"]["conversation"].clone()
}

fn contents(messages: &Value) -> Vec<String> {
    messages.as_array().unwrap().iter().map(|m| m["content"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn answering_an_earlier_message_starts_a_branch_that_sees_only_its_path() {
    let app = TestApp::spawn().await;
    let (token, team) = setup(&app).await;
    let conversation = start(&app, &token, &team).await;
    let first = send(&app, &token, &conversation, "Plan a trip to Lisbon", None).await;
    assert_eq!(first["status"], "SUCCEEDED");
    assert_eq!(first["conversationId"], conversation.as_str());
    let second = send(&app, &token, &conversation, "Add a day in Porto", None).await;
    let third = send(&app, &token, &conversation, "And a day in Sintra", None).await;
    // A branch from the first answer: the model sees two messages fewer than on the main line.
    let first_answer = first["responseMessageId"].as_str().unwrap();
    let branch = send(&app, &token, &conversation, "And a day in Sintra", Some(first_answer)).await;
    assert!(branch["tokensIn"].as_i64() < third["tokensIn"].as_i64(), "{branch} vs {third}");

    let whole = show(&app, &token, &conversation, None).await;
    assert_eq!(whole["tree"].as_array().unwrap().len(), 8);
    let leaves: Vec<&str> = whole["branches"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(leaves, [third["responseMessageId"].as_str().unwrap(), branch["responseMessageId"].as_str().unwrap()]);
    // The default path ends at the newest message: the branch.
    let path = whole["messages"].as_array().unwrap();
    assert_eq!(path.len(), 4);
    assert_eq!(path[0]["parentId"], Value::Null);
    assert_eq!(path[2]["parentId"], first_answer);
    assert_eq!(
        path.iter().map(|m| m["role"].as_str().unwrap()).collect::<Vec<_>>(),
        ["user", "assistant", "user", "assistant"]
    );
    let main = show(&app, &token, &conversation, third["responseMessageId"].as_str()).await;
    let main_contents = contents(&main["messages"]);
    assert_eq!(main_contents.len(), 6);
    assert_eq!(main_contents[2], "Add a day in Porto");
    assert_eq!(main["messages"][3]["id"], second["responseMessageId"]);
    assert_eq!(main["messages"][5]["agent"], "assistant");
}

#[tokio::test]
async fn a_fork_copies_the_path_into_a_new_conversation() {
    let app = TestApp::spawn().await;
    let (token, team) = setup(&app).await;
    let conversation = start(&app, &token, &team).await;
    let first = send(&app, &token, &conversation, "one", None).await;
    send(&app, &token, &conversation, "two", None).await;
    let fork = "mutation($m: ID!) { forkConversation(messageId: $m, title: \"Alternative\") { id title forkedFromMessageId } }";
    let at = first["responseMessageId"].as_str().unwrap();
    let (_, body) = app.gql_as(&token, fork, json!({"m": at})).await;
    let forked = &body["data"]["forkConversation"];
    assert_eq!(
        (forked["title"].as_str(), forked["forkedFromMessageId"].as_str()),
        (Some("Alternative"), Some(at)),
        "{body}"
    );
    let copy = show(&app, &token, forked["id"].as_str().unwrap(), None).await;
    let copied = copy["messages"].as_array().unwrap();
    assert_eq!(copied.len(), 2);
    assert_eq!(copied[0]["content"], "one");
    assert_ne!(copied[1]["id"], at, "copies get fresh ids");
    // The fork goes on by itself; the original is untouched.
    send(&app, &token, forked["id"].as_str().unwrap(), "three", None).await;
    assert_eq!(show(&app, &token, &conversation, None).await["tree"].as_array().unwrap().len(), 4);
}

#[tokio::test]
async fn a_team_s_conversations_are_listed_newest_first_a_page_at_a_time() {
    let app = TestApp::spawn().await;
    let (token, team) = setup(&app).await;
    let (_, other) = app.gql_as(&token, "mutation { createTeam(input: {name: \"Other\"}) { id } }", json!({})).await;
    start(&app, &token, other["data"]["createTeam"]["id"].as_str().unwrap()).await;
    let mut started = Vec::new();
    for _ in 0..3 {
        started.push(start(&app, &token, &team).await);
    }
    let first = send(&app, &token, &started[0], "one", None).await;
    let fork = "mutation($m: ID!) { forkConversation(messageId: $m, title: \"Fork\") { id } }";
    let (_, forked) = app.gql_as(&token, fork, json!({"m": first["responseMessageId"]})).await;
    started.push(forked["data"]["forkConversation"]["id"].as_str().unwrap_or_else(|| panic!("{forked}")).to_string());

    let list =
        "query($team: ID!, $first: Int, $after: String) { conversations(teamId: $team, first: $first, after: $after) {
        nodes { id teamId title } pageInfo { hasNextPage endCursor } } }";
    let viewer = app.token("user_watcher", GlobalRole::Member);
    app.gql_as(&viewer, "{ me { id } }", json!({})).await;
    let add = "mutation($team: ID!) { addTeamMember(teamId: $team, input: {userId: \"user_watcher\", role: VIEWER}) { role } }";
    let (_, added) = app.gql_as(&token, add, json!({"team": team})).await;
    assert!(added.get("errors").is_none(), "{added}");
    let (mut seen, mut after) = (Vec::new(), Value::Null);
    loop {
        let (_, body) = app.gql_as(&viewer, list, json!({"team": team, "first": 3, "after": after})).await;
        let page = &body["data"]["conversations"];
        let nodes = page["nodes"].as_array().unwrap_or_else(|| panic!("{body}"));
        assert!(nodes.iter().all(|c| c["teamId"] == team.as_str()), "{body}");
        seen.extend(nodes.iter().map(|c| c["id"].as_str().unwrap().to_string()));
        if page["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = page["pageInfo"]["endCursor"].clone();
    }
    started.reverse();
    assert_eq!(seen, started, "every conversation of the team once, the newest (the fork) first");

    let (_, refused) = app.gql_as(&viewer, list, json!({"team": team, "first": 0})).await;
    assert_eq!(first_code(&refused), "BAD_USER_INPUT", "{refused}");
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let (_, hidden) = app.gql_as(&stranger, list, json!({"team": team})).await;
    assert_eq!(first_code(&hidden), "NOT_FOUND", "{hidden}");
}

#[tokio::test]
async fn a_parent_from_another_conversation_is_refused() {
    let app = TestApp::spawn().await;
    let (token, team) = setup(&app).await;
    let a = start(&app, &token, &team).await;
    let b = start(&app, &token, &team).await;
    let in_a = send(&app, &token, &a, "hello", None).await;
    let (_, body) = app.gql_as(&token, SEND, json!({"c": b, "text": "hi", "parent": in_a["messageId"]})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(body["errors"][0]["extensions"]["problems"][0]["path"], "input.parentMessageId");
    assert!(show(&app, &token, &b, None).await["tree"].as_array().unwrap().is_empty(), "nothing was written");
    let (_, body) = app.gql_as(&token, SEND, json!({"c": "conv_nope", "text": "hi"})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    // A message of another team's conversation answers as if it did not exist.
    let (_, other) = app.gql_as(&token, "mutation { createTeam(input: {name: \"Other\"}) { id } }", json!({})).await;
    let run = "mutation($t: ID!, $p: ID) { runTeam(teamId: $t, input: {content: \"hi\", parentMessageId: $p}) { id } }";
    for parent in [in_a["messageId"].clone(), json!("msg_nope")] {
        let (_, body) = app.gql_as(&token, run, json!({"t": other["data"]["createTeam"]["id"], "p": parent})).await;
        let problem = &body["errors"][0]["extensions"]["problems"][0];
        assert_eq!(
            (problem["path"].as_str(), problem["message"].as_str()),
            (Some("input.parentMessageId"), Some("No such message.")),
            "{body}"
        );
    }
    let stranger = app.token("user_stranger", GlobalRole::Member);
    let (_, body) = app.gql_as(&stranger, SHOW, json!({"c": a})).await;
    assert_eq!(first_code(&body), "NOT_FOUND", "{body}");
    let (_, body) = app
        .gql_as(&token, "mutation($t: ID!) { startConversation(teamId: $t, title: \"  \") { id } }", json!({"t": team}))
        .await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
}

#[tokio::test]
async fn a_fork_of_a_long_path_copies_every_message_in_order() {
    let app = TestApp::spawn().await;
    let (token, team) = setup(&app).await;
    let conversation = start(&app, &token, &team).await;
    // Longer than the rows one INSERT carries (D1 binds 100 parameters: 9 messages).
    let now = Utc::now().trunc_subsecs(6);
    let mut parent = None;
    for n in 0..25 {
        let id = format!("msg_long_{n:02}");
        let role = if n % 2 == 0 { MessageRole::User } else { MessageRole::Assistant };
        messages::ActiveModel::from(messages::Model {
            id: id.clone(),
            conversation_id: conversation.clone(),
            parent_id: parent.replace(id),
            role,
            agent: (role == MessageRole::Assistant).then(|| "assistant".to_string()),
            content: format!("message {n}"),
            run_id: None,
            tokens_in: n,
            tokens_out: 0,
            cost_usd: 0.0,
            created_at: now + chrono::Duration::microseconds(n),
        })
        .insert(&app.state.db)
        .await
        .unwrap();
    }
    let fork = "mutation($m: ID!) { forkConversation(messageId: $m, title: \"Long\") { id } }";
    let forked = app.must(&token, fork, json!({"m": "msg_long_24"})).await["forkConversation"]["id"].clone();

    let copy = show(&app, &token, forked.as_str().unwrap(), None).await;
    let copied = copy["messages"].as_array().unwrap();
    assert_eq!(contents(&copy["messages"]), (0..25).map(|n| format!("message {n}")).collect::<Vec<_>>());
    assert_eq!(copied[0]["parentId"], Value::Null);
    for pair in copied.windows(2) {
        assert_eq!(pair[1]["parentId"], pair[0]["id"], "each copy answers the copy before it");
    }
    assert_eq!(copy["tree"].as_array().unwrap().len(), 25, "one branch");
}
