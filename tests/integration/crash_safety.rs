//! The real binary killed with SIGKILL in the middle of a burst of writes: once restarted on
//! the same SQLite file, the file passes `integrity_check`, every write it acknowledged is there
//! whole, and the runs the kill cut short are failed as interrupted. Killed in the middle of a
//! workflow, it resumes the workflow from its last committed step once restarted.

use crate::common;

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{PG_ENV, served::ServedLog};
use entity::{runs, team_members, team_versions, teams};
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, PaginatorTrait, QueryFilter, Statement};
use serde_json::{Value, json};

/// Clients writing at once during the burst.
const CLIENTS: usize = 8;
/// Acknowledged writes to wait for before the kill.
const ACKNOWLEDGED_BEFORE_KILL: usize = 40;

const CREATE: &str = "mutation($n: String!, $spec: JSON) { createTeam(input: {name: $n, spec: $spec}) { id } }";
const START_RUN: &str =
    "mutation($team: ID!) { runTeam(teamId: $team, input: {content: \"take your time\"}, wait: false) { id status } }";
const RUN: &str = "query($id: ID!) { run(id: $id) { status errorCode } }";

/// `ensemble serve` on a SQLite file, killed when dropped.
struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    /// Starts the binary on `database_url` and waits until `/readyz` says it is ready.
    async fn start(data_dir: &Path, database_url: &str) -> Self {
        Self::start_with(data_dir, database_url, &[]).await
    }

    /// As `start`, with more environment variables.
    async fn start_with(data_dir: &Path, database_url: &str, env: &[(&str, &str)]) -> Self {
        let mut child = common::ensemble()
            .arg("serve")
            .envs(env.iter().copied())
            .env("DATABASE_URL", database_url)
            .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
            .env("ENSEMBLE_DATA_DIR", data_dir)
            .env("ENSEMBLE_RATE_LIMIT_PER_MINUTE", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let addr = ServedLog::follow(&mut child).listening(&mut child, Duration::from_secs(60)).await;
        let mut server = Self { child, addr };
        server.wait_until_ready().await;
        server
    }

    async fn wait_until_ready(&mut self) {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            assert!(self.child.try_wait().unwrap().is_none(), "the server exited while starting");
            let ready = client.get(self.url("/readyz")).send().await;
            if ready.is_ok_and(|r| r.status() == 200) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server was not ready within 60 s");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM, then waits for the process to exit (at most 30 s).
    fn terminate(&mut self) {
        let sent = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "still running 30 s after SIGTERM");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no shutdown, no flush, no chance to finish anything.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A dev token for `user`, as `ensemble token` prints it.
fn token(data_dir: &Path, user: &str) -> String {
    let output = common::ensemble()
        .args(["token", "--user", user, "--ttl", "1h"])
        .env("ENSEMBLE_DATA_DIR", data_dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_string()
}

/// POSTs one operation; `None` when no answer came (the server is gone).
async fn send(client: &reqwest::Client, url: &str, token: &str, query: &str, variables: Value) -> Option<Value> {
    let body = json!({"query": query, "variables": variables});
    let response = client.post(url).bearer_auth(token).json(&body).send().await.ok()?;
    response.json().await.ok()
}

/// What one client of the burst saw: the teams whose creation was acknowledged, and any answer
/// that was an error instead.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<String>,
    refused: Vec<Value>,
}

/// Creates teams one after another until the server stops answering.
async fn create_until_killed(url: String, token: String, client_no: usize, count: Arc<AtomicUsize>) -> Seen {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut seen = Seen::default();
    for n in 0.. {
        let variables = json!({"n": format!("Crash {client_no}-{n}")});
        let Some(answer) = send(&client, &url, &token, CREATE, variables).await else {
            break;
        };
        match answer["data"]["createTeam"]["id"].as_str() {
            Some(id) => {
                seen.acknowledged.push(id.to_string());
                count.fetch_add(1, Ordering::SeqCst);
            }
            None => seen.refused.push(answer),
        }
    }
    seen
}

/// Waits until `count` reaches `target`, or 60 s.
async fn wait_for(count: &AtomicUsize, target: usize) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while count.load(Ordering::SeqCst) < target && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Starts runs of a model that answers after ten minutes; answers their ids.
async fn start_slow_runs(server: &Server, token: &str, how_many: usize) -> Vec<String> {
    let client = reqwest::Client::new();
    let url = server.url("/graphql");
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "sloth", "model": "local/slow-600000"}],
                      "routing": {"default": "sloth"}});
    let created = send(&client, &url, token, CREATE, json!({"n": "Slow", "spec": spec})).await.unwrap();
    let team = created["data"]["createTeam"]["id"].clone();
    let mut ids = Vec::new();
    for _ in 0..how_many {
        let started = send(&client, &url, token, START_RUN, json!({"team": team})).await.unwrap();
        let run = &started["data"]["runTeam"];
        assert!(matches!(run["status"].as_str(), Some("QUEUED" | "RUNNING")), "{started}");
        ids.push(run["id"].as_str().unwrap().to_string());
    }
    ids
}

async fn integrity_check(db: &sea_orm::DatabaseConnection) -> String {
    let statement = Statement::from_string(sea_orm::DbBackend::Sqlite, "PRAGMA integrity_check");
    let row = db.query_one_raw(statement).await.unwrap().unwrap();
    row.try_get_by_index::<String>(0).unwrap()
}

#[tokio::test]
async fn a_server_killed_mid_burst_keeps_every_write_it_acknowledged() {
    if std::env::var(PG_ENV).is_ok_and(|url| !url.is_empty()) {
        println!("skipped: killing the server mid-write is a SQLite file test; PostgreSQL keeps its own WAL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    common::install_dev_key(&data);
    let database_url = format!("sqlite://{}/crash.db", dir.path().display());
    let mut server = Server::start(&data, &database_url).await;
    let alice = token(&data, "user_alice");
    let interrupted_runs = start_slow_runs(&server, &alice, 3).await;

    let count = Arc::new(AtomicUsize::new(0));
    let burst: Vec<_> = (0..CLIENTS)
        .map(|client_no| {
            tokio::spawn(create_until_killed(server.url("/graphql"), alice.clone(), client_no, count.clone()))
        })
        .collect();
    wait_for(&count, ACKNOWLEDGED_BEFORE_KILL).await;
    server.kill();
    let mut acknowledged = Vec::new();
    for client in burst {
        let seen = client.await.unwrap();
        assert!(seen.refused.is_empty(), "a write was refused during the burst: {}", seen.refused[0]);
        acknowledged.extend(seen.acknowledged);
    }
    assert!(acknowledged.len() >= ACKNOWLEDGED_BEFORE_KILL, "only {} writes acknowledged", acknowledged.len());

    let server = Server::start(&data, &database_url).await;
    let db = sea_orm::Database::connect(&database_url).await.unwrap();
    assert_eq!(integrity_check(&db).await, "ok");
    let total = acknowledged.len() as u64;
    let stored = teams::Entity::find().filter(teams::Column::Id.is_in(acknowledged.clone())).count(&db).await.unwrap();
    assert_eq!(stored, total, "every acknowledged team is stored");
    let all = teams::Entity::find().count(&db).await.unwrap();
    println!("{total} teams acknowledged before the kill, {all} stored");
    let first_versions = team_versions::Entity::find()
        .filter(team_versions::Column::TeamId.is_in(acknowledged.clone()))
        .filter(team_versions::Column::Version.eq(1))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(first_versions, total, "with its first version");
    let owners = team_members::Entity::find()
        .filter(team_members::Column::TeamId.is_in(acknowledged))
        .filter(team_members::Column::UserId.eq("user_alice"))
        .filter(team_members::Column::Role.eq("owner"))
        .count(&db)
        .await
        .unwrap();
    assert_eq!(owners, total, "and its owner");

    let client = reqwest::Client::new();
    for id in &interrupted_runs {
        let answer = send(&client, &server.url("/graphql"), &alice, RUN, json!({"id": id})).await.unwrap();
        assert_eq!(answer["data"]["run"], json!({"status": "FAILED", "errorCode": "interrupted"}), "{answer}");
    }
    let leftover = runs::Entity::find().filter(runs::Column::Status.is_in(["queued", "running"])).count(&db).await;
    assert_eq!(leftover.unwrap(), 0, "no run is left running by the crash");
}

const START_WORKFLOW: &str = "mutation($team: ID!, $input: StartWorkflowInput!) {
    startWorkflow(teamId: $team, input: $input) { id status } }";
const WORKFLOW_RUN: &str =
    "query($id: ID!) { workflowRun(id: $id) { status steps { id status attempts output run { id } } } }";

#[tokio::test]
async fn a_workflow_killed_mid_step_resumes_from_its_last_committed_step() {
    if std::env::var(PG_ENV).is_ok_and(|url| !url.is_empty()) {
        println!("skipped: the binary is killed on a SQLite file here; scale_out covers PostgreSQL");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    common::install_dev_key(&data);
    let database_url = format!("sqlite://{}/workflow.db", dir.path().display());
    let lease = [("ENSEMBLE_WORKFLOW_LEASE_SECS", "2")];
    let mut server = Server::start_with(&data, &database_url, &lease).await;
    let alice = token(&data, "user_alice");
    let client = reqwest::Client::new();
    let url = server.url("/graphql");
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "slow", "model": "local/slow-2000"}]});
    let created = send(&client, &url, &alice, CREATE, json!({"n": "Steady", "spec": spec})).await.unwrap();
    let team = created["data"]["createTeam"]["id"].as_str().unwrap().to_string();
    let steps: Vec<Value> =
        (1..=4).map(|n| json!({"id": format!("s{n}"), "agent": "slow", "prompt": format!("Part {n}")})).collect();
    let create =
        "mutation($body: JSON!) { createTemplate(input: {kind: WORKFLOW, name: \"Four parts\", body: $body}) { id } }";
    let template = send(&client, &url, &alice, create, json!({"body": {"steps": steps}})).await.unwrap();
    let template =
        template["data"]["createTemplate"]["id"].as_str().unwrap_or_else(|| panic!("{template}")).to_string();
    let input = json!({"templateId": template});
    let started = send(&client, &url, &alice, START_WORKFLOW, json!({"team": team, "input": input})).await.unwrap();
    let id = started["data"]["startWorkflow"]["id"].as_str().unwrap_or_else(|| panic!("{started}")).to_string();

    // Killed while the second step runs, the first one committed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let run = send(&client, &url, &alice, WORKFLOW_RUN, json!({"id": id})).await.unwrap();
        let steps = &run["data"]["workflowRun"]["steps"];
        if steps[0]["status"] == "SUCCEEDED" && steps[1]["status"] == "RUNNING" {
            break;
        }
        assert!(Instant::now() < deadline, "the second step never ran: {run}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    server.kill();

    let server = Server::start_with(&data, &database_url, &lease).await;
    let url = server.url("/graphql");
    let deadline = Instant::now() + Duration::from_secs(60);
    let done = loop {
        let run = send(&client, &url, &alice, WORKFLOW_RUN, json!({"id": id})).await.unwrap();
        let workflow = run["data"]["workflowRun"].clone();
        if workflow["status"] != "RUNNING" {
            break workflow;
        }
        assert!(Instant::now() < deadline, "not resumed and finished within 60 s: {run}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    let attempts: Vec<i64> =
        done["steps"].as_array().unwrap().iter().map(|s| s["attempts"].as_i64().unwrap()).collect();
    assert_eq!(attempts, [1, 2, 1, 1], "the committed step is not run again, the one in flight is: {done}");

    // Count the runs: one per step, and one more for the step the kill cut short.
    let db = sea_orm::Database::connect(&database_url).await.unwrap();
    for (n, expected) in [(1, 1), (2, 2), (3, 1), (4, 1)] {
        let runs = runs::Entity::find().filter(runs::Column::Input.eq(format!("Part {n}"))).all(&db).await.unwrap();
        assert_eq!(runs.len(), expected, "runs of step {n}: {runs:?}");
    }
    let interrupted = runs::Entity::find().filter(runs::Column::ErrorCode.eq("interrupted")).count(&db).await.unwrap();
    assert_eq!(interrupted, 1, "the run the kill cut short is failed as interrupted");
    let resumed_run = &done["steps"][1]["run"]["id"];
    let second = runs::Entity::find_by_id(resumed_run.as_str().unwrap()).one(&db).await.unwrap().unwrap();
    assert_eq!(second.status.to_string(), "succeeded", "the step's latest run is the one it shows");
}

#[tokio::test]
async fn a_workflow_of_a_server_stopped_with_sigterm_is_resumed_at_once_by_the_next() {
    if std::env::var(PG_ENV).is_ok_and(|url| !url.is_empty()) {
        println!("skipped: the binary is stopped on a SQLite file here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let data: PathBuf = dir.path().join("data");
    common::install_dev_key(&data);
    let database_url = format!("sqlite://{}/handover.db", dir.path().display());
    // The default lease, 30 s: only a lease given up at SIGTERM lets the next server resume sooner.
    let mut server = Server::start(&data, &database_url).await;
    let alice = token(&data, "user_alice");
    let client = reqwest::Client::new();
    let url = server.url("/graphql");
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "slow", "model": "local/slow-2000"}]});
    let created = send(&client, &url, &alice, CREATE, json!({"n": "Handover", "spec": spec})).await.unwrap();
    let team = created["data"]["createTeam"]["id"].as_str().unwrap().to_string();
    let steps =
        json!([{"id": "one", "agent": "slow", "prompt": "One"}, {"id": "two", "agent": "slow", "prompt": "Two"}]);
    let create =
        "mutation($body: JSON!) { createTemplate(input: {kind: WORKFLOW, name: \"Two parts\", body: $body}) { id } }";
    let template = send(&client, &url, &alice, create, json!({"body": {"steps": steps}})).await.unwrap();
    let input = json!({"templateId": template["data"]["createTemplate"]["id"]});
    let started = send(&client, &url, &alice, START_WORKFLOW, json!({"team": team, "input": input})).await.unwrap();
    let id = started["data"]["startWorkflow"]["id"].as_str().unwrap_or_else(|| panic!("{started}")).to_string();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.terminate();

    let restarted = Instant::now();
    let server = Server::start(&data, &database_url).await;
    let url = server.url("/graphql");
    let done = loop {
        let run = send(&client, &url, &alice, WORKFLOW_RUN, json!({"id": id})).await.unwrap();
        let workflow = run["data"]["workflowRun"].clone();
        if workflow["status"] != "RUNNING" {
            break workflow;
        }
        assert!(restarted.elapsed() < Duration::from_secs(20), "not resumed well before the 30 s lease ran out: {run}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(done["status"], "SUCCEEDED", "{done}");
    assert_eq!(done["steps"][0]["attempts"], 2, "the step in flight at the stop ran again: {done}");
}
