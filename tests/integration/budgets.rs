//! Daily budgets under parallel runs: each run reserves its worst case before it calls a model
//! and gives back what it did not spend when it ends (success, failure, time limit, cancel,
//! crash), so runs together never pass a budget. Runs at real latency (`local/slow-*`).

use crate::common;

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use common::{TestApp, first_code};
use ensemble::domain::{GlobalRole, RunEvent};
use entity::{budget_days, run_attempts, runs, states::BudgetHolder};
use futures_util::future::join_all;
use sea_orm::{EntityTrait, PaginatorTrait};
use serde_json::{Value, json};
use tokio::sync::broadcast;

const RUN: &str = "mutation($team: ID!, $input: RunInput!, $wait: Boolean = true) { runTeam(teamId: $team, input: $input, wait: $wait) {
    id status tokensIn tokensOut costUsd errorCode } }";
const STATUS: &str = "query($id: ID!) { run(id: $id) { status errorCode } }";
const ESTIMATE: &str = "query($team: ID!, $input: String!) { estimateCost(teamId: $team, input: $input) {
    worstCaseTokens worstCaseCostUsd outputTokens } }";
const TODAY: &str = "{ resourceUsage { principals { kind today { runs tokens costUsd } } } }";
const QUESTION: &str = "Where is my parcel?";

/// A team of one agent on `model` that answers in at most `max_tokens`, with `attempts` calls
/// allowed on server errors.
fn one_agent(model: &str, max_tokens: u32, attempts: u32) -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": "solo", "model": model, "maxTokens": max_tokens}],
        "retry": {"maxAttempts": attempts, "retryOn": ["server_error"], "initialBackoffMs": 600,
                  "maxBackoffMs": 600, "jitter": false}
    })
}

async fn create_team(app: &TestApp, token: &str, spec: Value) -> String {
    let create = "mutation($spec: JSON) { createTeam(input: {name: \"Support\", spec: $spec}) { id } }";
    app.must(token, create, json!({"spec": spec})).await["createTeam"]["id"].as_str().unwrap().to_string()
}

/// An API key of the token's user that may run and read, with `budget` (`dailyTokenBudget`, …).
async fn create_key(app: &TestApp, token: &str, budget: Value) -> String {
    let mut input = json!({"name": "bot", "scopes": ["RUNS_EXECUTE", "TEAMS_READ"]});
    input.as_object_mut().unwrap().extend(budget.as_object().unwrap().clone());
    let create = "mutation($input: CreateApiKeyInput!) { createApiKey(input: $input) { secret } }";
    app.must(token, create, json!({"input": input})).await["createApiKey"]["secret"].as_str().unwrap().to_string()
}

/// `estimateCost` of `QUESTION` on the team, as the bearer of `token`.
async fn estimate(app: &TestApp, token: &str, team: &str) -> Value {
    app.must(token, ESTIMATE, json!({"team": team, "input": QUESTION})).await["estimateCost"].clone()
}

/// The worst case of one run of `spec`, in tokens, as a server without budgets estimates it.
async fn worst_case_tokens(spec: Value) -> i64 {
    let probe = TestApp::spawn().await;
    let token = probe.token("user_probe", GlobalRole::Member);
    let team = create_team(&probe, &token, spec).await;
    estimate(&probe, &token, &team).await["worstCaseTokens"].as_i64().unwrap()
}

async fn start(app: &TestApp, token: &str, team: &str, wait: bool) -> Value {
    app.gql_as(token, RUN, json!({"team": team, "input": {"content": QUESTION}, "wait": wait})).await.1
}

/// Starts `count` runs of `team` at once; answers each response body.
async fn parallel_runs(app: &TestApp, token: &str, team: &str, count: usize) -> Vec<Value> {
    join_all((0..count).map(|_| start(app, token, team, true))).await
}

/// How many answers ran to success, and how many were refused for budget.
fn tally(answers: &[Value]) -> (usize, usize) {
    let ran = answers.iter().filter(|body| body["data"]["runTeam"]["status"] == "SUCCEEDED").count();
    let refused = answers.iter().filter(|body| first_code(body) == "QUOTA_EXCEEDED").count();
    assert_eq!(ran + refused, answers.len(), "each run either ran or was refused: {answers:?}");
    (ran, refused)
}

/// Tokens and dollars the principal of `kind` (`USER` or `API_KEY`) spent today.
async fn spent_today(app: &TestApp, token: &str, kind: &str) -> (i64, f64) {
    let principals = app.must(token, TODAY, json!({})).await["resourceUsage"]["principals"].clone();
    let found = principals.as_array().unwrap().iter().find(|p| p["kind"] == kind).cloned();
    let today = found.unwrap_or_else(|| panic!("no {kind} in {principals}"))["today"].clone();
    (today["tokens"].as_i64().unwrap(), today["costUsd"].as_f64().unwrap())
}

/// Runs and attempts stored.
async fn stored(app: &TestApp) -> (u64, u64) {
    let runs = runs::Entity::find().count(&app.state.db).await.unwrap();
    let attempts = run_attempts::Entity::find().count(&app.state.db).await.unwrap();
    (runs, attempts)
}

/// Waits (up to 20 s) until the run has ended; answers `{status errorCode}`.
async fn ended(app: &TestApp, token: &str, id: &Value) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let run = app.must(token, STATUS, json!({"id": id})).await["run"].clone();
        if !["RUNNING", "QUEUED"].contains(&run["status"].as_str().unwrap()) {
            return run;
        }
        assert!(Instant::now() < deadline, "the run did not end: {run}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn ten_parallel_runs_never_spend_past_a_five_token_budget() {
    let app = TestApp::spawn_with(|c| c.runs.daily_token_budget = Some(5)).await;
    let token = app.token("user_budget", GlobalRole::Member);
    let team = create_team(&app, &token, one_agent("local/slow-300", 20, 1)).await;

    let answers = parallel_runs(&app, &token, &team, 10).await;

    let (ran, _) = tally(&answers);
    let spent = spent_today(&app, &token, "USER").await.0;
    assert!(spent <= 5, "{spent} tokens spent over a 5-token budget by {ran} runs");
    assert_eq!(stored(&app).await, (ran as u64, ran as u64), "a refused run stores nothing and calls no model");
    let message = answers[0]["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with("Your daily token budget of 5 tokens cannot hold this run"), "{message}");
    assert!(message.contains("more than the whole budget") && message.contains("maxTokens"), "{message}");
}

#[tokio::test]
async fn parallel_runs_take_as_many_worst_cases_as_fit_and_give_back_what_they_did_not_spend() {
    // Two calls allowed, one made: each run spends at most half of what it reserves.
    let spec = one_agent("local/slow-1500", 8, 2);
    let worst = worst_case_tokens(spec.clone()).await;
    let budget = 3 * worst + worst / 2;
    let app = TestApp::spawn_with(|c| c.runs.daily_token_budget = Some(budget)).await;
    let token = app.token("user_budget", GlobalRole::Member);
    let team = create_team(&app, &token, spec).await;

    let answers = parallel_runs(&app, &token, &team, 10).await;

    assert_eq!(tally(&answers), (3, 7), "three worst cases fit: {answers:?}");
    let refusal = answers.iter().find(|body| first_code(body) == "QUOTA_EXCEEDED").unwrap();
    let message = refusal["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(&format!("up to {worst} tokens")), "{message}");
    assert!(message.contains(&format!("{} tokens held by runs in progress", 3 * worst)), "{message}");
    let spent = spent_today(&app, &token, "USER").await.0;
    assert!(0 < spent && spent <= budget, "{spent} tokens spent over a budget of {budget}");
    assert_eq!(stored(&app).await, (3, 3), "the seven refused runs stored nothing and called no model");

    // What the three did not spend is back: two more runs fit now.
    let (ran, refused) = tally(&parallel_runs(&app, &token, &team, 3).await);
    assert_eq!((ran, refused), (2, 1));
    let spent = spent_today(&app, &token, "USER").await.0;
    assert!(spent <= budget, "{spent} tokens spent over a budget of {budget}");
}

/// A server, a user whose API key holds one run of `spec` at a time, and that key.
async fn one_run_at_a_time(spec: Value) -> (TestApp, String, String, String) {
    let worst = worst_case_tokens(spec.clone()).await;
    let app = TestApp::spawn().await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let team = create_team(&app, &owner, spec).await;
    let key = create_key(&app, &owner, json!({"dailyTokenBudget": worst + worst / 2})).await;
    (app, owner, key, team)
}

/// Starts a run that holds the key's whole budget, checks that a second one is refused while
/// it runs, ends it with `end`, and checks that a run fits again: its reservation came back.
async fn holds_until_it_ends<F, Fut>(spec: Value, end: F) -> Value
where
    F: FnOnce(TestApp, String, Value) -> Fut,
    Fut: Future<Output = (TestApp, Value)>,
{
    let (app, owner, key, team) = one_run_at_a_time(spec).await;
    let first = start(&app, &key, &team, false).await;
    let id = first["data"]["runTeam"]["id"].clone();
    assert_eq!(first["data"]["runTeam"]["status"], "RUNNING", "{first}");
    let second = start(&app, &key, &team, false).await;
    assert_eq!(first_code(&second), "QUOTA_EXCEEDED", "the first run holds the budget: {second}");
    assert!(second["errors"][0]["message"].as_str().unwrap().starts_with("This API key's daily token budget"));

    let (app, ended) = end(app, owner.clone(), id).await;

    let third = start(&app, &key, &team, false).await;
    assert_eq!(third["data"]["runTeam"]["status"], "RUNNING", "the budget came back: {third}");
    ended
}

/// Waits (up to 20 s) until the run `id` has come to its own end, after its row was ended as
/// interrupted: its executor has finished and stored what it could (the event comes last).
async fn own_end(events: &mut broadcast::Receiver<Arc<RunEvent>>, id: &Value) {
    let end = async {
        loop {
            match events.recv().await {
                Ok(event) if event.run_id.as_str() == id.as_str().unwrap() && event.kind.is_terminal() => return,
                Err(broadcast::error::RecvError::Closed) => panic!("the event bus closed"),
                _ => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), end).await.expect("the run's own end within 20 s");
}

#[tokio::test]
async fn a_failed_run_gives_back_its_reservation() {
    let spec = one_agent("local/down", 8, 3);
    let ended = holds_until_it_ends(spec, |app, owner, id| async move {
        let run = ended(&app, &owner, &id).await;
        (app, run)
    })
    .await;
    assert_eq!(ended, json!({"status": "FAILED", "errorCode": "server_error"}));
}

#[tokio::test]
async fn a_run_stopped_by_its_time_limit_gives_back_its_reservation() {
    let mut spec = one_agent("local/slow-20000", 8, 1);
    spec["limits"] = json!({"timeoutMs": 1500});
    let ended = holds_until_it_ends(spec, |app, owner, id| async move {
        let run = ended(&app, &owner, &id).await;
        (app, run)
    })
    .await;
    assert_eq!(ended, json!({"status": "FAILED", "errorCode": "timeout"}));
}

#[tokio::test]
async fn a_cancelled_run_gives_back_its_reservation() {
    let ended = holds_until_it_ends(one_agent("local/slow-20000", 8, 1), |app, owner, id| async move {
        let cancel = "mutation($id: ID!) { cancelRun(id: $id) { status errorCode } }";
        let run = app.must(&owner, cancel, json!({"id": id})).await["cancelRun"].clone();
        (app, run)
    })
    .await;
    assert_eq!(ended, json!({"status": "CANCELLED", "errorCode": "cancelled"}));
}

#[tokio::test]
async fn a_run_cut_short_by_a_crash_gives_back_its_reservation_at_the_next_start() {
    let ended = holds_until_it_ends(one_agent("local/slow-3000", 8, 1), |app, owner, id| async move {
        let mut events = app.state.bus.subscribe();
        // The next start on the same database finds the run in progress and fails it.
        app.give_up_d1_lease().await;
        let mut config = (*app.state.config).clone();
        config.listen = "127.0.0.1:0".parse().unwrap();
        let restarted = ensemble::startup::App::build(config).await.expect("the server starts again");
        drop(restarted);
        let run = app.must(&owner, STATUS, json!({"id": id})).await["run"].clone();
        // The first run's own end, when it comes, changes nothing: it gave back its reservation once.
        own_end(&mut events, &id).await;
        assert_eq!(app.must(&owner, STATUS, json!({"id": id})).await["run"], run, "the recovered run stays failed");
        (app, run)
    })
    .await;
    assert_eq!(ended, json!({"status": "FAILED", "errorCode": "interrupted"}));
}

#[tokio::test]
async fn a_recovered_run_gives_its_reservation_back_once() {
    let (app, owner, key, team) = one_run_at_a_time(one_agent("local/slow-1000", 8, 1)).await;
    let mut events = app.state.bus.subscribe();
    let first = start(&app, &key, &team, false).await;
    let id = first["data"]["runTeam"]["id"].clone();
    ensemble::service::runs::recover_interrupted(&app.state.db, app.state.writer.as_ref(), None).await.unwrap();
    assert_eq!(app.must(&owner, STATUS, json!({"id": id})).await["run"]["errorCode"], "interrupted");
    own_end(&mut events, &id).await;
    // Given back twice, two runs would fit now.
    let answers = join_all((0..2).map(|_| start(&app, &key, &team, false))).await;
    let running = answers.iter().filter(|a| a["data"]["runTeam"]["status"] == "RUNNING").count();
    let refused = answers.iter().filter(|a| first_code(a) == "QUOTA_EXCEEDED").count();
    assert_eq!((running, refused), (1, 1), "{answers:?}");
}

#[tokio::test]
async fn a_cost_budget_holds_across_parallel_runs_of_an_api_key_and_not_its_owner() {
    let app = TestApp::spawn().await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let admin = app.token("user_admin", GlobalRole::Admin);
    let price = "mutation { upsertModelPrice(input: {model: \"local/*\", inputUsdPerMtok: 1.0, outputUsdPerMtok: 2.0}) { model } }";
    app.must(&admin, price, json!({})).await;
    let team = create_team(&app, &owner, one_agent("local/slow-1500", 16, 2)).await;
    let worst = estimate(&app, &owner, &team).await["worstCaseCostUsd"].as_f64().unwrap();
    let budget = 2.5 * worst;
    let key = create_key(&app, &owner, json!({"dailyCostBudgetUsd": budget})).await;

    let answers = parallel_runs(&app, &key, &team, 6).await;

    assert_eq!(tally(&answers), (2, 4), "{answers:?}");
    let refusal = answers.iter().find(|body| first_code(body) == "QUOTA_EXCEEDED").unwrap();
    assert!(refusal["errors"][0]["message"].as_str().unwrap().starts_with("This API key's daily budget of $"));
    let (_, cost) = spent_today(&app, &key, "API_KEY").await;
    assert!(0.0 < cost && cost <= budget, "${cost} spent over a budget of ${budget}");
    // The owner's own runs are not held to the key's budget.
    assert_eq!(tally(&parallel_runs(&app, &owner, &team, 4).await), (4, 0));
}

#[tokio::test]
async fn an_agent_without_max_tokens_answers_at_most_4096_tokens_when_a_budget_holds_its_run() {
    let app = TestApp::spawn().await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "parrot", "model": "local/echo"}],
                      "retry": {"maxAttempts": 1, "retryOn": []}});
    let team = create_team(&app, &owner, spec).await;
    let key = create_key(&app, &owner, json!({"dailyTokenBudget": 1_000_000})).await;
    let long = "word ".repeat(6000);
    let run = |token: &str| {
        let (token, long) = (token.to_string(), long.clone());
        let app = &app;
        let team = team.clone();
        async move {
            let body = app.gql_as(&token, RUN, json!({"team": team, "input": {"content": long}})).await.1;
            assert!(body.get("errors").is_none(), "{body}");
            body["data"]["runTeam"]["tokensOut"].as_i64().unwrap()
        }
    };
    assert!(run(&owner).await > 6000, "no budget: the answer is as long as the model makes it");
    assert_eq!(run(&key).await, 4096, "under a budget the answer stops at 4096 tokens");
    let held = app.must(&key, ESTIMATE, json!({"team": team, "input": "hi"})).await["estimateCost"].clone();
    assert_eq!(held["outputTokens"], 4096, "the key's estimate reckons the answer it reserves: {held}");
    let free = app.must(&owner, ESTIMATE, json!({"team": team, "input": "hi"})).await["estimateCost"].clone();
    assert_eq!(free["outputTokens"], 0, "{free}");
}

#[tokio::test]
async fn what_was_spent_before_reservations_existed_still_counts_today() {
    if common::skipped_on_d1("wrangler applies D1's migrations; the server cannot take them down") {
        return;
    }
    use migration::MigratorTrait;
    use sea_orm::{ActiveModelTrait, Set};
    let app = TestApp::spawn_with(|c| c.runs.daily_token_budget = Some(1_000)).await;
    let token = app.token("user_veteran", GlobalRole::Member);
    let team = create_team(&app, &token, one_agent("local/echo", 8, 1)).await;
    let worst = estimate(&app, &token, &team).await["worstCaseTokens"].as_i64().unwrap();
    // The database as it was before budget reservations (migration 14 and those after it),
    // with most of today's budget spent.
    let db = &app.state.db;
    let since_reservations = migration::Migrator::migrations().len() as u32 - 13;
    migration::Migrator::down(db, Some(since_reservations)).await.unwrap();
    entity::usage_daily::ActiveModel {
        day: Set(chrono::Utc::now().format("%Y-%m-%d").to_string()),
        user_id: Set("user_veteran".into()),
        team_id: Set(team.clone()),
        api_key_id: Set(String::new()),
        model: Set("local/echo".into()),
        requests: Set(0),
        runs: Set(3),
        tokens_in: Set(900),
        tokens_out: Set(100 - worst + 1),
        cost_usd: Set(0.0),
    }
    .insert(db)
    .await
    .unwrap();
    migration::Migrator::up(db, None).await.unwrap();

    let (_, body) = app.gql_as(&token, RUN, json!({"team": team, "input": {"content": QUESTION}})).await;
    assert_eq!(first_code(&body), "QUOTA_EXCEEDED", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(&format!("{} tokens used", 1_000 - worst + 1)), "{message}");
}

#[tokio::test]
async fn a_run_its_api_key_refuses_holds_nothing_on_its_owner() {
    let spec = one_agent("local/slow-3000", 8, 1);
    let worst = worst_case_tokens(spec.clone()).await;
    let app = TestApp::spawn_with(|c| c.runs.daily_token_budget = Some(100 * worst)).await;
    let owner = app.token("user_owner", GlobalRole::Member);
    let team = create_team(&app, &owner, spec).await;
    let key = create_key(&app, &owner, json!({"dailyTokenBudget": worst + worst / 2})).await;
    let first = start(&app, &key, &team, false).await;
    assert_eq!(first["data"]["runTeam"]["status"], "RUNNING", "{first}");

    // The owner's budget has room; the key's does not: the reservation is one batch, refused whole.
    let second = start(&app, &key, &team, false).await;

    assert_eq!(first_code(&second), "QUOTA_EXCEEDED", "{second}");
    assert!(second["errors"][0]["message"].as_str().unwrap().starts_with("This API key's daily token budget"));
    let held: Vec<(BudgetHolder, i64)> = budget_days::Entity::find()
        .all(&app.state.db)
        .await
        .unwrap()
        .into_iter()
        .map(|row| (row.principal_kind, row.reserved_tokens))
        .collect();
    assert_eq!(held.len(), 2, "{held:?}");
    assert!(held.iter().all(|(_, tokens)| *tokens == worst), "only the first run is held, on both: {held:?}");
}
