//! `usageReport`: usage grouped by team, model and day after real runs; what members, team
//! owners, admins and API keys may see; the bounds on its range and size.

use crate::common;

use common::{TestApp, first_code, problem_paths};
use ensemble::domain::GlobalRole;
use entity::usage_daily;
use sea_orm::{EntityTrait, QueryOrder};
use serde_json::{Value, json};

const REPORT: &str = "query($groupBy: [UsageGroup!]!, $range: TimeRangeInput) {
    usageReport(groupBy: $groupBy, range: $range) {
        firstDay lastDay groupBy
        rows { userId teamId apiKeyId model day requests runs tokensIn tokensOut costUsd }
        totals { requests runs tokensIn tokensOut costUsd } } }";

/// A server whose request counts reach the table only when a test flushes them.
async fn app() -> TestApp {
    TestApp::spawn_with(|c| c.usage_flush_secs = 3600).await
}

/// A team of one `local/echo` agent, owned by the bearer of `token`.
async fn team(app: &TestApp, token: &str, name: &str) -> String {
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "echo", "model": "local/echo"}]});
    let create = "mutation($name: String!, $spec: JSON) { createTeam(input: {name: $name, spec: $spec}) { id } }";
    let data = app.must(token, create, json!({"name": name, "spec": spec})).await;
    data["createTeam"]["id"].as_str().unwrap().to_string()
}

/// Runs the team once; returns the tokens in and out it used.
async fn run(app: &TestApp, token: &str, team: &str) -> (i64, i64) {
    let run = "mutation($team: ID!) { runTeam(teamId: $team, input: {content: \"Where is my parcel?\"}) { status tokensIn tokensOut } }";
    let data = app.must(token, run, json!({"team": team})).await;
    assert_eq!(data["runTeam"]["status"], "SUCCEEDED");
    (data["runTeam"]["tokensIn"].as_i64().unwrap(), data["runTeam"]["tokensOut"].as_i64().unwrap())
}

async fn report(app: &TestApp, token: &str, group_by: Value) -> Value {
    app.must(token, REPORT, json!({"groupBy": group_by})).await["usageReport"].clone()
}

fn today() -> String {
    chrono::Utc::now().format("%Y-%m-%d").to_string()
}

async fn usage_rows(app: &TestApp) -> Vec<usage_daily::Model> {
    let all =
        usage_daily::Entity::find().order_by_asc(usage_daily::Column::Day).order_by_asc(usage_daily::Column::UserId);
    all.order_by_asc(usage_daily::Column::TeamId)
        .order_by_asc(usage_daily::Column::ApiKeyId)
        .order_by_asc(usage_daily::Column::Model)
        .all(&app.state.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_report_by_team_sums_each_teams_runs() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let (support, sales) = (team(&app, &alice, "Support").await, team(&app, &alice, "Sales").await);
    let (a, b) = (run(&app, &alice, &support).await, run(&app, &alice, &support).await);
    let c = run(&app, &alice, &sales).await;
    app.state.usage.flush().await.unwrap();

    let report = report(&app, &alice, json!(["TEAM"])).await;
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{report}");
    // Requests made outside any team come first, under no team: two teams made, three runs.
    assert_eq!(rows[0]["teamId"], Value::Null);
    assert_eq!(rows[0]["requests"], 5, "{report}");
    assert_eq!(rows[0]["runs"], 0);
    let row = |id: &str| rows.iter().find(|r| r["teamId"] == id).unwrap_or_else(|| panic!("{id}: {report}")).clone();
    let (support_row, sales_row) = (row(&support), row(&sales));
    assert_eq!((support_row["runs"].as_i64(), support_row["tokensIn"].as_i64()), (Some(2), Some(a.0 + b.0)));
    assert_eq!(support_row["tokensOut"].as_i64(), Some(a.1 + b.1));
    assert_eq!((sales_row["runs"].as_i64(), sales_row["tokensOut"].as_i64()), (Some(1), Some(c.1)));
    assert_eq!(support_row["userId"], Value::Null, "not grouped by user");
    assert_eq!(report["totals"]["runs"], 3);
    assert_eq!(report["totals"]["tokensIn"].as_i64(), Some(a.0 + b.0 + c.0));
    let ids: Vec<&str> = rows[1..].iter().map(|r| r["teamId"].as_str().unwrap()).collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(ids, sorted, "rows are sorted by team");
}

#[tokio::test]
async fn a_report_by_model_and_day_puts_runs_on_their_model_and_requests_on_none() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let support = team(&app, &alice, "Support").await;
    let (a, b) = (run(&app, &alice, &support).await, run(&app, &alice, &support).await);
    app.state.usage.flush().await.unwrap();

    let report = report(&app, &alice, json!(["MODEL", "DAY"])).await;
    assert_eq!(report["groupBy"], json!(["MODEL", "DAY"]));
    // The default range is the last 30 days, up to now.
    let month_ago = (chrono::Utc::now() - chrono::Duration::days(30)).format("%Y-%m-%d").to_string();
    assert_eq!((&report["firstDay"], &report["lastDay"]), (&json!(month_ago), &json!(today())));
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report}");
    assert_eq!((&rows[0]["model"], &rows[0]["day"]), (&Value::Null, &json!(today())));
    assert_eq!(rows[0]["runs"], 0);
    assert_eq!((&rows[1]["model"], &rows[1]["day"]), (&json!("local/echo"), &json!(today())));
    assert_eq!(rows[1]["runs"], 2);
    assert_eq!(rows[1]["tokensIn"].as_i64(), Some(a.0 + b.0));
    assert_eq!(rows[1]["requests"], 0);
    assert_eq!(rows[1]["teamId"], Value::Null);
}

#[tokio::test]
async fn members_see_their_own_usage_and_their_teams_and_admins_see_all() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let bob = app.token("user_bob", GlobalRole::Member);
    let admin = app.token("user_admin", GlobalRole::Admin);
    let support = team(&app, &alice, "Support").await;
    let lab = team(&app, &bob, "Lab").await;
    let add =
        "mutation($team: ID!) { addTeamMember(teamId: $team, input: {userId: \"user_bob\", role: OPERATOR}) { role } }";
    app.must(&alice, add, json!({"team": support})).await;
    run(&app, &alice, &support).await;
    run(&app, &bob, &support).await;
    run(&app, &bob, &lab).await;
    run(&app, &bob, &lab).await;
    app.state.usage.flush().await.unwrap();

    let runs_by = |report: &Value| -> Vec<(Value, Value, i64)> {
        let rows = report["rows"].as_array().unwrap().iter();
        rows.filter(|r| r["runs"] != 0)
            .map(|r| (r["userId"].clone(), r["teamId"].clone(), r["runs"].as_i64().unwrap()))
            .collect()
    };
    // Bob operates Support but does not own it: only his own run there.
    let seen_by_bob = report(&app, &bob, json!(["USER", "TEAM"])).await;
    let mut expected = vec![(json!("user_bob"), json!(support), 1), (json!("user_bob"), json!(lab), 2)];
    expected.sort_by(|a, b| a.1.as_str().cmp(&b.1.as_str()));
    assert_eq!(runs_by(&seen_by_bob), expected, "{seen_by_bob}");
    assert!(seen_by_bob["rows"].as_array().unwrap().iter().all(|r| r["userId"] == "user_bob"), "{seen_by_bob}");
    // Alice owns Support: every run in it, none of Bob's elsewhere.
    let seen_by_alice = report(&app, &alice, json!(["USER", "TEAM"])).await;
    assert_eq!(
        runs_by(&seen_by_alice),
        vec![(json!("user_alice"), json!(support), 1), (json!("user_bob"), json!(support), 1)],
        "{seen_by_alice}"
    );
    assert_eq!(seen_by_alice["totals"]["runs"], 2);
    let seen_by_admin = report(&app, &admin, json!([])).await;
    assert_eq!(seen_by_admin["totals"]["runs"], 4);
    assert_eq!(seen_by_admin["rows"], json!([]), "no groups: totals only");
}

#[tokio::test]
async fn an_api_key_needs_teams_read_and_a_team_key_sees_only_its_team() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let (support, sales) = (team(&app, &alice, "Support").await, team(&app, &alice, "Sales").await);
    run(&app, &alice, &support).await;
    run(&app, &alice, &sales).await;
    app.state.usage.flush().await.unwrap();
    let create = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret } }";
    let key = |input: Value| {
        let app = &app;
        let alice = &alice;
        async move {
            app.must(alice, create, json!({"input": input})).await["createApiKey"]["secret"]
                .as_str()
                .unwrap()
                .to_string()
        }
    };
    let runner = key(json!({"name": "runner", "scopes": ["RUNS_EXECUTE"]})).await;
    let scoped = key(json!({"name": "support", "scopes": ["TEAMS_READ"], "teamId": support})).await;
    let before = usage_rows(&app).await;

    let (_, body) = app.gql_as(&runner, REPORT, json!({"groupBy": ["TEAM"]})).await;
    assert_eq!(first_code(&body), "FORBIDDEN", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("teams:read"), "{body}");
    assert_eq!(usage_rows(&app).await, before, "nothing changed");

    let seen = report(&app, &scoped, json!(["TEAM"])).await;
    let teams: Vec<&Value> = seen["rows"].as_array().unwrap().iter().map(|r| &r["teamId"]).collect();
    assert_eq!(teams, [&json!(support)], "{seen}");
    assert_eq!(seen["totals"]["runs"], 1);
    let (_, anonymous) = app.post_json(&json!({"query": REPORT, "variables": {"groupBy": []}})).await;
    assert_eq!(first_code(&anonymous), "UNAUTHENTICATED", "{anonymous}");
}

#[tokio::test]
async fn rows_name_their_user_team_and_api_key_beside_the_ids() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    app.must(&alice, "mutation { updateProfile(input: {displayName: \"Alice Liddell\"}) { id } }", json!({})).await;
    let support = team(&app, &alice, "Support desk").await;
    let create = "mutation($t: ID!) { createApiKey(input: {name: \"deploy bot\", scopes: [RUNS_EXECUTE], teamId: $t}) { secret apiKey { id } } }";
    let made = app.must(&alice, create, json!({"t": support})).await["createApiKey"].clone();
    run(&app, made["secret"].as_str().unwrap(), &support).await;
    let gone = team(&app, &alice, "Short-lived").await;
    run(&app, &alice, &gone).await;
    app.must(&alice, "mutation($t: ID!) { deleteTeam(id: $t) { id } }", json!({"t": gone})).await;
    app.state.usage.flush().await.unwrap();

    let query = "query { usageReport(groupBy: [USER, TEAM, API_KEY]) {
        rows { userId userName teamId teamName apiKeyId apiKeyName runs } } }";
    let rows = app.must(&alice, query, json!({})).await["usageReport"]["rows"].clone();
    let row = |team: &str| {
        let found = rows.as_array().unwrap().iter().find(|r| r["teamId"] == team && r["runs"] == 1);
        found.unwrap_or_else(|| panic!("{team}: {rows}")).clone()
    };
    let keyed = row(&support);
    assert_eq!(
        (&keyed["userName"], &keyed["teamName"], &keyed["apiKeyId"], &keyed["apiKeyName"]),
        (&json!("Alice Liddell"), &json!("Support desk"), &made["apiKey"]["id"], &json!("deploy bot")),
        "{rows}"
    );
    let deleted = row(&gone);
    assert_eq!(
        (&deleted["teamName"], &deleted["apiKeyName"]),
        (&Value::Null, &Value::Null),
        "a deleted team has no name"
    );
    assert_eq!(deleted["userName"], "Alice Liddell");
}

#[tokio::test]
async fn bad_ranges_and_repeated_groups_are_refused() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let support = team(&app, &alice, "Support").await;
    run(&app, &alice, &support).await;
    app.state.usage.flush().await.unwrap();
    let before = usage_rows(&app).await;
    let cases = [
        (json!({"from": "2025-03-02T00:00:00Z", "to": "2025-03-01T00:00:00Z"}), json!(["DAY"]), "range.from"),
        (json!({"from": "2024-01-01T00:00:00Z", "to": "2025-03-01T00:00:00Z"}), json!(["DAY"]), "range"),
        (json!({"to": "2025-03-01T00:00:00Z"}), json!(["TEAM", "DAY", "TEAM"]), "groupBy"),
    ];
    for (range, group_by, path) in cases {
        let (_, body) = app.gql_as(&alice, REPORT, json!({"range": range, "groupBy": group_by})).await;
        assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
        assert_eq!(problem_paths(&body), [path], "{body}");
        assert_eq!(body["data"], Value::Null);
    }
    assert_eq!(usage_rows(&app).await, before, "nothing changed");
}

#[tokio::test]
async fn a_report_past_ten_thousand_rows_asks_for_a_narrower_one() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    app.must(&alice, "{ me { id } }", json!({})).await;
    let rows: Vec<usage_daily::ActiveModel> = (0..10_001)
        .map(|i| {
            let row = usage_daily::Model {
                day: today(),
                user_id: "user_alice".into(),
                team_id: String::new(),
                api_key_id: String::new(),
                model: format!("local/m{i:05}"),
                requests: 0,
                runs: 1,
                tokens_in: 1,
                tokens_out: 1,
                cost_usd: 0.0,
            };
            usage_daily::ActiveModel::from(row)
        })
        .collect();
    // D1 takes at most 100 bound parameters per statement.
    let per_insert = if common::on_d1() { ensemble::db::batch::rows_per_insert::<usage_daily::Entity>() } else { 1000 };
    for chunk in rows.chunks(per_insert) {
        usage_daily::Entity::insert_many(chunk.to_vec()).exec_without_returning(&app.state.db).await.unwrap();
    }
    let (_, body) = app.gql_as(&alice, REPORT, json!({"groupBy": ["MODEL"]})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("narrow the range"), "{body}");
    // Grouped by less, the same usage answers.
    assert_eq!(report(&app, &alice, json!(["DAY"])).await["totals"]["runs"], 10_001);
}
