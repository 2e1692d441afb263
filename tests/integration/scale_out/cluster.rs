//! A cluster for the scale-out tests: real `ensemble serve` processes sharing one fresh
//! PostgreSQL database, one Redis namespace and one data folder (a token minted once is valid on
//! every instance), a private `redis-server` to kill and restart, and the client calls the tests
//! make over HTTP and websockets.

use std::{
    net::SocketAddr,
    process::{Child, Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

use ensemble::{auth::dev::DevIssuer, domain::GlobalRole};
use serde_json::{Value, json};

use crate::common::{self, PG_ENV, PgDatabase, WsClient, served::ServedLog};

pub const REDIS_ENV: &str = "ENSEMBLE_TEST_REDIS_URL";

/// Log lines of an instance shown when a test fails.
const LOG_TAIL: usize = 40;

/// The PostgreSQL admin URL of `ENSEMBLE_TEST_DATABASE_URL`, or `None` after saying why not.
pub fn postgres() -> Option<String> {
    let url = std::env::var(PG_ENV).ok().filter(|url| !url.is_empty());
    if url.is_none() {
        eprintln!("skipped: set {PG_ENV} to a PostgreSQL admin URL to run this test");
    }
    url
}

/// The PostgreSQL admin URL and the Redis URL, or `None` after saying which is missing.
pub fn postgres_and_redis() -> Option<(String, String)> {
    let redis = std::env::var(REDIS_ENV).ok().filter(|url| !url.is_empty());
    match (postgres(), redis) {
        (Some(pg), Some(redis)) => Some((pg, redis)),
        (Some(_), None) => {
            eprintln!("skipped: set {REDIS_ENV} (e.g. redis://127.0.0.1:6379) to run the scale-out tests");
            None
        }
        (None, _) => None,
    }
}

/// One database, one Redis namespace, one data folder: what instances that act as one share.
pub struct Cluster {
    pub db: PgDatabase,
    redis_url: Option<String>,
    namespace: String,
    data: tempfile::TempDir,
    issuer: DevIssuer,
}

impl Cluster {
    /// A fresh database on `pg_admin`; instances use Redis at `redis_url` when given.
    pub async fn new(pg_admin: &str, redis_url: Option<&str>) -> Self {
        let data = tempfile::tempdir().unwrap();
        common::install_dev_key(data.path());
        let issuer = DevIssuer::from_pem(&common::fixture("dev-key.pem")).expect("the dev key loads");
        Self {
            db: PgDatabase::create(pg_admin).await,
            redis_url: redis_url.map(str::to_string),
            namespace: format!("ensemble-test-{}", uuid::Uuid::new_v4().simple()),
            data,
            issuer,
        }
    }

    /// Starts an instance and waits until `/readyz` says `ready`.
    pub async fn start(&self, name: &str) -> Instance {
        self.start_with(name, &[]).await
    }

    /// Starts an instance with `env` and waits until `/readyz` says `ready`.
    pub async fn start_with(&self, name: &str, env: &[(&str, &str)]) -> Instance {
        let mut instance = self.spawn(name, env);
        instance.until_status("ready", Duration::from_secs(60)).await;
        instance
    }

    /// Starts `ensemble serve` with the cluster's settings and `env` on top; does not wait.
    pub fn spawn(&self, name: &str, env: &[(&str, &str)]) -> Instance {
        let mut command = common::ensemble();
        command
            .arg("serve")
            .env("DATABASE_URL", &self.db.url)
            .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
            .env("ENSEMBLE_DATA_DIR", self.data.path())
            .env("ENSEMBLE_DB_POOL_SIZE", "4")
            .env("ENSEMBLE_REDIS_NAMESPACE", &self.namespace)
            .env_remove("REDIS_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(url) = &self.redis_url {
            command.env("REDIS_URL", url);
        }
        command.envs(env.iter().copied());
        let mut child = command.spawn().expect("the ensemble binary starts");
        let log = ServedLog::follow(&mut child);
        Instance { name: name.to_string(), child, addr: OnceLock::new(), log, client: reqwest::Client::new() }
    }

    /// A dev-issuer token for `user`, valid for an hour on every instance.
    pub fn token(&self, user: &str, role: GlobalRole) -> String {
        let email = format!("{user}@example.com");
        self.issuer.sign(user, Some(&email), role, Duration::from_secs(3600)).unwrap()
    }
}

/// One running `ensemble serve`, killed when dropped; its log is printed if the test failed.
pub struct Instance {
    pub name: String,
    child: Child,
    /// Where it listens, once its ready line has said.
    addr: OnceLock<SocketAddr>,
    log: ServedLog,
    client: reqwest::Client,
}

impl Instance {
    /// Where it listens, once it has said (`None` before).
    fn listening(&self) -> Option<SocketAddr> {
        if let Some(addr) = self.addr.get() {
            return Some(*addr);
        }
        let addr = self.log.address()?;
        Some(*self.addr.get_or_init(|| addr))
    }

    pub fn addr(&self) -> SocketAddr {
        self.listening().unwrap_or_else(|| panic!("{} has not said where it listens yet", self.name))
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr())
    }

    /// `/readyz`: its status code and JSON answer; `None` while nothing listens.
    pub async fn readiness(&self) -> Option<(u16, Value)> {
        let url = format!("http://{}/readyz", self.listening()?);
        let response = self.client.get(url).send().await.ok()?;
        let status = response.status().as_u16();
        Some((status, response.json().await.ok()?))
    }

    /// Waits until `/readyz` answers 200 with `status` (`ready` or `degraded`); answers it.
    pub async fn until_status(&mut self, status: &str, within: Duration) -> Value {
        let deadline = Instant::now() + within;
        let mut last = None;
        while Instant::now() < deadline {
            if let Some(exit) = self.child.try_wait().unwrap() {
                panic!("{} exited: {exit}", self.name);
            }
            match self.readiness().await {
                Some((200, body)) if body["status"] == status => return body,
                answer => last = answer,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{}: /readyz did not say {status} within {within:?}; last answer {last:?}", self.name);
    }

    /// POSTs one operation as the bearer of `token` (a session token or an API key).
    pub async fn gql(&self, token: &str, query: &str, variables: Value) -> (u16, Value) {
        let body = json!({"query": query, "variables": variables});
        let response = self.client.post(self.url("/graphql")).bearer_auth(token).json(&body).send().await;
        let response = response.unwrap_or_else(|e| panic!("{}: no answer: {e}", self.name));
        (response.status().as_u16(), response.json().await.expect("a JSON answer"))
    }

    /// Runs one operation that must succeed; answers its `data`.
    pub async fn must(&self, token: &str, query: &str, variables: Value) -> Value {
        let (status, body) = self.gql(token, query, variables).await;
        assert!(status == 200 && body.get("errors").is_none(), "{} answered {status} to {query}: {body}", self.name);
        body["data"].clone()
    }

    /// Starts a run of `team` on `content`; answers `{id status output agent teamVersion}`.
    pub async fn run(&self, token: &str, team: &str, content: &str, wait: bool) -> Value {
        let run = "mutation($t: ID!, $c: String!, $w: Boolean!) { runTeam(teamId: $t, input: {content: $c}, wait: $w) { id status output agent teamVersion } }";
        self.must(token, run, json!({"t": team, "c": content, "w": wait})).await["runTeam"].clone()
    }

    /// A websocket signed in as the bearer of `token`.
    pub async fn ws(&self, token: &str) -> WsClient {
        let mut ws = WsClient::connect(self.addr(), "graphql-transport-ws").await;
        ws.send(json!({"type": "connection_init", "payload": {"token": token}})).await;
        assert_eq!(ws.next_json().await["type"], "connection_ack");
        ws
    }

    /// SIGKILL: no shutdown, nothing handed over.
    pub fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let sent = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(sent.success(), "kill -TERM {}", self.child.id());
    }

    /// Waits for the process to exit; panics after `within`.
    pub async fn exit_status(&mut self, within: Duration) -> ExitStatus {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("{} was still running {within:?} after SIGTERM", self.name);
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log.lines();
            let tail = &log[log.len().saturating_sub(LOG_TAIL)..];
            eprintln!("--- last {} log lines of {} ---\n{}", tail.len(), self.name, tail.join("\n"));
        }
    }
}

/// A `redis-server` of this test alone, with no persistence; killed when dropped.
pub struct RedisServer {
    pub port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Whether `redis-server` can be run here.
    pub fn installed() -> bool {
        let version = Command::new("redis-server").arg("--version").stdout(Stdio::null()).status();
        if !version.is_ok_and(|status| status.success()) {
            eprintln!("skipped: this test starts its own redis-server, which is not installed");
            return false;
        }
        true
    }

    /// A server on a port nothing listens on, not started yet.
    pub fn unstarted() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Self { port, child: None }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it on its port and waits until it accepts connections.
    pub async fn start(&mut self) {
        let port = self.port.to_string();
        let args = ["--port", &port, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"];
        let child = Command::new("redis-server").args(args).stdout(Stdio::null()).spawn().unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {port} within 10 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL: connections drop with no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Subscribes `ws` to `teamActivity` of `team` and waits until the subscription is live: runs on
/// `instance` (the socket's) are started until one's events reach the socket.
pub async fn live_team_activity(ws: &mut WsClient, instance: &Instance, token: &str, team: &str) {
    let query = format!("subscription($t: ID!) {{ teamActivity(teamId: $t) {{ {EVENT_FIELDS} }} }}");
    subscribe(ws, "activity", &query, json!({"t": team})).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let probe = instance.run(token, team, "probe", true).await;
        // The run is over: its events are on their way if the subscription saw it.
        while let Ok(message) = tokio::time::timeout(Duration::from_millis(500), ws.next_json()).await {
            let event = &message["payload"]["data"]["teamActivity"];
            assert!(event.is_object(), "{message}");
            if event["runId"] == probe["id"] && is_terminal(event) {
                return;
            }
        }
    }
    panic!("teamActivity on {} saw none of its own runs within 10 s", instance.name);
}

/// The event fields the tests read.
pub const EVENT_FIELDS: &str = "runId kind agent delta";

pub async fn subscribe(ws: &mut WsClient, id: &str, query: &str, variables: Value) {
    ws.send(json!({"type": "subscribe", "id": id, "payload": {"query": query, "variables": variables}})).await;
}

fn is_terminal(event: &Value) -> bool {
    matches!(event["kind"].as_str(), Some("COMPLETED" | "FAILED" | "CANCELLED"))
}

/// Events of `field` until the terminal one, each checked to be of `run`.
pub async fn events_until_end(ws: &mut WsClient, field: &str, run: &Value) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let message = ws.next_json().await;
        assert_eq!(message["type"], "next", "{message}");
        let event = message["payload"]["data"][field].clone();
        assert_eq!(event["runId"], run["id"], "an event of another run: {message}");
        events.push(event);
        if is_terminal(events.last().unwrap()) {
            return events;
        }
    }
}

/// The kinds of `events` other than the streamed text, in order.
pub fn milestones(events: &[Value]) -> Vec<&str> {
    events.iter().filter_map(|e| e["kind"].as_str()).filter(|kind| *kind != "DELTA").collect()
}

/// The streamed text of `events`, pieced together.
pub fn streamed(events: &[Value]) -> String {
    events.iter().filter_map(|e| e["delta"].as_str()).collect()
}
