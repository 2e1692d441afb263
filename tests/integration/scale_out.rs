//! Several instances of the real binary on one PostgreSQL database and one Redis behave as one:
//! live events, cache invalidations (keys, roles, templates, categories, prices), rate limits
//! and cancellation cross instances; a Redis outage degrades to per-instance service without
//! failing a request and heals on its own; a dropped PostgreSQL connection fails one request
//! cleanly; SIGTERM closes websockets with 1001; instances starting together on a fresh
//! database do not clash. The cluster harness lives in `scale_out/cluster.rs`.
//!
//! Every test skips (saying why) unless `ENSEMBLE_TEST_DATABASE_URL` (a PostgreSQL admin URL)
//! and `ENSEMBLE_TEST_REDIS_URL` are set — except the dropped-connection test, which needs only
//! PostgreSQL. The Redis fault tests start their own `redis-server`.

mod cluster;
use crate::common;
mod stub_model;

use std::time::{Duration, Instant};

use cluster::{Cluster, EVENT_FIELDS, RedisServer, events_until_end, live_team_activity, milestones, streamed};
use common::first_code;
use ensemble::{domain::GlobalRole, service::templates::starters};
use sea_orm::{ConnectionTrait, Statement, TransactionTrait};
use serde_json::{Value, json};
use stub_model::StubModel;

const ME: &str = "{ me { id role } }";
const TEAM: &str = "query($id: ID!) { team(id: $id) { version spec } }";
const UPDATE_SPEC: &str = "mutation($id: ID!, $s: JSON) { updateTeam(id: $id, input: {spec: $s}) { version } }";
const RUN: &str = "query($id: ID!) { run(id: $id) { status errorCode attempts { outcome } } }";

/// A team whose default agent answers at once; `slowly` takes 1.5 s, `take your time` 30 s.
fn spec(default_agent: &str) -> Value {
    json!({
        "format": "ensemble.team/v1",
        "agents": [{"name": default_agent, "model": "local/echo"}, {"name": "sloth", "model": "local/slow-1500"},
                   {"name": "glacier", "model": "local/slow-30000"}],
        "routing": {"rules": [{"name": "slow", "when": {"contains": "slowly"}, "routeTo": "sloth"},
                              {"name": "glacial", "when": {"contains": "take your time"}, "routeTo": "glacier"}],
                    "default": default_agent}
    })
}

async fn create_team(on: &cluster::Instance, token: &str) -> String {
    let create = "mutation($s: JSON) { createTeam(input: {name: \"Support\", spec: $s}) { id } }";
    on.must(token, create, json!({"s": spec("triage")})).await["createTeam"]["id"].as_str().unwrap().to_string()
}

/// An API key of the token's user that may read teams: (secret, id).
async fn create_key(on: &cluster::Instance, token: &str) -> (String, String) {
    let create = "mutation { createApiKey(input: {name: \"ci\", scopes: [TEAMS_READ]}) { secret apiKey { id } } }";
    let made = on.must(token, create, json!({})).await["createApiKey"].clone();
    (made["secret"].as_str().unwrap().to_string(), made["apiKey"]["id"].as_str().unwrap().to_string())
}

/// Waits until `/readyz` of every instance says `status`, all within `within`; answers each body.
async fn all_say(instances: &mut [&mut cluster::Instance], status: &str, within: Duration) -> Vec<Value> {
    let deadline = Instant::now() + within;
    let mut bodies = Vec::new();
    for instance in instances.iter_mut() {
        bodies.push(instance.until_status(status, deadline.saturating_duration_since(Instant::now())).await);
    }
    bodies
}

#[tokio::test]
async fn team_activity_and_run_events_on_one_instance_see_a_run_started_on_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let team = create_team(&a, &alice).await;
    let mut activity = a.ws(&alice).await;
    live_team_activity(&mut activity, &a, &alice, &team).await;

    let run = b.run(&alice, &team, "hello from B", true).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let events = events_until_end(&mut activity, "teamActivity", &run).await;
    assert_eq!(milestones(&events), ["QUEUED", "ROUTED", "ATTEMPT_STARTED", "COMPLETED"], "each once, in order");
    assert_eq!(streamed(&events), run["output"].as_str().unwrap(), "the whole answer, streamed once");

    let slow = b.run(&alice, &team, "answer slowly", false).await;
    assert_eq!(slow["status"], "RUNNING", "{slow}");
    let mut follower = a.ws(&alice).await;
    let query = format!("subscription($r: ID!) {{ runEvents(runId: $r) {{ {EVENT_FIELDS} }} }}");
    cluster::subscribe(&mut follower, "run", &query, json!({"r": slow["id"]})).await;
    let events = events_until_end(&mut follower, "runEvents", &slow).await;
    assert_eq!(events.last().unwrap()["kind"], "COMPLETED", "{events:?}");
    assert!(streamed(&events).starts_with("[sloth] You said:"), "the answer streamed live from B: {events:?}");
    let seen_by_team = events_until_end(&mut activity, "teamActivity", &slow).await;
    assert_eq!(milestones(&seen_by_team), ["QUEUED", "ROUTED", "ATTEMPT_STARTED", "COMPLETED"]);
}

#[tokio::test]
async fn a_key_revoked_or_rotated_on_one_instance_is_refused_at_once_on_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let alice = cluster.token("user_alice", GlobalRole::Member);

    let (revoked, id) = create_key(&b, &alice).await;
    assert_eq!(a.must(&revoked, ME, json!({})).await["me"]["id"], "user_alice", "A now holds the key");
    b.must(&alice, "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }", json!({"id": id})).await;
    let (status, body) = a.gql(&revoked, ME, json!({})).await;
    assert_eq!((status, first_code(&body)), (401, "UNAUTHENTICATED"), "revoked on B, used on A: {body}");

    let (old, id) = create_key(&b, &alice).await;
    assert_eq!(a.must(&old, ME, json!({})).await["me"]["id"], "user_alice", "A now holds the key");
    let rotate = "mutation($id: ID!) { rotateApiKey(id: $id, graceSeconds: 0) { secret } }";
    let new = b.must(&alice, rotate, json!({"id": id})).await["rotateApiKey"]["secret"].as_str().unwrap().to_string();
    let (status, body) = a.gql(&old, ME, json!({})).await;
    assert_eq!((status, first_code(&body)), (401, "UNAUTHENTICATED"), "the old secret, rotated on B: {body}");
    assert_eq!(a.must(&new, ME, json!({})).await["me"]["id"], "user_alice", "the new secret works on A");
}

#[tokio::test]
async fn a_team_spec_updated_on_one_instance_is_served_and_run_fresh_by_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let team = create_team(&b, &alice).await;
    let served = a.must(&alice, TEAM, json!({"id": team})).await["team"].clone();
    assert_eq!((&served["version"], &served["spec"]["routing"]["default"]), (&json!(1), &json!("triage")));

    b.must(&alice, UPDATE_SPEC, json!({"id": team, "s": spec("concierge")})).await;
    let served = a.must(&alice, TEAM, json!({"id": team})).await["team"].clone();
    assert_eq!((&served["version"], &served["spec"]["routing"]["default"]), (&json!(2), &json!("concierge")));
    let ran = a.run(&alice, &team, "hello", true).await;
    assert_eq!((&ran["teamVersion"], &ran["agent"]), (&json!(2), &json!("concierge")), "{ran}");
}

#[tokio::test]
async fn templates_categories_and_prices_changed_on_one_instance_are_fresh_on_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let admin = cluster.token("user_admin", GlobalRole::Admin);
    let create = "mutation($input: TemplateInput!) { createTemplate(input: $input) { id } }";
    let input = json!({"kind": "QUERY", "name": "Greet", "body": {"prompt": "Hello {{ name }}"},
                       "variables": [{"name": "name", "type": "string", "required": true}]});
    let id = b.must(&admin, create, json!({"input": input})).await["createTemplate"]["id"].clone();
    let render = "query($id: ID!) { renderTemplate(id: $id, variables: {name: \"Ada\"}) }";
    assert_eq!(a.must(&admin, render, json!({"id": id})).await["renderTemplate"], "Hello Ada", "A now holds it");
    let update = "mutation($id: ID!, $input: TemplateInput!) { updateTemplate(id: $id, input: $input) { version } }";
    b.must(&admin, update, json!({"id": id, "input": {"body": {"prompt": "Welcome, {{ name }}"}}})).await;
    assert_eq!(a.must(&admin, render, json!({"id": id})).await["renderTemplate"], "Welcome, Ada");

    let categories = "{ templateCategories { slug } }";
    let listed = a.must(&admin, categories, json!({})).await["templateCategories"].as_array().unwrap().len();
    let add = "mutation { createTemplateCategory(input: {name: \"Field notes\"}) { slug } }";
    let slug = b.must(&admin, add, json!({})).await["createTemplateCategory"]["slug"].clone();
    let now = a.must(&admin, categories, json!({})).await["templateCategories"].clone();
    assert_eq!(now.as_array().unwrap().len(), listed + 1, "{now}");
    assert!(now.as_array().unwrap().iter().any(|c| c["slug"] == slug), "{now}");

    let team = create_team(&a, &admin).await;
    let cost = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"hello\"}) { costUsd } }";
    assert_eq!(a.must(&admin, cost, json!({"t": team})).await["runTeam"]["costUsd"], 0.0, "local/echo is free");
    let price = "mutation { upsertModelPrice(input: {model: \"local/echo\", inputUsdPerMtok: 1000, outputUsdPerMtok: 1000}) { model } }";
    b.must(&admin, price, json!({})).await;
    let charged = a.must(&admin, cost, json!({"t": team})).await["runTeam"]["costUsd"].as_f64().unwrap();
    assert!(charged > 0.0, "A prices the run at the price set on B");
}

#[tokio::test]
async fn one_principal_gets_its_rate_limit_once_across_instances() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let limits = [("ENSEMBLE_RATE_LIMIT_PER_MINUTE", "60"), ("ENSEMBLE_RATE_LIMIT_BURST", "10")];
    let (a, b) = (cluster.start_with("A", &limits).await, cluster.start_with("B", &limits).await);
    let hasty = cluster.token("user_hasty", GlobalRole::Member);

    // One unit a second comes back, so a few more than the burst may pass while this runs.
    let mut allowed = 0;
    let mut refused_by = Vec::new();
    for i in 0..24 {
        let on = if i % 2 == 0 { &a } else { &b };
        let response = reqwest::Client::new()
            .post(on.url("/graphql"))
            .bearer_auth(&hasty)
            .json(&json!({"query": "{ __typename }"}))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let retry_after = response.headers().get("retry-after").cloned();
        let body: Value = response.json().await.unwrap();
        if status == 200 && body.get("errors").is_none() {
            allowed += 1;
            continue;
        }
        assert_eq!((status, first_code(&body)), (429, "RATE_LIMITED"), "request {i} on {}: {body}", on.name);
        assert!(retry_after.is_some(), "a refusal says when to retry");
        assert!(body["errors"][0]["extensions"]["retryAfter"].as_u64() >= Some(1), "{body}");
        refused_by.push(on.name.clone());
        if refused_by.len() == 4 {
            break;
        }
    }
    assert!((10..=12).contains(&allowed), "{allowed} requests passed across A and B; the burst is 10 in all");
    for name in ["A", "B"] {
        assert!(refused_by.iter().any(|by| by == name), "{name} refused none: {refused_by:?}");
    }

    let calm = cluster.token("user_calm", GlobalRole::Member);
    assert_eq!(a.must(&calm, ME, json!({})).await["me"]["id"], "user_calm", "limits are per principal");
    assert_eq!(b.must(&calm, ME, json!({})).await["me"]["id"], "user_calm");
}

#[tokio::test]
async fn a_role_changed_on_one_instance_applies_on_the_next_request_to_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let admin = cluster.token("user_admin", GlobalRole::Admin);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let users = "{ users { nodes { id } } }";
    assert_eq!(first_code(&a.gql(&alice, users, json!({})).await.1), "FORBIDDEN", "a member, as A remembers");

    let set_role = "mutation($role: GlobalRole!) { setUserRole(userId: \"user_alice\", role: $role) { role } }";
    b.must(&admin, set_role, json!({"role": "ADMIN"})).await;
    assert_eq!(a.must(&alice, ME, json!({})).await["me"]["role"], "ADMIN");
    assert!(a.gql(&alice, users, json!({})).await.1.get("errors").is_none(), "an admin on A too");

    b.must(&admin, set_role, json!({"role": "MEMBER"})).await;
    assert_eq!(first_code(&a.gql(&alice, users, json!({})).await.1), "FORBIDDEN", "a member again on A");
}

#[tokio::test]
async fn cancel_run_on_one_instance_stops_a_run_executing_on_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let team = create_team(&a, &alice).await;
    let run = a.run(&alice, &team, "take your time", false).await;
    assert_eq!((&run["status"], &run["agent"]), (&json!("RUNNING"), &json!("glacier")), "a 30 s answer: {run}");
    let mut follower = a.ws(&alice).await;
    let query = format!("subscription($r: ID!) {{ runEvents(runId: $r) {{ {EVENT_FIELDS} }} }}");
    cluster::subscribe(&mut follower, "run", &query, json!({"r": run["id"]})).await;

    let cancelled_at = Instant::now();
    let cancel = "mutation($id: ID!) { cancelRun(id: $id) { status errorCode } }";
    let answer = b.must(&alice, cancel, json!({"id": run["id"]})).await["cancelRun"].clone();
    assert_eq!(answer, json!({"status": "CANCELLED", "errorCode": "cancelled"}), "B's answer");
    let events = events_until_end(&mut follower, "runEvents", &run).await;
    assert_eq!(events.last().unwrap()["kind"], "CANCELLED", "A's executor stopped the run: {events:?}");
    let stored = a.must(&alice, RUN, json!({"id": run["id"]})).await["run"].clone();
    assert_eq!(
        stored,
        json!({"status": "CANCELLED", "errorCode": "cancelled", "attempts": [{"outcome": "cancelled"}]})
    );
    assert!(cancelled_at.elapsed() < Duration::from_secs(5), "stopped in {:?}", cancelled_at.elapsed());
}

#[tokio::test]
async fn a_redis_outage_degrades_to_local_service_and_heals_on_the_same_socket() {
    let Some((pg, _)) = cluster::postgres_and_redis() else { return };
    if !RedisServer::installed() {
        return;
    }
    let mut redis = RedisServer::unstarted();
    redis.start().await;
    let cluster = Cluster::new(&pg, Some(&redis.url())).await;
    let (mut a, mut b) = (cluster.start("A").await, cluster.start("B").await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let team = create_team(&a, &alice).await;
    let mut activity = a.ws(&alice).await;
    live_team_activity(&mut activity, &a, &alice, &team).await;
    let run = b.run(&alice, &team, "before the outage", true).await;
    assert_eq!(events_until_end(&mut activity, "teamActivity", &run).await.last().unwrap()["kind"], "COMPLETED");
    let (key, key_id) = create_key(&b, &alice).await;
    assert_eq!(a.must(&key, ME, json!({})).await["me"]["id"], "user_alice", "A now holds the key");
    let mut key_ws = a.ws(&key).await;

    redis.kill();
    for body in all_say(&mut [&mut a, &mut b], "degraded", Duration::from_secs(5)).await {
        let reason = body["reason"].as_str().unwrap_or_default();
        assert!(reason.to_lowercase().contains("redis"), "the reason names Redis: {body}");
    }
    for on in [&a, &b] {
        assert_eq!(on.must(&alice, ME, json!({})).await["me"]["id"], "user_alice", "{} serves", on.name);
    }
    let revoke = "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }";
    assert!(b.must(&alice, revoke, json!({"id": key_id})).await["revokeApiKey"]["revokedAt"].is_string());
    let local = a.run(&alice, &team, "during the outage", true).await;
    assert_eq!(local["status"], "SUCCEEDED", "{local}");
    let events = events_until_end(&mut activity, "teamActivity", &local).await;
    assert_eq!(milestones(&events), ["QUEUED", "ROUTED", "ATTEMPT_STARTED", "COMPLETED"], "A's own run on A's socket");

    redis.start().await;
    all_say(&mut [&mut a, &mut b], "ready", Duration::from_secs(10)).await;
    let (status, body) = a.gql(&key, ME, json!({})).await;
    assert_eq!(
        (status, first_code(&body)),
        (401, "UNAUTHENTICATED"),
        "A forgot what it held during the outage: {body}"
    );
    let (code, reason) = key_ws.closed().await;
    assert_eq!((code, reason.as_str()), (4403, "Forbidden: The API key has been revoked."), "checked again once back");
    let run = b.run(&alice, &team, "after the outage", true).await;
    let events = events_until_end(&mut activity, "teamActivity", &run).await;
    assert_eq!(
        milestones(&events),
        ["QUEUED", "ROUTED", "ATTEMPT_STARTED", "COMPLETED"],
        "B's run on A's socket again"
    );
}

#[tokio::test]
async fn an_instance_starts_without_redis_and_connects_when_it_appears() {
    let Some((pg, _)) = cluster::postgres_and_redis() else { return };
    if !RedisServer::installed() {
        return;
    }
    let mut redis = RedisServer::unstarted();
    let cluster = Cluster::new(&pg, Some(&redis.url())).await;
    let mut a = cluster.spawn("A", &[]);
    let body = a.until_status("degraded", Duration::from_secs(60)).await;
    assert!(body["reason"].as_str().unwrap_or_default().to_lowercase().contains("redis"), "{body}");
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let team = create_team(&a, &alice).await;
    assert_eq!(a.run(&alice, &team, "hello", true).await["status"], "SUCCEEDED");

    redis.start().await;
    a.until_status("ready", Duration::from_secs(10)).await;
    assert_eq!(a.must(&alice, ME, json!({})).await["me"]["id"], "user_alice");
}

/// One instance on PostgreSQL alone, Alice's token, and a team of hers.
async fn one_instance_with_a_team(pg: &str) -> (Cluster, cluster::Instance, String) {
    let cluster = Cluster::new(pg, None).await;
    let a = cluster.start("A").await;
    let alice = cluster.token("user_alice", GlobalRole::Member);
    create_team(&a, &alice).await;
    (cluster, a, alice)
}

#[tokio::test]
async fn a_postgres_connection_dropped_mid_request_fails_that_request_cleanly() {
    let Some(pg) = cluster::postgres() else { return };
    let (cluster, a, alice) = one_instance_with_a_team(&pg).await;

    let admin = sea_orm::Database::connect(&cluster.db.url).await.unwrap();
    let lock = admin.begin().await.unwrap();
    lock.execute_unprepared("LOCK TABLE teams IN ACCESS EXCLUSIVE MODE").await.unwrap();
    let blocked = tokio::spawn({
        let (url, alice) = (a.url("/graphql"), alice.clone());
        async move {
            let body = json!({"query": "mutation { createTeam(input: {name: \"Blocked\"}) { id } }"});
            let response = reqwest::Client::new().post(url).bearer_auth(alice).json(&body).send().await.unwrap();
            response.json::<Value>().await.unwrap()
        }
    });
    let waiting = "SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity \
                   WHERE datname = current_database() AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()";
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let statement = Statement::from_string(sea_orm::DbBackend::Postgres, waiting);
        if !admin.query_all_raw(statement).await.unwrap().is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "no request of A waited on the lock within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    lock.rollback().await.unwrap();

    let body = tokio::time::timeout(Duration::from_secs(10), blocked).await.expect("an answer").unwrap();
    assert_eq!(first_code(&body), "INTERNAL", "{body}");
    assert_eq!(body["errors"][0]["message"], ensemble::error::INTERNAL_MESSAGE);
    let text = body.to_string().to_lowercase();
    for internal in ["terminat", "sqlstate", "sqlx", "connection", "57p01", "insert into", "select "] {
        assert!(!text.contains(internal), "the answer leaks {internal:?}: {body}");
    }
    let after = "mutation { createTeam(input: {name: \"After\"}) { name } }";
    assert_eq!(a.must(&alice, after, json!({})).await["createTeam"]["name"], "After", "the next request succeeds");
}

#[tokio::test]
async fn pooled_connections_the_database_closed_while_idle_are_not_handed_to_requests() {
    let Some(pg) = cluster::postgres() else { return };
    let (cluster, a, alice) = one_instance_with_a_team(&pg).await;

    // What a restart of PostgreSQL, or a proxy closing idle links, does to A's pool.
    let admin = sea_orm::Database::connect(&cluster.db.url).await.unwrap();
    let idle = "SELECT pg_terminate_backend(pid) AS terminated FROM pg_stat_activity \
                WHERE datname = current_database() AND state = 'idle' AND pid <> pg_backend_pid()";
    let terminated = admin.query_all_raw(Statement::from_string(sea_orm::DbBackend::Postgres, idle)).await.unwrap();
    assert!(!terminated.is_empty(), "A keeps idle connections in its pool");
    // Past the idle time after which a pooled connection is pinged before use (src/db.rs).
    tokio::time::sleep(Duration::from_millis(1_500)).await;

    let teams = a.must(&alice, "{ teams(first: 10) { nodes { name } } }", json!({})).await;
    assert_eq!(
        teams["teams"]["nodes"].as_array().map(Vec::len),
        Some(1),
        "a read after the connections closed: {teams}"
    );
    let created = "mutation { createTeam(input: {name: \"After the restart\"}) { name } }";
    assert_eq!(a.must(&alice, created, json!({})).await["createTeam"]["name"], "After the restart");
}

#[tokio::test]
async fn sigterm_closes_subscriptions_with_1001_and_clients_resume_on_another_instance() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (mut a, b) = (cluster.start("A").await, cluster.start("B").await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let team = create_team(&a, &alice).await;
    let mut ws = a.ws(&alice).await;
    live_team_activity(&mut ws, &a, &alice, &team).await;

    let terminated_at = Instant::now();
    a.terminate();
    assert_eq!(ws.closed().await, (1001, "Server shutting down".to_string()));
    assert!(terminated_at.elapsed() < Duration::from_secs(2), "closed after {:?}", terminated_at.elapsed());
    let status = a.exit_status(Duration::from_secs(5)).await;
    assert!(status.success(), "A exited with {status}");

    let mut ws = b.ws(&alice).await;
    live_team_activity(&mut ws, &b, &alice, &team).await;
    let run = b.run(&alice, &team, "after the move", true).await;
    let events = events_until_end(&mut ws, "teamActivity", &run).await;
    assert_eq!(milestones(&events), ["QUEUED", "ROUTED", "ATTEMPT_STARTED", "COMPLETED"]);
}

#[tokio::test]
async fn two_instances_starting_together_on_a_fresh_database_both_become_ready() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (mut a, mut b) = (cluster.spawn("A", &[]), cluster.spawn("B", &[]));
    let within = Duration::from_secs(60);
    tokio::join!(a.until_status("ready", within), b.until_status("ready", within));

    let db = sea_orm::Database::connect(&cluster.db.url).await.unwrap();
    let count = |sql: &str| {
        let statement = Statement::from_string(sea_orm::DbBackend::Postgres, sql.to_string());
        let db = &db;
        async move { db.query_one_raw(statement).await.unwrap().unwrap().try_get_by_index::<i64>(0).unwrap() }
    };
    let shipped = starters::all().len() as i64;
    assert_eq!(count("SELECT count(*) FROM templates WHERE is_starter").await, shipped, "each starter once");
    let versions =
        "SELECT count(*) FROM template_versions v JOIN templates t ON t.id = v.template_id WHERE t.is_starter";
    assert_eq!(count(versions).await, shipped, "with one version each");
    let categories = starters::categories().len() as i64;
    assert_eq!(count("SELECT count(*) FROM template_categories").await, categories, "each category once");
    let alice = cluster.token("user_alice", GlobalRole::Member);
    for on in [&a, &b] {
        let listed = on.must(&alice, "{ templateCategories { slug } }", json!({})).await;
        assert_eq!(listed["templateCategories"].as_array().map(Vec::len), Some(categories as usize), "{listed}");
    }
}

#[tokio::test]
async fn an_instance_starting_leaves_the_runs_of_a_live_instance_running() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let a = cluster.start("A").await;
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let team = create_team(&a, &alice).await;
    let run = a.run(&alice, &team, "take your time", false).await;
    assert_eq!(run["status"], "RUNNING", "{run}");

    let b = cluster.start("B").await;
    let stored = b.must(&alice, RUN, json!({"id": run["id"]})).await["run"].clone();
    assert_eq!(stored["status"], "RUNNING", "B's start did not fail A's run: {stored}");
    let cancel = "mutation($id: ID!) { cancelRun(id: $id) { status } }";
    assert_eq!(b.must(&alice, cancel, json!({"id": run["id"]})).await["cancelRun"]["status"], "CANCELLED");
}

#[tokio::test]
async fn a_daily_budget_holds_for_parallel_runs_spread_over_two_instances() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let model = StubModel::start(Duration::from_secs(2)).await;
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let budget = 120;
    let env = [
        ("ENSEMBLE_DAILY_TOKEN_BUDGET", "120"),
        ("ENSEMBLE_PROVIDER_STUB_BASE_URL", model.base_url.as_str()),
        ("ENSEMBLE_PROVIDER_STUB_API_KEY", "sk-stub"),
    ];
    let (a, b) = (cluster.start_with("A", &env).await, cluster.start_with("B", &env).await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "clerk", "model": "stub/steady", "maxTokens": 20}],
                      "retry": {"maxAttempts": 1, "retryOn": []}});
    let create = "mutation($s: JSON) { createTeam(input: {name: \"Support\", spec: $s}) { id } }";
    let team = a.must(&alice, create, json!({"s": spec})).await["createTeam"]["id"].as_str().unwrap().to_string();
    let estimate = "query($t: ID!) { estimateCost(teamId: $t, input: \"Where is my parcel?\") { worstCaseTokens } }";
    let worst = a.must(&alice, estimate, json!({"t": team})).await["estimateCost"]["worstCaseTokens"].as_i64().unwrap();
    let fit = (budget / worst) as usize;
    assert!((1..5).contains(&fit), "{fit} runs of {worst} tokens fit");

    let run = "mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"Where is my parcel?\"}) { status tokensIn tokensOut } }";
    let answers = futures_util::future::join_all((0..10).map(|i| {
        let on = if i % 2 == 0 { &a } else { &b };
        let (alice, team) = (alice.clone(), team.clone());
        async move { on.gql(&alice, run, json!({"t": team})).await.1 }
    }))
    .await;

    let ran: Vec<&Value> = answers.iter().filter(|body| body["data"]["runTeam"]["status"] == "SUCCEEDED").collect();
    let refused = answers.iter().filter(|body| first_code(body) == "QUOTA_EXCEEDED").count();
    assert_eq!((ran.len(), refused), (fit, 10 - fit), "{answers:?}");
    assert_eq!(model.calls(), fit, "the refused runs called no model");
    let spent: i64 = ran
        .iter()
        .map(|r| {
            r["data"]["runTeam"]["tokensIn"].as_i64().unwrap() + r["data"]["runTeam"]["tokensOut"].as_i64().unwrap()
        })
        .sum();
    assert_eq!(spent, fit as i64 * (stub_model::PROMPT_TOKENS as i64 + 20), "the provider's counts are the run's");
    assert!(spent <= budget, "{spent} tokens spent over a budget of {budget}");
    let usage = "{ resourceUsage { principals { kind today { tokens } } } }";
    let principals = b.must(&alice, usage, json!({})).await["resourceUsage"]["principals"].clone();
    assert_eq!(principals[0]["today"]["tokens"].as_i64(), Some(spent), "{principals}");
}

/// `user`'s membership of `team` as `role`, given by the owner `token` on `on`.
async fn add_member(on: &cluster::Instance, token: &str, team: &str, user: &str, role: &str) {
    let add = "mutation($t: ID!, $u: ID!, $r: TeamRole!) { addTeamMember(teamId: $t, input: {userId: $u, role: $r}) { role } }";
    on.must(token, add, json!({"t": team, "u": user, "r": role})).await;
}

#[tokio::test]
async fn a_member_removed_on_one_instance_loses_team_activity_on_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let (alice, bob) = (cluster.token("user_alice", GlobalRole::Member), cluster.token("user_bob", GlobalRole::Member));
    a.must(&bob, ME, json!({})).await;
    let team = create_team(&a, &alice).await;
    add_member(&a, &alice, &team, "user_bob", "VIEWER").await;
    let mut bob_ws = b.ws(&bob).await;
    live_team_activity(&mut bob_ws, &b, &alice, &team).await;

    let remove = "mutation($t: ID!, $u: ID!) { removeTeamMember(teamId: $t, userId: $u) { userId } }";
    a.must(&alice, remove, json!({"t": team, "u": "user_bob"})).await;
    // Answered on A: the subscription on B has ended already.
    let ended = tokio::time::timeout(Duration::from_millis(200), bob_ws.next_json()).await.expect("ended already");
    assert_eq!((ended["type"].as_str(), ended["id"].as_str()), (Some("error"), Some("activity")), "{ended}");
    assert_eq!(ended["payload"][0]["extensions"]["code"], "NOT_FOUND", "{ended}");

    // Runs on B reach a member's socket there, and never bob's.
    let mut alice_ws = b.ws(&alice).await;
    live_team_activity(&mut alice_ws, &b, &alice, &team).await;
    bob_ws.send(json!({"type": "ping", "payload": {"after": true}})).await;
    assert_eq!(bob_ws.next_json().await, json!({"type": "pong", "payload": {"after": true}}));
}

#[tokio::test]
async fn a_user_deleted_through_the_webhook_on_one_instance_loses_sockets_on_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let secret = clerk::secret();
    let env = [("CLERK_WEBHOOK_SECRET", secret.as_str())];
    let (a, b) = (cluster.start_with("A", &env).await, cluster.start_with("B", &env).await);
    let bob = cluster.token("user_bob", GlobalRole::Member);
    let (key, _) = create_key(&a, &bob).await;
    let mut sockets = [b.ws(&bob).await, b.ws(&key).await];

    let (status, answer) = clerk::deliver(&a, "msg_delete_bob", &clerk::user_deleted("user_bob")).await;
    assert_eq!(status, 200, "{answer}");
    for ws in &mut sockets {
        let (code, reason) = ws.closed().await;
        assert_eq!(code, 4403, "{reason}");
    }
}

#[tokio::test]
async fn a_key_revoked_on_one_instance_closes_its_sockets_on_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let (a, b) = (cluster.start("A").await, cluster.start("B").await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let (key, id) = create_key(&a, &alice).await;
    let mut key_ws = b.ws(&key).await;
    let mut token_ws = b.ws(&alice).await;

    a.must(&alice, "mutation($id: ID!) { revokeApiKey(id: $id) { revokedAt } }", json!({"id": id})).await;
    assert_eq!(key_ws.closed().await, (4403, "Forbidden: The API key has been revoked.".to_string()));
    token_ws.send(json!({"type": "ping"})).await;
    assert_eq!(token_ws.next_json().await, json!({"type": "pong"}), "the owner's token socket stays");
}

/// Signed Clerk webhook deliveries (Svix), as Clerk sends them.
mod clerk {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use serde_json::{Value, json};

    const KEY: &[u8] = b"webhook-key-webhook-key-webhook!";

    pub fn secret() -> String {
        format!("whsec_{}", STANDARD.encode(KEY))
    }

    pub fn user_deleted(id: &str) -> String {
        json!({"type": "user.deleted", "object": "event", "data": {"id": id, "deleted": true}}).to_string()
    }

    /// Delivers `body` to `on`, signed with the right key at this very second.
    pub async fn deliver(on: &super::cluster::Instance, id: &str, body: &str) -> (u16, Value) {
        crate::common::deliver_clerk(&reqwest::Client::new(), on.url("/webhooks/clerk"), KEY, id, body).await
    }
}

#[tokio::test]
async fn workflows_of_an_instance_killed_mid_step_are_each_completed_once_by_another() {
    let Some((pg, redis)) = cluster::postgres_and_redis() else { return };
    let cluster = Cluster::new(&pg, Some(&redis)).await;
    let env = [("ENSEMBLE_WORKFLOW_LEASE_SECS", "3"), ("ENSEMBLE_RATE_LIMIT_PER_MINUTE", "0")];
    let (mut a, b) = (cluster.start_with("A", &env).await, cluster.start_with("B", &env).await);
    let alice = cluster.token("user_alice", GlobalRole::Member);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "steady", "model": "local/slow-1500"}]});
    let create = "mutation($s: JSON) { createTeam(input: {name: \"Writers\", spec: $s}) { id } }";
    let team = a.must(&alice, create, json!({"s": spec})).await["createTeam"]["id"].as_str().unwrap().to_string();
    let steps: Vec<Value> = (1..=3)
        .map(|k| json!({"id": format!("s{k}"), "agent": "steady", "prompt": format!("Part {k} of {{{{ n }}}}")}))
        .collect();
    let variables = json!([{"name": "n", "type": "integer", "required": true}]);
    let template = "mutation($b: JSON!, $v: JSON!) { createTemplate(input: {kind: WORKFLOW, name: \"Parts\", body: $b, variables: $v}) { id } }";
    let made = a.must(&alice, template, json!({"b": {"steps": steps}, "v": variables})).await;
    let template = made["createTemplate"]["id"].as_str().unwrap().to_string();

    const START: &str =
        "mutation($t: ID!, $input: StartWorkflowInput!) { startWorkflow(teamId: $t, input: $input) { id } }";
    let started =
        futures_util::future::join_all(
            (0..50).map(|n| {
                let on = if n % 2 == 0 { &a } else { &b };
                let input = json!({"templateId": template, "variables": {"n": n}});
                let (alice, team) = (alice.clone(), team.clone());
                async move {
                    on.must(&alice, START, json!({"t": team, "input": input})).await["startWorkflow"]["id"].clone()
                }
            }),
        )
        .await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    a.kill();

    const LIST: &str = "query($t: ID!) { workflowRuns(teamId: $t, first: 100) { nodes { id status } } }";
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let nodes = b.must(&alice, LIST, json!({"t": team})).await["workflowRuns"]["nodes"].clone();
        let nodes = nodes.as_array().unwrap();
        assert_eq!(nodes.len(), 50, "{nodes:?}");
        if nodes.iter().all(|n| n["status"] == "SUCCEEDED") {
            break;
        }
        assert!(nodes.iter().all(|n| n["status"] == "RUNNING" || n["status"] == "SUCCEEDED"), "{nodes:?}");
        assert!(Instant::now() < deadline, "not every workflow completed within 90 s: {nodes:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Count the runs: B's own workflows ran each step once; A's ran each step at most twice,
    // and only the one step the kill cut short.
    let db = sea_orm::Database::connect(&cluster.db.url).await.unwrap();
    let count = |input: String| {
        let db = db.clone();
        async move {
            let query = Statement::from_sql_and_values(
                sea_orm::DbBackend::Postgres,
                "SELECT COUNT(*) AS n FROM runs WHERE input = $1",
                [input.into()],
            );
            db.query_one_raw(query).await.unwrap().unwrap().try_get::<i64>("", "n").unwrap()
        }
    };
    let mut rerun = 0;
    for (n, id) in started.iter().enumerate() {
        let mut runs = Vec::new();
        for k in 1..=3 {
            runs.push(count(format!("Part {k} of {n}")).await);
        }
        let extra: i64 = runs.iter().map(|r| r - 1).sum();
        assert!(runs.iter().all(|r| (1..=2).contains(r)), "workflow {n} ({id}): runs per step {runs:?}");
        if n % 2 == 1 {
            assert_eq!(extra, 0, "workflow {n} on the live instance ran each step once: {runs:?}");
        } else {
            assert!(extra <= 1, "workflow {n} ran again at most the step in flight: {runs:?}");
            rerun += extra;
        }
    }
    assert!(rerun > 0, "the kill cut steps short, and they ran again");
}
