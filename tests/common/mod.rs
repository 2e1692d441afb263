//! Test harness: `TestApp::spawn()` starts the real server on `127.0.0.1:0` over a temporary
//! SQLite file, or over a fresh PostgreSQL database (created per test, dropped afterwards) when
//! `ENSEMBLE_TEST_DATABASE_URL` is set, either one a copy of the process's migrated and seeded
//! template (`template.rs`), or over a fresh local D1 database through the bridge when
//! `ENSEMBLE_TEST_D1=1` (`on_d1`); `gql()` and `WsClient` talk to it over the wire.

#![allow(dead_code)]

#[path = "../support/d1_bridge.rs"]
mod d1_bridge;
pub mod live;
pub mod meanwhile;
pub mod served;
mod template;

use std::{net::SocketAddr, time::Duration};

use ensemble::{config::Config, domain::GlobalRole, startup::App, state::AppState};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, http::HeaderValue, protocol::Message};

pub const PG_ENV: &str = "ENSEMBLE_TEST_DATABASE_URL";

/// True when the suite runs its servers on local D1 through the bridge (`ENSEMBLE_TEST_D1=1`,
/// with `ENSEMBLE_WRANGLER_DIR` and `ENSEMBLE_D1_SECRET`): each test's server gets a database of
/// its own from one `wrangler dev --local` (tests/support/d1_bridge.rs, `Pool`).
pub fn on_d1() -> bool {
    std::env::var(d1_bridge::RUN_ENV).as_deref() == Ok("1")
}

/// On D1, sends the servers' warnings about the bridge (a read tried again, a batch sent again)
/// and the errors they answer to the output of the test whose server logged them, which libtest
/// prints when that test fails.
fn show_d1_warnings() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ensemble::db=warn,ensemble::startup=warn,ensemble::error=error")
            .with_test_writer()
            .with_ansi(false)
            .try_init();
    });
}

/// On D1, says why the calling test does not apply there and answers true (the test returns).
pub fn skipped_on_d1(why: &str) -> bool {
    if on_d1() {
        println!("skipped on D1: {why}");
    }
    on_d1()
}

pub struct TestApp {
    pub addr: SocketAddr,
    pub client: reqwest::Client,
    pub state: AppState,
    /// What a server of the test's own holds; `None` on the shared server.
    own: Option<Own>,
}

/// A test's own server: its task, its folder and its database.
struct Own {
    server: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    pg: Option<PgDatabase>,
}

impl Drop for Own {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server whose configuration `adjust` may change first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::from_env().expect("default config");
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.path().join("data");
        install_dev_key(&config.data_dir);
        let pg = match std::env::var(PG_ENV) {
            Ok(url) if !url.is_empty() && !on_d1() => Some(PgDatabase::from_template(&url).await),
            _ => None,
        };
        config.database_url = match &pg {
            Some(pg) => pg.url.clone(),
            None if on_d1() => {
                show_d1_warnings();
                d1_bridge::Pool::get(template::at_exit).next_url()
            }
            None => {
                let file = dir.path().join("ensemble.db");
                template::copy_sqlite_to(&file).await;
                format!("sqlite://{}", file.display())
            }
        };
        // Many servers run at once in a test binary; PostgreSQL allows 100 connections in all.
        config.db_pool_size = Some(if pg.is_some() { 2 } else { 4 });
        adjust(&mut config);
        let app = App::build(config).await.expect("app builds");
        let addr = app.local_addr();
        let state = app.state().clone();
        let server = tokio::spawn(async move {
            let _ = app.run_until(std::future::pending()).await;
        });
        Self { addr, client: reqwest::Client::new(), state, own: Some(Own { server, dir, pg }) }
    }

    /// One server for the whole test process, for tests that only send requests and read the
    /// answers (transport, limits), so that nothing one test does shows in another's answers.
    /// It runs on a runtime of its own, since each test's runtime ends with the test; each
    /// caller gets an HTTP client of its own for the same reason.
    pub async fn shared() -> Self {
        static SHARED: std::sync::OnceLock<(SocketAddr, AppState)> = std::sync::OnceLock::new();
        let (addr, state) = SHARED
            .get_or_init(|| {
                let (started, server) = std::sync::mpsc::channel();
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .expect("the shared server's runtime");
                    runtime.block_on(async move {
                        let app = TestApp::spawn().await;
                        app.remove_at_exit();
                        let _ = started.send((app.addr, app.state.clone()));
                        std::future::pending::<()>().await;
                    });
                });
                server.recv().expect("the shared server starts")
            })
            .clone();
        Self { addr, client: reqwest::Client::new(), state, own: None }
    }

    /// Removes the server's folder and database when the process exits (for a server that is
    /// never dropped).
    fn remove_at_exit(&self) {
        let Some(own) = &self.own else { return };
        let dir = own.dir.path().to_path_buf();
        template::at_exit(Box::new(move || {
            let _ = std::fs::remove_dir_all(&dir);
        }));
        if let Some(pg) = &own.pg {
            let (admin_url, name) = (pg.admin_url.clone(), pg.name.clone());
            template::at_exit(Box::new(move || drop_postgres_database(&admin_url, &name)));
        }
    }

    /// A server that writes nothing in the background (usage counts are flushed hourly), so
    /// that `statements_for` counts only the request it runs.
    pub async fn spawn_quiet() -> Self {
        Self::spawn_with(|c| c.usage_flush_secs = 3600).await
    }

    /// Runs one operation as the bearer of `token`; answers how many SQL statements the server
    /// ran for it, and the JSON answer. The count is the server's, so the app must come from
    /// `spawn_quiet` and nothing else may be in flight: it first waits until no statement has
    /// run for a moment (a run's last writes, the usage flush at start). A request with the same
    /// token goes first, so that the sign-in cache is warm whatever the time spent before.
    /// On D1 the server renews its audit lease every 20 s, a batch that counts too when it lands
    /// during the request: there the operation (a query) runs three times and the fewest counts.
    pub async fn statements_for(&self, token: &str, query: &str, variables: Value) -> (u64, Value) {
        assert!(self.state.config.usage_flush_secs >= 3600, "count statements on a TestApp::spawn_quiet() server");
        self.gql_as(token, "{ __typename }", json!({})).await;
        self.until_quiet().await;
        let mut fewest = None;
        for _ in 0..if on_d1() { 3 } else { 1 } {
            let before = self.statements_run();
            let (_, body) = self.gql_as(token, query, variables.clone()).await;
            let count = self.statements_run() - before;
            if fewest.as_ref().is_none_or(|(fewest, _)| count < *fewest) {
                fewest = Some((count, body));
            }
        }
        fewest.expect("measured at least once")
    }

    /// SQL statements the server has run so far.
    pub fn statements_run(&self) -> u64 {
        self.state.statements.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until no statement has run for 100 ms (the server's start-up tasks are done).
    pub async fn until_quiet(&self) {
        let mut last = self.statements_run();
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = self.statements_run();
            if now == last {
                return;
            }
            last = now;
        }
        panic!("the server kept running SQL statements for 10 s");
    }

    /// On D1, gives up this server's audit lease as if it had stopped (or died and the lease had
    /// run out), so that another server may start on its database; elsewhere, nothing.
    pub async fn give_up_d1_lease(&self) {
        use ensemble::db::lease;
        use sea_orm::{ConnectionTrait, Statement};
        if !on_d1() {
            return;
        }
        let select = "SELECT holder FROM leases WHERE name = ?";
        let statement = Statement::from_sql_and_values(sea_orm::DbBackend::Sqlite, select, [lease::AUDIT.into()]);
        let row = self.state.db.query_one_raw(statement).await.unwrap().expect("the audit lease's row");
        let holder: String = row.try_get_by_index(0).expect("a holder");
        lease::release(self.state.writer.as_ref(), lease::AUDIT, &holder).await.unwrap();
    }

    /// A dev-issuer token for `user`, valid for an hour.
    pub fn token(&self, user: &str, role: GlobalRole) -> String {
        let dev = self.state.auth.dev.as_ref().expect("dev auth");
        dev.sign(user, Some(&format!("{user}@example.com")), role, Duration::from_secs(3600)).unwrap()
    }

    /// POSTs one operation as the bearer of `token`; returns the status and JSON answer.
    /// Runs an operation that must succeed (arranging a test, not what it checks); its `data`.
    pub async fn must(&self, token: &str, query: &str, variables: Value) -> Value {
        let (_, body) = self.gql_as(token, query, variables.clone()).await;
        assert!(body.get("errors").is_none(), "{query} with {variables}: {body}");
        body["data"].clone()
    }

    pub async fn gql_as(&self, token: &str, query: &str, variables: Value) -> (u16, Value) {
        let response = self
            .client
            .post(self.url("/graphql"))
            .bearer_auth(token)
            .json(&json!({"query": query, "variables": variables}))
            .send()
            .await
            .expect("request sent");
        (response.status().as_u16(), response.json().await.expect("JSON answer"))
    }

    /// Runs the operation `name` of a multi-operation `document` as the bearer of `token`; it
    /// must succeed. Returns its `data`.
    pub async fn operation(&self, token: &str, document: &str, name: &str, variables: Value) -> Value {
        let body = json!({"query": document, "operationName": name, "variables": variables});
        let response = self.client.post(self.url("/graphql")).bearer_auth(token).json(&body).send().await.unwrap();
        let answer: Value = response.json().await.expect("JSON answer");
        assert!(answer.get("errors").is_none(), "{name}: {answer}");
        answer["data"].clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// POSTs one operation and returns the JSON body (any status).
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.post_json(&json!({"query": query, "variables": variables})).await.1
    }

    /// POSTs a JSON body to `/graphql`; returns the status and the JSON answer.
    pub async fn post_json(&self, body: &Value) -> (u16, Value) {
        let response = self.client.post(self.url("/graphql")).json(body).send().await.expect("request sent");
        let status = response.status().as_u16();
        (status, response.json().await.expect("JSON answer"))
    }

    /// POSTs a raw body with the given content type to `/graphql`.
    pub async fn post_body(&self, content_type: &str, body: impl Into<reqwest::Body>) -> reqwest::Response {
        let request = self.client.post(self.url("/graphql")).header("content-type", content_type);
        request.body(body).send().await.expect("request sent")
    }

    /// GETs `/graphql` with the given query-string parameters.
    pub async fn get_graphql(&self, params: &[(&str, &str)]) -> reqwest::Response {
        self.client.get(self.url("/graphql")).query(params).send().await.expect("request sent")
    }

    pub async fn ws(&self, protocol: &str) -> WsClient {
        WsClient::connect(self.addr, protocol).await
    }
}

/// Puts a ready dev signing key in `data_dir` (making a 2048-bit key in a debug build is slow).
pub fn install_dev_key(data_dir: &std::path::Path) {
    std::fs::create_dir_all(data_dir).expect("data dir");
    let key = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-key.pem");
    std::fs::copy(key, data_dir.join("dev-jwt-key.pem")).expect("dev key installed");
}

/// A fixture file's text (`tests/fixtures/NAME`).
pub fn fixture(name: &str) -> String {
    std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name))
        .expect("fixture")
}

/// The issuer the Clerk fixtures sign as.
pub const CLERK_ISSUER: &str = "https://clerk.ensemble.test";

/// Verifies tokens as Clerk's with the PEM public key of `tests/fixtures/clerk-key.pem`.
pub fn clerk_pem(config: &mut Config) {
    config.auth.clerk_jwt_key = Some(fixture("clerk-key.pub.pem"));
    config.auth.clerk_issuer = Some(CLERK_ISSUER.into());
}

/// The real `ensemble` binary, without the settings of the environment the tests run in.
pub fn ensemble() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble"));
    for var in ["DATABASE_URL", "ENSEMBLE_LISTEN", "ENSEMBLE_ENV", "ENSEMBLE_DATA_DIR", "RUST_LOG"] {
        command.env_remove(var);
    }
    command.env("NO_COLOR", "1");
    command
}

/// Waits until `check` answers true, asking every 50 ms; panics saying `what` did not happen
/// after `deadline`. For what happens at a moment the test does not control (a refetch, an
/// expiry), instead of sleeping for a guess.
pub async fn eventually<F, Fut>(deadline: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = std::time::Instant::now() + deadline;
    while !check().await {
        assert!(std::time::Instant::now() < until, "{what}: not within {deadline:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `extensions.code` of the first error in a GraphQL answer.
pub fn first_code(body: &Value) -> &str {
    body["errors"][0]["extensions"]["code"].as_str().unwrap_or("<no code>")
}

/// The `path` of every problem in the first error's `extensions.problems`.
pub fn problem_paths(body: &Value) -> Vec<&str> {
    let problems = body["errors"][0]["extensions"]["problems"].as_array();
    problems.into_iter().flatten().filter_map(|p| p["path"].as_str()).collect()
}

/// A database of its own on the PostgreSQL server of `ENSEMBLE_TEST_DATABASE_URL`.
pub struct PgDatabase {
    admin_url: String,
    name: String,
    pub url: String,
}

impl PgDatabase {
    /// An empty database.
    pub async fn create(admin_url: &str) -> Self {
        Self::create_from(admin_url, None).await
    }

    /// A copy of the process's migrated and seeded template database.
    pub async fn from_template(admin_url: &str) -> Self {
        let template = template::postgres(admin_url).await;
        Self::create_from(admin_url, Some(template)).await
    }

    async fn create_from(admin_url: &str, template: Option<&str>) -> Self {
        use sea_orm::ConnectionTrait;
        let name = format!("ensemble_test_{}", uuid::Uuid::new_v4().simple());
        let copied = template.map(|t| format!(" TEMPLATE \"{t}\"")).unwrap_or_default();
        let admin = sea_orm::Database::connect(admin_url).await.expect("PostgreSQL reachable");
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"{copied}")).await.expect("create test database");
        let _ = admin.close().await;
        let url = database_url(admin_url, &name);
        Self { admin_url: admin_url.to_string(), name, url }
    }
}

/// `admin_url` pointed at the database `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let mut url = url::Url::parse(admin_url).expect("PostgreSQL URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        drop_postgres_database(&self.admin_url, &self.name);
    }
}

/// Drops the database `name`, from a thread of its own (drops and exit handlers are not async).
fn drop_postgres_database(admin_url: &str, name: &str) {
    let (admin_url, name) = (admin_url.to_string(), name.to_string());
    let dropped = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        runtime.block_on(async {
            use sea_orm::ConnectionTrait;
            let admin = sea_orm::Database::connect(&admin_url).await.ok()?;
            admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.ok()?;
            admin.close().await.ok()
        })
    });
    let _ = dropped.join();
}

/// A websocket client speaking raw protocol messages.
pub struct WsClient {
    pub stream: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
}

impl WsClient {
    pub async fn connect(addr: SocketAddr, protocol: &str) -> Self {
        Self::connect_from(addr, protocol, None).await
    }

    /// Connects as a browser page of `origin` would.
    pub async fn connect_from(addr: SocketAddr, protocol: &str, origin: Option<&str>) -> Self {
        let mut request = format!("ws://{addr}/graphql/ws").into_client_request().unwrap();
        let headers = request.headers_mut();
        headers.insert("sec-websocket-protocol", HeaderValue::from_str(protocol).unwrap());
        if let Some(origin) = origin {
            headers.insert("origin", HeaderValue::from_str(origin).unwrap());
        }
        let (stream, response) = tokio_tungstenite::connect_async(request).await.expect("websocket connects");
        assert_eq!(
            response.headers().get("sec-websocket-protocol").and_then(|v| v.to_str().ok()),
            Some(protocol),
            "the server speaks the protocol asked for"
        );
        Self { stream }
    }

    /// Connects and completes `connection_init` / `connection_ack` (graphql-transport-ws).
    pub async fn acked(addr: SocketAddr) -> Self {
        let mut ws = Self::connect(addr, "graphql-transport-ws").await;
        ws.send(json!({"type": "connection_init"})).await;
        assert_eq!(ws.next_json().await["type"], "connection_ack");
        ws
    }

    pub async fn send(&mut self, message: Value) {
        self.send_text(&message.to_string()).await;
    }

    pub async fn send_text(&mut self, text: &str) {
        self.stream.send(Message::Text(text.into())).await.expect("websocket send");
    }

    /// The next text message as JSON, skipping server pings; panics after 5 s or on close.
    pub async fn next_json(&mut self) -> Value {
        loop {
            match self.next_frame().await {
                Some(Message::Text(text)) => {
                    let value: Value = serde_json::from_str(&text).expect("JSON message");
                    if value["type"] != "ping" && value["type"] != "ka" {
                        return value;
                    }
                }
                Some(Message::Close(frame)) => panic!("closed instead of a message: {frame:?}"),
                Some(_) => {}
                None => panic!("socket ended instead of a message"),
            }
        }
    }

    /// The next text message, including server pings.
    pub async fn next_raw_json(&mut self) -> Value {
        match self.next_frame().await {
            Some(Message::Text(text)) => serde_json::from_str(&text).expect("JSON message"),
            other => panic!("expected a text message, got {other:?}"),
        }
    }

    /// Waits for the close frame and returns its code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match self.next_frame().await {
                Some(Message::Close(Some(frame))) => {
                    return (frame.code.into(), frame.reason.to_string());
                }
                Some(Message::Close(None)) => return (1005, String::new()),
                Some(_) => {}
                None => panic!("socket ended without a close frame"),
            }
        }
    }

    async fn next_frame(&mut self) -> Option<Message> {
        match tokio::time::timeout(Duration::from_secs(5), self.stream.next()).await {
            Ok(Some(Ok(message))) => Some(message),
            Ok(Some(Err(tungstenite::Error::ConnectionClosed))) | Ok(None) => None,
            Ok(Some(Err(e))) => panic!("websocket error: {e}"),
            Err(_) => panic!("no websocket message within 5 s"),
        }
    }
}

/// POSTs `body` to a Clerk webhook endpoint at `url` as Svix does, signed with `key` at this
/// very second.
pub async fn deliver_clerk(client: &reqwest::Client, url: String, key: &[u8], id: &str, body: &str) -> (u16, Value) {
    use base64::{Engine, engine::general_purpose::STANDARD};
    use hmac::{Hmac, Mac};
    let ts = chrono::Utc::now().timestamp();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let signature = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let response = client
        .post(url)
        .header("svix-id", id)
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", signature)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}
