//! `GET /reports/usage.csv`: the `usageReport` rows as RFC 4180 CSV, authenticated as
//! `/graphql` is, with bad parameters and credentials answered in JSON.

use crate::common;

use common::TestApp;
use ensemble::domain::GlobalRole;
use entity::usage_daily;
use sea_orm::{EntityTrait, QueryOrder};
use serde_json::{Value, json};

async fn app() -> TestApp {
    TestApp::spawn_with(|c| c.usage_flush_secs = 3600).await
}

/// `who` makes a team of one `local/echo` agent and runs it `runs` times.
async fn runs(app: &TestApp, who: &str, runs: usize) {
    let token = app.token(who, GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "echo", "model": "local/echo"}]});
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Support\", spec: $spec}) { id } }";
    let team = app.must(&token, create, json!({"spec": spec})).await["createTeam"]["id"].clone();
    for _ in 0..runs {
        let run = "mutation($team: ID!) { runTeam(teamId: $team, input: {content: \"hello\"}) { status } }";
        assert_eq!(app.must(&token, run, json!({"team": team})).await["runTeam"]["status"], "SUCCEEDED");
    }
}

async fn csv(app: &TestApp, token: Option<&str>, query: &[(&str, &str)]) -> reqwest::Response {
    let request = app.client.get(app.url("/reports/usage.csv")).query(query);
    let request = match token {
        Some(token) => request.bearer_auth(token),
        None => request,
    };
    request.send().await.expect("request sent")
}

/// The records of an RFC 4180 text (quoted fields may hold commas, quotes and line breaks).
fn parse_csv(text: &str) -> Vec<Vec<String>> {
    let (mut records, mut record, mut field) = (Vec::new(), Vec::new(), String::new());
    let (mut quoted, mut chars) = (false, text.chars().peekable());
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    records
}

fn midnight(days_from_today: i64) -> String {
    let day = chrono::Utc::now().date_naive() + chrono::Duration::days(days_from_today);
    format!("{day}T00:00:00Z")
}

async fn usage_rows(app: &TestApp) -> Vec<usage_daily::Model> {
    let all = usage_daily::Entity::find().order_by_asc(usage_daily::Column::UserId);
    all.order_by_asc(usage_daily::Column::Model).all(&app.state.db).await.unwrap()
}

#[tokio::test]
async fn the_csv_holds_the_same_rows_as_the_graphql_report() {
    let app = app().await;
    runs(&app, "user_alice", 2).await;
    runs(&app, "user_bob", 1).await;
    app.state.usage.flush().await.unwrap();
    let admin = app.token("user_admin", GlobalRole::Admin);
    let (from, to) = (midnight(-2), midnight(1));
    let query = "query($range: TimeRangeInput) { usageReport(range: $range, groupBy: [USER, MODEL]) {
        rows { userId model requests runs tokensIn tokensOut costUsd } } }";
    let data = app.must(&admin, query, json!({"range": {"from": from, "to": to}})).await;
    let rows = data["usageReport"]["rows"].as_array().unwrap().clone();
    assert!(rows.len() >= 4, "both users, with and without a model: {data}");

    let response = csv(&app, Some(&admin), &[("from", &from), ("to", &to), ("groupBy", "USER,MODEL")]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "text/csv; charset=utf-8");
    let text = response.text().await.unwrap();
    assert!(text.ends_with("\r\n"), "CRLF line ends");
    let records = parse_csv(&text);
    assert_eq!(records[0], ["userId", "model", "requests", "runs", "tokensIn", "tokensOut", "costUsd"]);
    let as_records: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let text = |v: &Value| v.as_str().map_or_else(|| v.to_string(), str::to_string);
            let key = |v: &Value| if v.is_null() { String::new() } else { text(v) };
            let mut record = vec![key(&r["userId"]), key(&r["model"])];
            record.extend(["requests", "runs", "tokensIn", "tokensOut"].map(|f| text(&r[f])));
            record.push(r["costUsd"].as_f64().unwrap().to_string());
            record
        })
        .collect();
    assert_eq!(records[1..], as_records[..]);
}

#[tokio::test]
async fn values_with_commas_and_quotes_are_quoted_and_the_file_is_named_by_its_days() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    app.must(&alice, "{ me { id } }", json!({})).await;
    let odd = "acme/\"big, fast\"";
    let row = usage_daily::Model {
        day: "2025-03-01".into(),
        user_id: "user_alice".into(),
        team_id: String::new(),
        api_key_id: String::new(),
        model: odd.into(),
        requests: 0,
        runs: 1,
        tokens_in: 5,
        tokens_out: 7,
        cost_usd: 0.25,
    };
    usage_daily::Entity::insert(usage_daily::ActiveModel::from(row))
        .exec_without_returning(&app.state.db)
        .await
        .unwrap();

    let response = csv(&app, Some(&alice), &[("from", "2025-03-01"), ("to", "2025-03-03"), ("groupBy", "MODEL")]).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-disposition"], "attachment; filename=\"usage-2025-03-01-2025-03-02.csv\"");
    let text = response.text().await.unwrap();
    assert_eq!(text, "model,requests,runs,tokensIn,tokensOut,costUsd\r\n\"acme/\"\"big, fast\"\"\",0,1,5,7,0.25\r\n");
    assert_eq!(parse_csv(&text)[1][0], odd);
}

#[tokio::test]
async fn team_and_key_names_stand_beside_their_ids_and_cells_that_look_like_formulas_are_neutralised() {
    let app = app().await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let team_name = r#"=HYPERLINK("http://evil.test","Support")"#;
    let key_name = "@SUM(1+1)*cmd|' /C calc'!A0";
    let create = "mutation($name: String!) { createTeam(input: {name: $name}) { id } }";
    let team =
        app.must(&alice, create, json!({"name": team_name})).await["createTeam"]["id"].as_str().unwrap().to_string();
    let create = "mutation($name: String!, $team: ID) {
        createApiKey(input: {name: $name, scopes: [TEAMS_READ], teamId: $team}) { apiKey { id } } }";
    let made = app.must(&alice, create, json!({"name": key_name, "team": team})).await;
    let key = made["createApiKey"]["apiKey"]["id"].as_str().unwrap().to_string();
    let row = |model: &str, team_id: &str, api_key_id: &str| usage_daily::Model {
        day: "2025-03-01".into(),
        user_id: "user_alice".into(),
        team_id: team_id.into(),
        api_key_id: api_key_id.into(),
        model: model.into(),
        requests: 1,
        runs: 0,
        tokens_in: 0,
        tokens_out: 0,
        cost_usd: 0.0,
    };
    for model in ["-2+3", "+1", "\tx", "local/echo"] {
        usage_daily::Entity::insert(usage_daily::ActiveModel::from(row(model, &team, &key)))
            .exec_without_returning(&app.state.db)
            .await
            .unwrap();
    }
    let range = [("from", "2025-03-01"), ("to", "2025-03-02")];

    let response = csv(&app, Some(&alice), &[range[0], range[1], ("groupBy", "TEAM,API_KEY")]).await;
    assert_eq!(response.status(), 200);
    let records = parse_csv(&response.text().await.unwrap());
    assert_eq!(
        records,
        [
            vec![
                "teamId",
                "teamName",
                "apiKeyId",
                "apiKeyName",
                "requests",
                "runs",
                "tokensIn",
                "tokensOut",
                "costUsd"
            ],
            vec![
                team.as_str(),
                &format!("'{team_name}"),
                key.as_str(),
                &format!("'{key_name}"),
                "4",
                "0",
                "0",
                "0",
                "0"
            ],
        ]
    );
    let response = csv(&app, Some(&alice), &[range[0], range[1], ("groupBy", "MODEL")]).await;
    let models: Vec<String> =
        parse_csv(&response.text().await.unwrap()).into_iter().skip(1).map(|r| r[0].clone()).collect();
    assert_eq!(models, ["'\tx", "'+1", "'-2+3", "local/echo"]);
}

#[tokio::test]
async fn no_or_bad_credentials_are_401_in_json() {
    let app = app().await;
    for token in [None, Some("not-a-token"), Some("ens_0123456789ab_0000")] {
        let response = csv(&app, token, &[("groupBy", "DAY")]).await;
        assert_eq!(response.status(), 401, "{token:?}");
        assert_eq!(response.headers()["www-authenticate"], "Bearer");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "UNAUTHENTICATED", "{body}");
        let error = body["errors"][0].as_object().unwrap();
        assert_eq!(error.keys().collect::<Vec<_>>(), ["extensions", "message"], "{body}");
        assert_eq!(body.as_object().unwrap().len(), 1, "only `errors`: {body}");
    }
}

#[tokio::test]
async fn bad_parameters_are_400_naming_the_parameter() {
    let app = app().await;
    runs(&app, "user_alice", 1).await;
    app.state.usage.flush().await.unwrap();
    let alice = app.token("user_alice", GlobalRole::Member);
    let before = usage_rows(&app).await;
    let cases: [(&[(&str, &str)], &str); 6] = [
        (&[("groupBy", "USER,COLOR")], "groupBy"),
        (&[("from", "2025-03-01"), ("from", "2025-03-02")], "query"),
        (&[("groupBy", "DAY,DAY")], "groupBy"),
        (&[("from", "yesterday")], "from"),
        (&[("from", "2025-03-02"), ("to", "2025-03-01")], "from"),
        (&[("from", "2024-01-01"), ("to", "2025-03-01")], "from"),
    ];
    for (query, parameter) in cases {
        let response = csv(&app, Some(&alice), query).await;
        assert_eq!(response.status(), 400, "{query:?}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.starts_with(&format!("{parameter}: ")), "{query:?}: {message}");
        assert_eq!(body["errors"][0]["extensions"]["problems"][0]["path"], parameter, "{body}");
    }
    assert_eq!(usage_rows(&app).await, before, "nothing changed");
}

#[tokio::test]
async fn a_key_without_teams_read_is_403_and_reports_are_rate_limited() {
    let app = TestApp::spawn_with(|c| {
        c.usage_flush_secs = 3600;
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    let alice = app.token("user_alice", GlobalRole::Member);
    let create = "mutation { createApiKey(input: {name: \"runner\", scopes: [RUNS_EXECUTE]}) { secret } }";
    let runner = app.must(&alice, create, json!({})).await["createApiKey"]["secret"].as_str().unwrap().to_string();
    let response = app.client.get(app.url("/reports/usage.csv")).header("x-api-key", &runner).send().await.unwrap();
    assert_eq!(response.status(), 403);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "FORBIDDEN", "{body}");

    // Alice used one unit of her burst of two creating the key.
    assert_eq!(csv(&app, Some(&alice), &[]).await.status(), 200);
    let limited = csv(&app, Some(&alice), &[]).await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after"));
    let body: Value = limited.json().await.unwrap();
    assert_eq!(body["errors"][0]["extensions"]["code"], "RATE_LIMITED", "{body}");
}
