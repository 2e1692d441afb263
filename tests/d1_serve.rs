//! `ensemble serve` on Cloudflare D1: the real server (`App::build`) over the bridge Worker on
//! local D1 signs in, writes through batches (teams, versions, runs, conversations, templates),
//! keeps one audit row per mutation in a chain that verifies, gives 20 concurrent edits versions
//! without gaps, refuses a second server on the same database (the audit lease), gives the
//! lease up when its start fails, says so on `/readyz` and in errors when the bridge goes away,
//! and sends a batch whose answer was lost (or replaced by a bare 503, or by D1's UNAVAILABLE)
//! again with its idempotency key, applied once. Its own binary: the D1 secret is read from the
//! environment.
//! Runs with `ENSEMBLE_TEST_D1=1` (a step of `.ci/run`), as tests/d1_reads.rs.

#[path = "support/d1_bridge.rs"]
mod d1_bridge;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use d1_bridge::{Bridge, secret_in_env, wrangler};
use ensemble::{config::Config, domain::GlobalRole, startup::App};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};

const UPDATE: &str = "mutation($id: ID!, $spec: JSON!) { updateTeam(id: $id, input: {spec: $spec}) { version } }";
const VERIFY: &str = "{ verifyAuditLog { ok checkedRows firstBrokenSeq problem } }";

struct Server {
    addr: std::net::SocketAddr,
    client: reqwest::Client,
    token: String,
    /// A member (not an admin): the teams it may read are the teams it is a member of.
    member: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(&self.token, query, variables).await
    }

    async fn gql_as(&self, token: &str, query: &str, variables: Value) -> Value {
        let body = json!({"query": query, "variables": variables});
        let url = format!("http://{}/graphql", self.addr);
        let response = self.client.post(url).bearer_auth(token).json(&body).send().await.unwrap();
        response.json().await.unwrap()
    }

    async fn must(&self, query: &str, variables: Value) -> Value {
        let body = self.gql(query, variables.clone()).await;
        assert!(body.get("errors").is_none(), "{query} with {variables}: {body}");
        body["data"].clone()
    }

    /// Stops the server as a signal would and waits for it to finish (releasing its lease).
    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        let stopped = tokio::time::timeout(Duration::from_secs(15), self.task).await;
        assert!(matches!(stopped, Ok(Ok(Ok(())))), "the server stops: {stopped:?}");
    }

    /// `ensemble_db_statements_total` from `/metrics`.
    async fn statements(&self) -> u64 {
        let text = self.client.get(format!("http://{}/metrics", self.addr)).send().await.unwrap().text().await.unwrap();
        let line = text.lines().find(|l| l.starts_with("ensemble_db_statements_total ")).expect("the counter");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    }

    async fn readyz(&self) -> (u16, Value) {
        let response = self.client.get(format!("http://{}/readyz", self.addr)).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }
}

fn config(url: &str, data: &std::path::Path) -> Config {
    let mut config = Config::from_env().expect("default config");
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.data_dir = data.to_path_buf();
    config.database_url = url.to_string();
    std::fs::create_dir_all(data).unwrap();
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-key.pem");
    std::fs::copy(key, data.join("dev-jwt-key.pem")).unwrap();
    config
}

async fn serve(url: &str, data: &std::path::Path) -> Server {
    start(config(url, data)).await
}

async fn start(config: Config) -> Server {
    let app = App::build(config).await.expect("the server starts on D1");
    let addr = app.local_addr();
    let dev = app.state().auth.dev.as_ref().expect("dev auth");
    let token = dev.sign("user_d1", Some("user_d1@example.com"), GlobalRole::Admin, Duration::from_secs(3600)).unwrap();
    let member = dev.sign("user_many", None, GlobalRole::Member, Duration::from_secs(3600)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(app.run_until(async {
        let _ = stopped.await;
    }));
    Server { addr, client: reqwest::Client::new(), token, member, stop: Some(stop), task }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_serves_on_d1_through_the_bridge() {
    let Some(wrangler) = wrangler() else { return };
    secret_in_env();
    let bridge = Bridge::start(&wrangler);
    let dir = tempfile::tempdir().unwrap();

    // A D1 database behind this release is refused, naming the files wrangler must apply.
    let d1 = ensemble::db::connect(&bridge.url, None).await.unwrap();
    let newest = "0015_write_path.sql";
    let forget = format!("DELETE FROM d1_migrations WHERE name = '{newest}'");
    d1.execute_unprepared(&forget).await.unwrap();
    let refused = App::build(config(&bridge.url, &dir.path().join("behind"))).await.map(drop).unwrap_err().to_string();
    assert!(refused.contains(newest) && refused.contains("wrangler d1 migrations apply DB --remote"), "{refused}");
    println!("a D1 behind this release: {refused}");
    let status = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble"))
        .args(["migrate", "status"])
        .env("DATABASE_URL", &bridge.url)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert!(
        listed.contains("applied  0001_identity.sql") && listed.contains(&format!("pending  {newest}")),
        "{listed}"
    );
    assert!(listed.contains("wrangler d1 migrations apply DB --remote"), "{listed}");
    let restore = format!("INSERT INTO d1_migrations (name) VALUES ('{newest}')");
    d1.execute_unprepared(&restore).await.unwrap();
    let seaql = "SELECT name FROM sqlite_master WHERE name = 'seaql_migrations'";
    let server = serve(&bridge.url, &dir.path().join("one")).await;
    let tables = d1.query_all_raw(Statement::from_string(DbBackend::Sqlite, seaql)).await.unwrap();
    assert!(tables.is_empty(), "sea-orm's migration table is not created on D1");

    let (status, ready) = server.readyz().await;
    assert_eq!((status, ready["status"].as_str()), (200, Some("ready")), "{ready}");
    let before = server.must(VERIFY, json!({})).await["verifyAuditLog"]["checkedRows"].as_i64().unwrap();

    let created = server.must("mutation { createTeam(input: {name: \"On D1\"}) { id version } }", json!({})).await;
    let team = created["createTeam"]["id"].as_str().unwrap().to_string();
    assert_eq!(created["createTeam"]["version"], 1);
    let spec = json!({"format": "ensemble.team/v1", "agents": [{"name": "echo", "model": "local/echo"}]});
    let respec = "mutation($id: ID!, $spec: JSON!) { updateTeam(id: $id, input: {spec: $spec}, expectedVersion: 1) \
                  { version } }";
    let statements = server.statements().await;
    let updated = server.must(respec, json!({"id": team, "spec": spec})).await;
    assert_eq!(updated["updateTeam"]["version"], 2);
    // Its batch's statements count too: the head's move and the update, each with its guard,
    // the version row and the audit row, and at least one read.
    let counted = server.statements().await - statements;
    assert!(counted >= 7, "{counted} statements counted for a change of a team's spec");
    let teams = server.must("{ teams(first: 10) { nodes { id name members { userId role } } } }", json!({})).await;
    let nodes = teams["teams"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 1, "{teams}");
    assert_eq!(nodes[0]["members"][0]["userId"], "user_d1", "{teams}");

    let run = server
        .must("mutation($t: ID!) { runTeam(teamId: $t, input: {content: \"hi\"}) { id } }", json!({"t": team}))
        .await;
    let run_id = run["runTeam"]["id"].as_str().unwrap().to_string();
    let mut status = Value::Null;
    for _ in 0..100 {
        status =
            server.must("query($id: ID!) { run(id: $id) { status } }", json!({"id": run_id})).await["run"]["status"]
                .clone();
        if status != "QUEUED" && status != "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "SUCCEEDED");

    let started = server
        .must("mutation($t: ID!) { startConversation(teamId: $t, title: \"Chat\") { id } }", json!({"t": team}))
        .await;
    let conversation = started["startConversation"]["id"].as_str().unwrap().to_string();
    server
        .must(
            "mutation($c: ID!) { sendMessage(conversationId: $c, content: \"hello\") { id } }",
            json!({"c": conversation}),
        )
        .await;
    let mut count = 0;
    for _ in 0..100 {
        let shown = server
            .must("query($c: ID!) { conversation(id: $c) { messages { role content } } }", json!({"c": conversation}))
            .await;
        count = shown["conversation"]["messages"].as_array().map_or(0, Vec::len);
        if count >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(count >= 2, "the question and the answer: {count}");

    let template = json!({"kind": "TEAM", "name": "Helpdesk", "body": spec});
    let created = server
        .must("mutation($input: TemplateInput!) { createTemplate(input: $input) { id } }", json!({"input": template}))
        .await;
    let instantiate =
        "mutation($id: ID!, $input: InstantiateTemplateInput!) { instantiateTemplate(id: $id, input: $input) { id } }";
    server.must(instantiate, json!({"id": created["createTemplate"]["id"], "input": {"name": "Desk"}})).await;

    let verified = server.must(VERIFY, json!({})).await["verifyAuditLog"].clone();
    assert_eq!(verified["ok"], true, "{verified}");
    let after = verified["checkedRows"].as_i64().unwrap();
    println!("audit rows: {before} before, {after} after the mutations");
    assert_eq!(after, before + 4, "one row per audited mutation (team, version, template, instance): {verified}");

    // 20 edits at once: each gets its own version, none is lost, the chain still verifies.
    let edit = |prompt: String| json!({"format": "ensemble.team/v1", "agents": [{"name": "echo", "model": "local/echo", "systemPrompt": prompt}]});
    let edits = (0..20).map(|i| server.gql(UPDATE, json!({"id": team, "spec": edit(format!("Edit {i}"))})));
    let answers = futures_util::future::join_all(edits).await;
    let mut versions: Vec<i64> =
        answers.iter().map(|a| a["data"]["updateTeam"]["version"].as_i64().unwrap_or_else(|| panic!("{a}"))).collect();
    versions.sort_unstable();
    assert_eq!(versions, (3..=22).collect::<Vec<_>>(), "no gaps, no repeats");
    let verified = server.must(VERIFY, json!({})).await["verifyAuditLog"].clone();
    assert_eq!(verified["ok"], true, "{verified}");
    assert_eq!(verified["checkedRows"].as_i64().unwrap(), after + 20, "one audit row per edit: {verified}");

    // A second server on the same D1 is refused while the first holds the audit lease.
    let refused = App::build(config(&bridge.url, &dir.path().join("two"))).await.map(drop).unwrap_err().to_string();
    assert!(refused.contains("holds its audit lease until"), "{refused}");
    assert!(refused.contains(&format!(" pid {} (", std::process::id())), "the holder is named: {refused}");
    println!("a second server: {refused}");

    // Stopped, the first server releases the lease: the next one starts at once.
    server.stop().await;
    let server = serve(&bridge.url, &dir.path().join("three")).await;

    // A member of more teams than D1 binds parameters in one statement: the figures and error
    // groups across its teams are read with a subquery, not a list of its teams.
    let me = server.gql_as(&server.member, "{ me { id } }", json!({})).await;
    assert_eq!(me["data"]["me"]["id"], "user_many", "{me}");
    let many = "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 120)";
    let at = "'2026-01-01T00:00:00+00:00'";
    d1.execute_unprepared(&format!(
        "INSERT INTO teams (id, owner_id, name, slug, visibility, spec, version, created_at, updated_at) {many} \
         SELECT 'team_many_' || i, 'user_many', 'Many ' || i, 'many-' || i, 'private', '{{}}', 1, {at}, {at} FROM n"
    ))
    .await
    .unwrap();
    d1.execute_unprepared(&format!(
        "INSERT INTO team_members (team_id, user_id, role, created_at) {many} \
         SELECT 'team_many_' || i, 'user_many', 'owner', {at} FROM n"
    ))
    .await
    .unwrap();
    for query in [
        "{ errorGroups(first: 5) { nodes { fingerprint } } }",
        "{ metricsSeries(metric: RUNS, bucket: DAY) { points { value } } }",
    ] {
        let answer = server.gql_as(&server.member, query, json!({})).await;
        assert!(answer.get("errors").is_none(), "{query}: {answer}");
    }

    // The bridge goes away: /readyz says so, and a mutation answers INTERNAL saying the
    // database cannot be reached.
    drop(bridge);
    let (status, ready) = server.readyz().await;
    assert_eq!(status, 503, "{ready}");
    let reason = ready["reason"].as_str().unwrap_or_default();
    assert!(reason.starts_with("cannot reach the D1 bridge at"), "{ready}");
    println!("/readyz with the bridge down: {reason}");
    let failed = server.gql(UPDATE, json!({"id": team, "spec": edit("Offline".into())})).await;
    assert_eq!(failed["errors"][0]["extensions"]["code"], "INTERNAL", "{failed}");
    let message = failed["errors"][0]["message"].as_str().unwrap_or_default();
    assert!(message.starts_with("The database cannot be reached right now; try again"), "{failed}");
    assert!(!message.contains("127.0.0.1"), "no internals in the answer: {failed}");
    server.stop().await;
}

/// A loopback HTTP proxy in front of the bridge that relays every request and its answer, each
/// request on a connection of its own to the bridge; once armed, it relays the next `/batch`,
/// waits until the bridge has answered (the batch is applied) and loses the answer: it closes
/// the caller's connection, as a network that fails on the way back would, answers a bare 503
/// page in its place, as wrangler dev now and then does, or the bridge's 503 UNAVAILABLE, as D1
/// answers when its connection was lost while it ran the batch.
struct LosingProxy {
    url: String,
    armed: Arc<Mutex<Option<Loss>>>,
    /// `/batch` requests relayed, and answers lost.
    batches: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
}

/// How the proxy loses the answer to the next `/batch`.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Connection,
    Bare503,
    Unavailable,
}

impl LosingProxy {
    async fn start(bridge: &str) -> Self {
        let upstream = bridge.strip_prefix("d1+").unwrap().to_string();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let proxy = Self {
            url: format!("d1+http://{}", listener.local_addr().unwrap()),
            armed: Arc::default(),
            batches: Arc::default(),
            lost: Arc::default(),
        };
        let (armed, batches, lost) = (proxy.armed.clone(), proxy.batches.clone(), proxy.lost.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            while let Ok((socket, _)) = listener.accept().await {
                let relay = relay(socket, upstream.clone(), http.clone(), armed.clone(), batches.clone(), lost.clone());
                tokio::spawn(relay);
            }
        });
        proxy
    }
}

/// Relays the requests of one caller's connection (HTTP/1.1, bodies with a Content-Length).
async fn relay(
    mut socket: tokio::net::TcpStream,
    upstream: String,
    http: reqwest::Client,
    armed: Arc<Mutex<Option<Loss>>>,
    batches: Arc<AtomicUsize>,
    lost: Arc<AtomicUsize>,
) {
    use tokio::io::AsyncWriteExt;
    let mut buffer = Vec::new();
    loop {
        let (head_end, length) = loop {
            if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|at| at + 4) {
                let head = String::from_utf8_lossy(&buffer[..end]).to_lowercase();
                let length = head
                    .lines()
                    .find_map(|line| line.strip_prefix("content-length:"))
                    .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                break (end, length);
            }
            if !read_more(&mut socket, &mut buffer).await {
                return;
            }
        };
        while buffer.len() < head_end + length {
            if !read_more(&mut socket, &mut buffer).await {
                return;
            }
        }
        let head = String::from_utf8(buffer[..head_end].to_vec()).unwrap();
        let body = buffer[head_end..head_end + length].to_vec();
        buffer.drain(..head_end + length);
        let mut lines = head.lines();
        let path = lines.next().unwrap().split(' ').nth(1).unwrap().to_string();
        let mut request = http.post(format!("{upstream}{path}")).body(body);
        for (name, value) in lines.filter_map(|line| line.split_once(": ")) {
            if !["host", "content-length", "connection"].contains(&name.to_lowercase().as_str()) {
                request = request.header(name, value);
            }
        }
        // The bridge gone (the test ending): the caller's connection closes.
        let Ok(answer) = request.send().await else { return };
        let (mut status, mut content_type) = (answer.status().as_u16(), "application/json");
        let Ok(mut answer) = answer.bytes().await.map(|b| b.to_vec()) else { return };
        if path.ends_with("/batch") {
            batches.fetch_add(1, Ordering::SeqCst);
            match armed.lock().unwrap().take() {
                None => {}
                Some(Loss::Connection) => {
                    lost.fetch_add(1, Ordering::SeqCst);
                    return;
                }
                Some(Loss::Bare503) => {
                    lost.fetch_add(1, Ordering::SeqCst);
                    (status, content_type) = (503, "text/plain");
                    answer = b"Service Unavailable".to_vec();
                }
                Some(Loss::Unavailable) => {
                    lost.fetch_add(1, Ordering::SeqCst);
                    status = 503;
                    let error = json!({"error": {"code": "UNAVAILABLE", "message": "Network connection lost."}});
                    answer = error.to_string().into_bytes();
                }
            }
        }
        let reply =
            format!("HTTP/1.1 {status} X\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n\r\n", answer.len());
        if socket.write_all(reply.as_bytes()).await.is_err() || socket.write_all(&answer).await.is_err() {
            return;
        }
    }
}

/// Appends what the caller sent next to `buffer`; false once the connection is closed.
async fn read_more(socket: &mut tokio::net::TcpStream, buffer: &mut Vec<u8>) -> bool {
    use tokio::io::AsyncReadExt;
    let mut chunk = [0; 8192];
    match socket.read(&mut chunk).await {
        Ok(0) | Err(_) => false,
        Ok(n) => {
            buffer.extend_from_slice(&chunk[..n]);
            true
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mutation_whose_batch_answer_is_lost_is_sent_again_and_applied_once() {
    let Some(wrangler) = wrangler() else { return };
    secret_in_env();
    let bridge = Bridge::start(&wrangler);
    let proxy = LosingProxy::start(&bridge.url).await;
    let dir = tempfile::tempdir().unwrap();
    // Nothing else writes meanwhile: no usage flush, and the lease is renewed only after 20 s.
    let mut quiet = config(&proxy.url, dir.path());
    quiet.usage_flush_secs = 3600;
    let server = start(quiet).await;
    let created = server.must("mutation { createTeam(input: {name: \"Lost\"}) { id } }", json!({})).await;
    let team = created["createTeam"]["id"].as_str().unwrap().to_string();
    let d1 = ensemble::db::connect(&bridge.url, None).await.unwrap();
    let versions = || {
        let (d1, sql) = (d1.clone(), format!("SELECT count(*) FROM team_versions WHERE team_id = '{team}'"));
        async move {
            let row = d1.query_one_raw(Statement::from_string(DbBackend::Sqlite, sql)).await.unwrap().unwrap();
            row.try_get_by_index::<i64>(0).unwrap()
        }
    };

    for (loss, version) in [(Loss::Connection, 2), (Loss::Bare503, 3), (Loss::Unavailable, 4)] {
        let audited = server.must(VERIFY, json!({})).await["verifyAuditLog"]["checkedRows"].as_i64().unwrap();
        let (sent, lost) = (proxy.batches.load(Ordering::SeqCst), proxy.lost.load(Ordering::SeqCst));
        *proxy.armed.lock().unwrap() = Some(loss);
        let spec =
            json!({"format": "ensemble.team/v1", "agents": [{"name": format!("v{version}"), "model": "local/echo"}]});
        let updated = server.must(UPDATE, json!({"id": team, "spec": spec})).await;

        assert_eq!(updated["updateTeam"]["version"], version, "{loss:?}: the mutation succeeds: {updated}");
        assert_eq!(proxy.lost.load(Ordering::SeqCst) - lost, 1, "{loss:?}: the first answer to its batch was lost");
        assert_eq!(proxy.batches.load(Ordering::SeqCst) - sent, 2, "{loss:?}: the batch, then the same batch again");
        assert_eq!(versions().await, version, "{loss:?}: applied once");
        let verified = server.must(VERIFY, json!({})).await["verifyAuditLog"].clone();
        assert_eq!(
            (verified["ok"].clone(), verified["checkedRows"].as_i64()),
            (json!(true), Some(audited + 1)),
            "{loss:?}: {verified}"
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_that_fails_after_claiming_the_lease_gives_it_up() {
    let Some(wrangler) = wrangler() else { return };
    secret_in_env();
    let bridge = Bridge::start(&wrangler);
    let dir = tempfile::tempdir().unwrap();
    let d1 = ensemble::db::connect(&bridge.url, None).await.unwrap();
    // A price that cannot be read: start-up fails on it after claiming the audit lease.
    let unreadable = "INSERT INTO model_prices (model, input_usd_per_mtok, output_usd_per_mtok, updated_at) \
                      VALUES ('broken/model', 'not a number', 1, '2026-12-01T00:00:00+00:00')";
    d1.execute_unprepared(unreadable).await.unwrap();
    let failed = App::build(config(&bridge.url, &dir.path().join("one"))).await.map(drop).unwrap_err().to_string();
    assert!(!failed.contains("audit lease"), "it failed on the price, not on the lease: {failed}");
    let holder = "SELECT holder FROM leases WHERE name = 'audit'";
    let row = d1.query_one_raw(Statement::from_string(DbBackend::Sqlite, holder)).await.unwrap().expect("claimed once");
    assert_eq!(row.try_get_by_index::<Option<String>>(0).unwrap(), None, "given up");

    d1.execute_unprepared("DELETE FROM model_prices WHERE model = 'broken/model'").await.unwrap();
    let server = serve(&bridge.url, &dir.path().join("two")).await;
    server.stop().await;
}

#[test]
fn migrating_d1_is_left_to_wrangler() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble"))
        .args(["migrate", "up"])
        .env("DATABASE_URL", "d1+https://bridge.example.dev")
        .env(ensemble::db::d1::SECRET_ENV, d1_bridge::SECRET)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("wrangler d1 migrations apply DB --remote"), "{stderr}");
}
