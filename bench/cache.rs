//! What the caches save: the same requests against a server with `ENSEMBLE_CACHE=on` and one
//! with `off`, SQLite, over real HTTP — `team(id) { spec }` signed in with a session token, and
//! the same query with an API key. For each: requests per second (several clients at once) and
//! SQL statements per request, then the on/off ratios.
//!
//! `cargo bench --bench cache` (release). `ENSEMBLE_BENCH_REQUESTS` (default 3000) and
//! `ENSEMBLE_BENCH_CLIENTS` (default 8) set the sizes. Usage counts, written in the background
//! every few seconds, are left out of the statement counts (their flush is set to an hour).

use std::{
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use ensemble::{
    config::{CacheMode, Config},
    domain::GlobalRole,
    startup::App,
    state::AppState,
};
use serde_json::{Value, json};
use tokio::sync::oneshot;

const TEAM_SPEC: &str = "query($id: ID!) { team(id: $id) { spec } }";

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// How a request proves who sends it.
#[derive(Clone)]
enum Credential {
    Token(String),
    Key(String),
}

/// A running server with a team and both kinds of credential for its owner.
struct Server {
    state: AppState,
    client: reqwest::Client,
    url: String,
    team: String,
    token: Credential,
    key: Credential,
    stop: oneshot::Sender<()>,
    _dir: tempfile::TempDir,
}

impl Server {
    async fn start(cache: CacheMode) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::from_env().expect("config");
        config.listen = "127.0.0.1:0".parse().unwrap();
        config.data_dir = dir.path().join("data");
        config.database_url = format!("sqlite://{}/ensemble.db", dir.path().display());
        config.rate_limit_per_minute = 0;
        config.usage_flush_secs = 3600;
        config.cache = cache;
        std::fs::create_dir_all(&config.data_dir).expect("data dir");
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-key.pem");
        std::fs::copy(fixture, config.data_dir.join("dev-jwt-key.pem")).expect("dev key");
        let app = App::build(config).await.expect("server builds");
        let (url, state) = (format!("http://{}/graphql", app.local_addr()), app.state().clone());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(app.run_until(async {
            let _ = stopped.await;
        }));
        let dev = state.auth.dev.as_ref().expect("dev auth");
        let token = dev.sign("user_bench", None, GlobalRole::Member, Duration::from_secs(3600)).expect("token");
        let mut server = Self {
            state,
            client: reqwest::Client::new(),
            url,
            team: String::new(),
            token: Credential::Token(token),
            key: Credential::Key(String::new()),
            stop,
            _dir: dir,
        };
        server.prepare().await;
        server
    }

    /// Makes the team and the key.
    async fn prepare(&mut self) {
        let token = self.token.clone();
        let team = self.call(&token, "mutation { createTeam(input: {name: \"Bench\"}) { id } }", json!({})).await;
        self.team = team["createTeam"]["id"].as_str().expect("team id").to_string();
        let create = "mutation { createApiKey(input: {name: \"bench\", scopes: [TEAMS_READ]}) { secret } }";
        let key = self.call(&token, create, json!({})).await;
        self.key = Credential::Key(key["createApiKey"]["secret"].as_str().expect("secret").to_string());
    }

    async fn call(&self, credential: &Credential, query: &str, variables: Value) -> Value {
        let request = self.client.post(&self.url).json(&json!({"query": query, "variables": variables}));
        let request = match credential {
            Credential::Token(token) => request.bearer_auth(token),
            Credential::Key(key) => request.header("x-api-key", key),
        };
        let answer: Value = request.send().await.expect("request").json().await.expect("JSON answer");
        assert!(answer.get("errors").is_none(), "{answer}");
        answer["data"].clone()
    }

    fn statements(&self) -> u64 {
        self.state.statements.load(Ordering::Relaxed)
    }
}

/// Requests per second and SQL statements per request of `requests` calls of `team(id) { spec }`
/// as `credential`, from `clients` clients at once.
async fn measure(server: &Arc<Server>, credential: &Credential, requests: u64, clients: u64) -> (f64, f64) {
    for _ in 0..50 {
        server.call(credential, TEAM_SPEC, json!({"id": server.team})).await;
    }
    let before = server.statements();
    let began = Instant::now();
    let workers: Vec<_> = (0..clients)
        .map(|_| {
            let (server, credential) = (server.clone(), credential.clone());
            tokio::spawn(async move {
                for _ in 0..requests / clients {
                    server.call(&credential, TEAM_SPEC, json!({"id": server.team})).await;
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.expect("client");
    }
    let done = (requests / clients) * clients;
    let elapsed = began.elapsed().as_secs_f64();
    (done as f64 / elapsed, (server.statements() - before) as f64 / done as f64)
}

#[tokio::main]
async fn main() {
    let requests = env_number("ENSEMBLE_BENCH_REQUESTS", 3000);
    let clients = env_number("ENSEMBLE_BENCH_CLIENTS", 8).max(1);
    println!("{requests} requests of `team(id) {{ spec }}` from {clients} clients, SQLite, release build");
    println!("{:<24} {:>6} {:>10} {:>14}", "signed in with", "cache", "req/s", "SQL/request");
    let mut figures = Vec::new();
    for cache in [CacheMode::On, CacheMode::Off] {
        let server = Arc::new(Server::start(cache).await);
        for (name, credential) in [("a session token", &server.token), ("an API key", &server.key)] {
            let (rate, sql) = measure(&server, credential, requests, clients).await;
            let mode = if cache.is_on() { "on" } else { "off" };
            println!("{name:<24} {mode:>6} {rate:>10.0} {sql:>14.2}");
            figures.push((name, cache, rate, sql));
        }
        let Ok(server) = Arc::try_unwrap(server) else { panic!("clients still hold the server") };
        let _ = server.stop.send(());
    }
    for name in ["a session token", "an API key"] {
        let of = |mode: CacheMode| figures.iter().find(|f| f.0 == name && f.1 == mode).expect("measured");
        let (on, off) = (of(CacheMode::On), of(CacheMode::Off));
        println!(
            "{name}: cache on serves {:.2}x the requests per second, with {:.2}x fewer SQL statements ({:.2} vs {:.2})",
            on.2 / off.2,
            off.3 / on.3,
            on.3,
            off.3
        );
    }
}
