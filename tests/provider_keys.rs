//! Providers without an API key: a team using one is saved with a warning in the answer's
//! `extensions.warnings`, the server's start-up log names the variable to set, and a run the
//! provider refuses says which variable holds (or should hold) the key, never the key. Its own
//! binary, because providers are configured by environment variables.

mod common;

use std::{
    io::Read,
    sync::Once,
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    http::{HeaderMap, StatusCode},
    response::IntoResponse,
    routing::post,
};
use common::TestApp;
use ensemble::domain::GlobalRole;
use serde_json::{Value, json};

const SECRET: &str = "sk-recognisable-secret-4242";

/// Answers every call as OpenAI does without a valid key: 401, echoing the key it was given.
async fn refuse(headers: HeaderMap) -> impl IntoResponse {
    let given = headers.get("authorization").and_then(|v| v.to_str().ok()).map(|v| v.trim_start_matches("Bearer "));
    let message = match given {
        Some(key) => format!("Incorrect API key provided: {key}."),
        None => "You didn't provide an API key.".to_owned(),
    };
    (StatusCode::UNAUTHORIZED, Json(json!({"error": {"message": message, "type": "invalid_request_error"}})))
}

/// Starts the stub and points two providers at it: `keyless` without a key, `keyed` with
/// [`SECRET`]. Once for the binary, before any server reads the environment.
fn providers() {
    static CONFIGURED: Once = Once::new();
    CONFIGURED.call_once(|| {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}/v1", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async {
                listener.set_nonblocking(true).unwrap();
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                axum::serve(listener, Router::new().route("/v1/chat/completions", post(refuse))).await.unwrap();
            });
        });
        // SAFETY: every test calls this first; nothing reads the environment before it is done.
        unsafe {
            std::env::set_var("ENSEMBLE_PROVIDER_KEYLESS_BASE_URL", &base);
            std::env::set_var("ENSEMBLE_PROVIDER_KEYED_BASE_URL", &base);
            std::env::set_var("ENSEMBLE_PROVIDER_KEYED_API_KEY", SECRET);
        }
    });
}

fn spec() -> Value {
    json!({"format": "ensemble.team/v1", "agents": [
        {"name": "a", "model": "keyless/small"},
        {"name": "b", "model": "keyed/small"},
        {"name": "c", "model": "keyless/big"},
        {"name": "d", "model": "local/echo"}
    ]})
}

#[tokio::test]
async fn a_team_on_a_keyless_provider_is_saved_with_a_warning_and_its_runs_name_the_variable() {
    providers();
    let app = TestApp::spawn().await;
    let token = app.token("user_keys", GlobalRole::Member);
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Keys\", spec: $spec}) { id } }";
    let (_, body) = app.gql_as(&token, create, json!({"spec": spec()})).await;
    let team = body["data"]["createTeam"]["id"].as_str().unwrap_or_else(|| panic!("saved: {body}")).to_string();
    let expected = json!([{
        "code": "PROVIDER_KEY_MISSING",
        "message": "spec.agents[0].model: provider \"keyless\" has no API key configured; \
                    set ENSEMBLE_PROVIDER_KEYLESS_API_KEY if it needs one, or its runs will fail",
        "path": ["createTeam"],
        "provider": "keyless",
        "variable": "ENSEMBLE_PROVIDER_KEYLESS_API_KEY"
    }]);
    assert_eq!(body["extensions"]["warnings"], expected, "one warning per keyless provider: {body}");

    let update = "mutation($id: ID!, $spec: JSON) { renamed: updateTeam(id: $id, input: {spec: $spec}) { version } }";
    let mut changed = spec();
    changed["agents"][0]["model"] = json!("local/echo");
    let (_, body) = app.gql_as(&token, update, json!({"id": team, "spec": changed})).await;
    assert_eq!(body["data"]["renamed"]["version"], 2, "{body}");
    assert_eq!(body["extensions"]["warnings"][0]["path"], json!(["renamed"]), "{body}");
    assert!(body["extensions"]["warnings"][0]["message"].as_str().unwrap().starts_with("spec.agents[2].model"));
    let rename = "mutation($id: ID!) { updateTeam(id: $id, input: {name: \"Keys 2\"}) { version } }";
    let (_, body) = app.gql_as(&token, rename, json!({"id": team})).await;
    assert!(body.get("extensions").is_none(), "no spec, no warning: {body}");

    let run = "mutation($team: ID!, $agent: String) { runTeam(teamId: $team, input: {content: \"hi\", agent: $agent}, wait: true) { status error } }";
    let (_, body) = app.gql_as(&token, run, json!({"team": team, "agent": "c"})).await;
    let keyless = &body["data"]["runTeam"];
    assert_eq!(keyless["status"], "FAILED", "{body}");
    let error = keyless["error"].as_str().unwrap();
    assert!(error.contains("no API key is configured: set ENSEMBLE_PROVIDER_KEYLESS_API_KEY"), "{error}");

    let (_, body) = app.gql_as(&token, run, json!({"team": team, "agent": "b"})).await;
    let keyed = &body["data"]["runTeam"];
    assert_eq!(keyed["status"], "FAILED", "{body}");
    let error = keyed["error"].as_str().unwrap();
    assert!(error.contains("the provider refused the API key in ENSEMBLE_PROVIDER_KEYED_API_KEY"), "{error}");
    assert!(!body.to_string().contains(SECRET), "the key never shows: {body}");
    let runs = format!("{{ runs(teamId: \"{team}\") {{ nodes {{ error attempts {{ error }} }} }} }}");
    let (_, listed) = app.gql_as(&token, &runs, json!({})).await;
    assert!(listed["data"]["runs"]["nodes"].as_array().is_some_and(|n| n.len() == 2), "{listed}");
    assert!(!listed.to_string().contains(SECRET), "nor in the stored runs: {listed}");
}

#[tokio::test]
async fn the_start_up_log_names_each_keyless_provider_and_the_variable_to_set() {
    providers();
    let dir = tempfile::tempdir().unwrap();
    common::install_dev_key(&dir.path().join("data"));
    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let mut child = common::ensemble()
        .env("DATABASE_URL", format!("sqlite://{}/ensemble.db", dir.path().display()))
        .env("ENSEMBLE_LISTEN", addr.to_string())
        .env("ENSEMBLE_DATA_DIR", dir.path().join("data"))
        .env("OPENAI_API_KEY", "sk-openai-for-this-test")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    // Providers are set up before the server listens: once it answers, their warnings are out.
    let deadline = Instant::now() + Duration::from_secs(60);
    let healthz = format!("http://{addr}/healthz");
    let mut serving = false;
    while !serving && Instant::now() < deadline {
        serving = reqwest::get(&healthz).await.is_ok_and(|r| r.status().is_success());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut text = String::new();
    std::fs::File::open(&log_path).unwrap().read_to_string(&mut text).unwrap();
    assert!(serving, "the server started: {text}");
    assert!(
        text.contains("provider \"keyless\" has no API key: set ENSEMBLE_PROVIDER_KEYLESS_API_KEY if it needs one"),
        "{text}"
    );
    assert!(!text.contains("provider \"keyed\" has no API key"), "{text}");
    assert!(!text.contains("provider \"openai\" has no API key"), "{text}");
    assert!(!text.contains(SECRET) && !text.contains("sk-openai-for-this-test"), "no key in the log: {text}");
}

#[tokio::test]
async fn an_empty_base_url_is_refused_as_an_unset_one_is() {
    let app = TestApp::spawn_with(|config| {
        let empty = [("ENSEMBLE_PROVIDER_BLANK_BASE_URL".to_owned(), String::new())];
        config.runs.providers = ensemble::config::ProviderSettings::from_vars(empty);
    })
    .await;
    let token = app.token("user_blank", GlobalRole::Member);
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Blank\", spec: $spec}) { id } }";
    let spec = |model: &str| json!({"format": "ensemble.team/v1", "agents": [{"name": "a", "model": model}], "routing": {"default": "a"}});
    let (_, blank) = app.gql_as(&token, create, json!({"spec": spec("blank/model")})).await;
    let (_, unset) = app.gql_as(&token, create, json!({"spec": spec("unset/model")})).await;
    for (body, provider) in [(&blank, "BLANK"), (&unset, "UNSET")] {
        assert_eq!(body["errors"][0]["extensions"]["code"], "BAD_USER_INPUT", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains(&format!("set ENSEMBLE_PROVIDER_{provider}_BASE_URL")), "{message}");
    }
}
