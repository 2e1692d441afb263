//! GraphQL over HTTP: the transport rules and request limits of docs/transport.md. The tests
//! that only send requests and read the answers share one server (`TestApp::shared`).

use crate::common;

use common::{TestApp, first_code};
use serde_json::{Value, json};

const INFO: &str = "{ serverInfo { version database } }";

#[tokio::test]
async fn a_query_over_post_answers_with_data() {
    let app = TestApp::shared().await;
    let (status, body) = app.post_json(&json!({"query": INFO})).await;
    assert_eq!(status, 200);
    assert_eq!(body["data"]["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));
    assert!(body.get("errors").is_none(), "{body}");
}

#[tokio::test]
async fn a_query_over_get_answers_with_data() {
    let app = TestApp::shared().await;
    let response = app.get_graphql(&[("query", INFO)]).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));
}

#[tokio::test]
async fn a_mutation_over_get_is_405() {
    let app = TestApp::shared().await;
    for query in ["mutation { anything }", "query A { serverInfo { version } } mutation B { x }"] {
        let operation = if query.starts_with("query A") { "B" } else { "" };
        let response = app.get_graphql(&[("query", query), ("operationName", operation)]).await;
        assert_eq!(response.status(), 405, "{query}");
        assert_eq!(response.headers()["allow"], "POST");
        let body: Value = response.json().await.unwrap();
        assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("POST"));
    }
}

#[tokio::test]
async fn the_query_of_a_get_document_that_also_holds_a_mutation_still_runs() {
    let app = TestApp::shared().await;
    let query = "query A { serverInfo { version } } mutation B { x }";
    let response = app.get_graphql(&[("query", query), ("operationName", "A")]).await;
    assert_ne!(response.status(), 405);
}

#[tokio::test]
async fn a_browser_get_without_a_query_gets_graphiql() {
    let app = TestApp::spawn().await;
    let response = app.client.get(app.url("/graphql")).header("accept", "text/html").send().await.unwrap();
    assert_eq!(response.status(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains(r#"<div id="graphiql">"#) && page.contains("/graphiql.js\"></script>"), "{page:.300}");
    assert!(page.contains("ensemble token --user alice --role admin"), "dev auth explains the token");
}

#[tokio::test]
async fn a_post_without_a_json_content_type_is_415() {
    let app = TestApp::shared().await;
    for content_type in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let response = app.post_body(content_type, json!({"query": INFO}).to_string()).await;
        assert_eq!(response.status(), 415, "{content_type}");
        let body: Value = response.json().await.unwrap();
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("application/json"));
    }
    let response = app.client.post(app.url("/graphql")).body(json!({"query": INFO}).to_string()).send().await.unwrap();
    assert_eq!(response.status(), 415, "no content type at all");
}

#[tokio::test]
async fn a_json_content_type_with_a_charset_is_accepted() {
    let app = TestApp::shared().await;
    let response = app.post_body("application/json; charset=utf-8", json!({"query": INFO}).to_string()).await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn a_body_over_the_limit_is_413_before_it_is_parsed() {
    let app = TestApp::shared().await;
    // 2 MiB of padding inside a valid request: only the size can refuse it.
    let padding = "#".repeat(2 * 1024 * 1024);
    let body = json!({"query": format!("{INFO}\n{padding}")}).to_string();
    let response = app.post_body("application/json", body).await;
    assert_eq!(response.status(), 413);
    let body: Value = response.json().await.unwrap();
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_413_too() {
    let app = TestApp::shared().await;
    let client = reqwest::Client::new();
    // The server answers 413 and closes as soon as the body passes the limit; a client still
    // writing may see its write fail before it reads that answer, so it tries again.
    for _ in 0..5 {
        let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..64).map(|_| Ok(vec![b' '; 32 * 1024])).collect();
        let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
        let request = client.post(app.url("/graphql")).header("content-type", "application/json");
        match request.body(body).send().await {
            Ok(response) => return assert_eq!(response.status(), 413),
            Err(err) => assert!(err.is_request(), "only the body's write may fail: {err}"),
        }
    }
    panic!("no answer to an oversized streamed body in five tries");
}

#[tokio::test]
async fn malformed_json_is_400_with_a_graphql_error_body() {
    let app = TestApp::shared().await;
    let response = app.post_body("application/json", "{\"query\": \"{ serverInfo { version } }\"").await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(first_code(&body), "GRAPHQL_PARSE_FAILED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("The request body is not valid JSON"), "{message}");
    assert!(!message.contains("EOF while parsing"), "no raw serde message: {message}");
}

#[tokio::test]
async fn a_json_body_that_is_not_a_request_is_400() {
    let app = TestApp::shared().await;
    for body in [json!({"variables": {}}), json!("just a string"), json!({"query": 42})] {
        let (status, answer) = app.post_json(&body).await;
        assert_eq!(status, 400, "{body}");
        assert_eq!(first_code(&answer), "GRAPHQL_PARSE_FAILED");
        assert!(answer["errors"][0]["message"].as_str().unwrap().contains("`query` string"));
    }
}

#[tokio::test]
async fn batches_are_refused_when_batching_is_off() {
    let app = TestApp::shared().await;
    let batch: Vec<Value> = (0..1000).map(|_| json!({"query": INFO})).collect();
    let (status, body) = app.post_json(&Value::Array(batch)).await;
    assert_eq!(status, 400);
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("turned off"));
}

#[tokio::test]
async fn configured_batches_run_up_to_their_cap() {
    let app = TestApp::spawn_with(|c| c.limits.batch = 5).await;
    let batch: Vec<Value> = (0..3).map(|_| json!({"query": INFO})).collect();
    let (status, body) = app.post_json(&Value::Array(batch)).await;
    assert_eq!(status, 200);
    assert_eq!(body.as_array().map(Vec::len), Some(3));
    assert_eq!(body[2]["data"]["serverInfo"]["version"], env!("CARGO_PKG_VERSION"));

    let batch: Vec<Value> = (0..1000).map(|_| json!({"query": INFO})).collect();
    let (status, body) = app.post_json(&Value::Array(batch)).await;
    assert_eq!(status, 400);
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("at most 5"), "{body}");
}

/// `{ serverInfo { limits { depth } } }` nested inside `n` levels of `__typename`-free fields
/// cannot be written on this schema, so depth is built from introspection's recursive types.
fn nested_query(levels: usize) -> String {
    let mut query = String::from("{ __schema { types { ");
    for _ in 0..levels {
        query.push_str("fields { type { ");
    }
    query.push_str("name");
    for _ in 0..levels {
        query.push_str(" } }");
    }
    query.push_str(" } } }");
    query
}

#[tokio::test]
async fn a_query_deeper_than_the_limit_is_refused() {
    let app = TestApp::shared().await;
    let body = app.gql(&nested_query(15), json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(body["data"].is_null());

    let body = app.gql(&nested_query(2), json!({})).await;
    assert!(body.get("errors").is_none(), "a shallow query passes: {body}");
}

#[tokio::test]
async fn a_query_nested_thirty_levels_is_refused_before_parsing() {
    let app = TestApp::shared().await;
    let query = format!("{}{}", "{ a ".repeat(30), "}".repeat(30));
    let body = app.gql(&query, json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");

    // Far deeper than any parser stack could take.
    let query = format!("{}{}", "{a".repeat(200_000), "}".repeat(200_000));
    let body = app.gql(&query, json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("nests 200000 levels"), "{body}");
}

#[tokio::test]
async fn a_query_over_the_complexity_limit_is_refused() {
    let app = TestApp::spawn_with(|c| c.limits.complexity = 5).await;
    let body = app.gql("{ serverInfo { version database migrationsApplied } }", json!({})).await;
    assert!(body.get("errors").is_none(), "4 fields fit: {body}");
    let body = app
        .gql("{ serverInfo { version database migrationsApplied migrationsPending latestMigration } }", json!({}))
        .await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn a_hundred_aliases_are_refused() {
    let app = TestApp::shared().await;
    let fields: String = (0..100).map(|i| format!("a{i}: serverInfo {{ version }} ")).collect();
    let body = app.gql(&format!("{{ {fields} }}"), json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("100 aliases"), "{body}");

    let fields: String = (0..30).map(|i| format!("a{i}: serverInfo {{ version }} ")).collect();
    let body = app.gql(&format!("{{ {fields} }}"), json!({})).await;
    assert!(body.get("errors").is_none(), "30 aliases are allowed: {body}");
}

#[tokio::test]
async fn a_fragment_fan_out_of_a_million_fields_is_refused_without_expanding_it() {
    let app = TestApp::shared().await;
    let mut query = String::from("query { ...F5 }\n");
    query.push_str("fragment F0 on Query { serverInfo { version database migrationsApplied migrationsPending latestMigration version database migrationsApplied } }\n");
    for level in 1..=5 {
        let spreads = format!("...F{} ", level - 1).repeat(10);
        query.push_str(&format!("fragment F{level} on Query {{ {spreads} }}\n"));
    }
    let body = app.gql(&query, json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("expands to 900000 fields"), "{message}");
}

#[tokio::test]
async fn fifty_directives_on_a_field_are_refused() {
    let app = TestApp::shared().await;
    let directives = "@include(if: true) ".repeat(50);
    let body = app.gql(&format!("{{ serverInfo {directives} {{ version }} }}"), json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn a_syntax_error_is_graphql_parse_failed() {
    let app = TestApp::shared().await;
    let body = app.gql("{ serverInfo { ", json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_PARSE_FAILED");
}

#[tokio::test]
async fn an_unknown_field_is_a_validation_error_with_a_suggestion_in_development() {
    let app = TestApp::shared().await;
    let body = app.gql("{ serverInfo { versio } }", json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("Did you mean"), "{body}");
}

#[tokio::test]
async fn production_hides_suggestions_and_introspection() {
    let app = TestApp::spawn_with(|c| {
        c.environment = ensemble::config::Environment::Production;
        common::clerk_pem(c);
    })
    .await;
    let body = app.gql("{ serverInfo { versio } }", json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(!message.contains("Did you mean"), "{message}");

    for query in
        ["{ __schema { types { name } } }", "{ ...F } fragment F on Query { __type(name: \"Query\") { name } }"]
    {
        let body = app.gql(query, json!({})).await;
        assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("Introspection is turned off"));
    }
}

#[tokio::test]
async fn production_refuses_to_start_with_dev_auth() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = ensemble::config::Config::from_env().unwrap();
    config.environment = ensemble::config::Environment::Production;
    config.database_url = format!("sqlite://{}/x.db", dir.path().display());
    config.data_dir = dir.path().join("data");
    config.listen = "127.0.0.1:0".parse().unwrap();
    let err = ensemble::startup::App::build(config).await.err().expect("refused");
    assert!(err.to_string().contains("dev auth refuses to run with ENSEMBLE_ENV=production"), "{err}");
}

#[tokio::test]
async fn introspection_works_in_development() {
    let app = TestApp::shared().await;
    let body = app.gql("{ __schema { queryType { name } } }", json!({})).await;
    assert_eq!(body["data"]["__schema"]["queryType"]["name"], "Query");
}

#[tokio::test]
async fn an_int_literal_beyond_32_bits_is_a_validation_error_on_a_websocket_too() {
    let app = TestApp::shared().await;
    let mut ws = common::WsClient::acked(app.addr).await;
    ws.send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { heartbeat(intervalSeconds: 3000000000) { seq } }"}})).await;
    let message = ws.next_json().await;
    assert_eq!(message["type"], "error", "refused before it runs: {message}");
    assert_eq!(message["payload"][0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED", "{message}");
    assert!(message.to_string().contains("2147483647"), "says the range: {message}");
}

#[tokio::test]
async fn a_subscription_over_http_is_refused_with_a_code() {
    let app = TestApp::shared().await;
    let body = app.gql("subscription { heartbeat(intervalSeconds: 1) { seq } }", json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn an_unknown_operation_name_is_a_validation_error() {
    let app = TestApp::shared().await;
    let (_, body) = app.post_json(&json!({"query": "query A { serverInfo { version } }", "operationName": "B"})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn graphql_response_json_answers_request_errors_with_400() {
    let app = TestApp::shared().await;
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json")
        .json(&json!({"query": "{ nope }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/graphql-response+json");

    let response = app
        .client
        .post(app.url("/graphql"))
        .header("accept", "application/graphql-response+json, application/json;q=0.9")
        .json(&json!({"query": INFO}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "application/graphql-response+json");
}

#[tokio::test]
async fn plain_json_clients_get_200_for_request_errors() {
    let app = TestApp::shared().await;
    let (status, body) = app.post_json(&json!({"query": "{ nope }"})).await;
    assert_eq!(status, 200);
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED");
}

#[tokio::test]
async fn the_request_id_is_echoed_or_made() {
    let app = TestApp::shared().await;
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("x-request-id", "trace-42")
        .json(&json!({"query": INFO}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "trace-42");

    let response = app
        .client
        .post(app.url("/graphql"))
        .header("x-request-id", "bad id with spaces")
        .json(&json!({"query": INFO}))
        .send()
        .await
        .unwrap();
    let made = response.headers()["x-request-id"].to_str().unwrap();
    assert_ne!(made, "bad id with spaces");
    assert_eq!(made.len(), 36, "a UUID: {made}");
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::spawn_with(|c| c.cors_origins = vec!["https://app.example".into()]).await;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://app.example").await.unwrap();
    assert_eq!(allowed.headers()["access-control-allow-origin"], "https://app.example");
    let refused = preflight("https://evil.example").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn responses_are_compressed_when_asked() {
    let app = TestApp::shared().await;
    let response = app
        .client
        .post(app.url("/graphql"))
        .header("accept-encoding", "gzip")
        .json(&json!({"query": "{ __schema { types { name description fields { name description } } } }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers().get("content-encoding").map(|v| v.to_str().unwrap()), Some("gzip"));
}

/// POSTs `body` asking for `application/graphql-response+json`; answers the status and JSON.
async fn post_graphql_response(app: &TestApp, body: &Value) -> (u16, Value) {
    let request = app.client.post(app.url("/graphql")).header("accept", "application/graphql-response+json");
    let response = request.json(body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_request_that_fails_before_execution_has_no_data_entry_for_graphql_response_clients() {
    let app = TestApp::shared().await;
    for (query, code) in [("{ nope }", "GRAPHQL_VALIDATION_FAILED"), ("{ serverInfo {", "GRAPHQL_PARSE_FAILED")] {
        let (status, body) = post_graphql_response(&app, &json!({"query": query})).await;
        assert_eq!((status, first_code(&body)), (400, code), "{body}");
        assert!(body.get("data").is_none(), "no data entry: {body}");
    }
    let (status, body) = post_graphql_response(&app, &json!({"query": "query A { nope }", "operationName": "B"})).await;
    assert!(status == 400 && body.get("data").is_none(), "{body}");

    // An error while executing keeps `data` (null here: `team` is non-null), with a 200.
    let (status, body) = post_graphql_response(&app, &json!({"query": "{ team(id: \"nope\") { id } }"})).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.get("data").is_some_and(Value::is_null), "{body}");

    // Legacy `application/json` clients still get `"data": null`.
    let (_, body) = app.post_json(&json!({"query": "{ nope }"})).await;
    assert!(body.get("data").is_some_and(Value::is_null), "{body}");
}

#[tokio::test]
async fn no_error_has_a_location_at_line_zero() {
    let app = TestApp::spawn().await;
    let response = app.client.post(app.url("/graphql")).bearer_auth("not-a-jwt").json(&json!({"query": INFO}));
    let response = response.send().await.unwrap();
    assert_eq!(response.status(), 401);
    let body: Value = response.json().await.unwrap();
    assert_eq!(first_code(&body), "UNAUTHENTICATED", "{body}");
    assert!(body["errors"][0].get("locations").is_none(), "{body}");

    let limited = TestApp::spawn_with(|c| {
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = 1;
    })
    .await;
    limited.gql(INFO, json!({})).await;
    let body = limited.gql(INFO, json!({})).await;
    assert_eq!(first_code(&body), "RATE_LIMITED", "{body}");
    assert!(body["errors"][0].get("locations").is_none(), "{body}");
}

#[tokio::test]
async fn an_answer_lists_at_most_a_hundred_errors_and_says_how_many_were_left_out() {
    let app = TestApp::spawn().await;
    let unused: Vec<String> = (0..40_000).map(|i| format!("$v{i}: Int")).collect();
    let query = format!("query({}) {{ __typename }}", unused.join(", "));
    let response = app.post_body("application/json", json!({"query": query}).to_string()).await;
    let text = response.text().await.unwrap();
    assert!(text.len() < 50_000, "the answer is {} bytes", text.len());
    let body: Value = serde_json::from_str(&text).unwrap();
    let errors = body["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 101, "{}", errors[100]);
    assert_eq!(errors[0]["extensions"]["code"], "GRAPHQL_VALIDATION_FAILED");
    assert_eq!(errors[100]["message"], "39900 more errors were left out: an answer lists at most 100.");
    assert_eq!(errors[100]["extensions"]["leftOut"], 39_900);
}

/// Three operations of 200 complexity points (two rate-limit units) each, as a README block
/// pasted into GraphiQL holds several.
const THREE_OPERATIONS: &str = "query A { teams(first: 100) { edges { cursor } } } \
    query B { teams(first: 100) { edges { cursor } } } \
    query C { teams(first: 100) { edges { cursor } } ...Info } \
    fragment Info on Query { serverInfo { version } }";

#[tokio::test]
async fn the_rate_limit_charges_only_the_operation_that_runs() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_minute = 1;
        c.rate_limit_burst = 4;
    })
    .await;
    let token = app.token("user_paster", ensemble::domain::GlobalRole::Member);
    let run_a = json!({"query": THREE_OPERATIONS, "operationName": "A"});
    for attempt in 1..=2 {
        let response = app.client.post(app.url("/graphql")).bearer_auth(&token).json(&run_a).send().await.unwrap();
        let body: Value = response.json().await.unwrap();
        assert!(body.get("errors").is_none(), "run {attempt} costs 2 of 4 units: {body}");
    }
    let response = app.client.post(app.url("/graphql")).bearer_auth(&token).json(&run_a).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert_eq!(first_code(&body), "RATE_LIMITED", "the allowance is spent: {body}");
}

#[tokio::test]
async fn the_complexity_limit_measures_the_operation_that_runs() {
    let app = TestApp::spawn_with(|c| c.limits.complexity = 300).await;
    let token = app.token("user_paster", ensemble::domain::GlobalRole::Member);
    let (_, body) = app.post_json(&json!({"query": THREE_OPERATIONS, "operationName": "B"})).await;
    assert_ne!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "600 points in all, 200 run: {body}");
    let run_c = json!({"query": THREE_OPERATIONS, "operationName": "C"});
    let response = app.client.post(app.url("/graphql")).bearer_auth(&token).json(&run_c).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    assert!(body.get("errors").is_none(), "C's fragment is kept and not reported unused elsewhere: {body}");
    assert!(body["data"]["serverInfo"]["version"].is_string(), "{body}");
    let one = json!({"query": "query D { teams(first: 100) { edges { cursor node { id name slug } } } }"});
    let (_, body) = app.post_json(&one).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "one operation over the limit still is: {body}");
}

#[tokio::test]
async fn an_int_literal_beyond_32_bits_is_a_validation_error_and_nothing_runs() {
    let app = TestApp::spawn().await;
    let token = app.token("user_ints", ensemble::domain::GlobalRole::Member);
    let both = "mutation { a: createTeam(input: {name: \"Made\"}) { id } \
                b: rollbackTeam(teamId: \"team_x\", version: 3000000000) { id } }";
    let (_, body) = app.gql_as(&token, both, json!({})).await;
    assert_eq!(first_code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "The value 3000000000 of argument \"version\" of \"rollbackTeam\" is outside Int's range (-2147483648 to 2147483647).",
    );
    assert_eq!(body["errors"][0]["locations"], json!([{"line": 1, "column": 90}]), "{body}");
    let (_, teams) = app.gql_as(&token, "{ teams { nodes { id } } }", json!({})).await;
    assert_eq!(teams["data"]["teams"]["nodes"], json!([]), "the first field did not run: {teams}");

    let (status, body) =
        post_graphql_response(&app, &json!({"query": "{ teams(first: -3000000000) { nodes { id } } }"})).await;
    assert_eq!((status, first_code(&body)), (400, "GRAPHQL_VALIDATION_FAILED"), "{body}");
}

#[tokio::test]
async fn a_variable_that_does_not_fit_its_type_is_bad_user_input_naming_it() {
    let app = TestApp::spawn().await;
    let token = app.token("user_ints", ensemble::domain::GlobalRole::Member);
    let teams = "query($n: Int) { teams(first: $n) { nodes { id } } }";
    let (_, body) = app.gql_as(&token, teams, json!({"n": 3_000_000_000_u64})).await;
    assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
    assert_eq!(
        body["errors"][0]["message"],
        "variables.n: 3000000000 is outside Int's range (-2147483648 to 2147483647)"
    );
    assert_eq!(body["errors"][0]["extensions"]["problems"][0]["path"], "variables.n");
    let (status, body) =
        post_graphql_response(&app, &json!({"query": teams, "variables": {"n": 3_000_000_000_u64}})).await;
    assert!(status == 400 && body.get("data").is_none(), "refused before execution: {status} {body}");

    let create = "mutation($input: CreateTeamInput!) { createTeam(input: $input) { id } }";
    let cases = [
        (json!({"input": {"name": 5}}), "variables.input.name: must be a String, not 5"),
        (json!({"input": {}}), "variables.input.name: is required (a String!)"),
        (json!({"input": {"name": "x", "visibility": "SECRET"}}), "variables.input.visibility: must be one of"),
        (json!({"input": {"name": "x", "colour": "red"}}), "variables.input.colour: is not a field of CreateTeamInput"),
        (json!({}), "variables.input: is required (a CreateTeamInput!) and was not given"),
    ];
    for (variables, message) in cases {
        let (_, body) = app.gql_as(&token, create, variables.clone()).await;
        assert_eq!(first_code(&body), "BAD_USER_INPUT", "{variables}: {body}");
        assert!(body["errors"][0]["message"].as_str().unwrap().starts_with(message), "{variables}: {body}");
    }
    let (_, listed) = app.gql_as(&token, "{ teams { nodes { id } } }", json!({})).await;
    assert_eq!(listed["data"]["teams"]["nodes"], json!([]), "nothing was created: {listed}");
}
