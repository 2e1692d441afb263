//! The servers under test: real `ensemble serve` processes on a SQLite file, or two on one fresh
//! PostgreSQL database sharing Redis; their resident memory and CPU time from `/proc`.

use std::{
    collections::BTreeSet,
    net::SocketAddr,
    os::fd::AsFd,
    path::Path,
    process::{Child, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use ensemble::{auth::dev::DevIssuer, domain::GlobalRole};
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";
const REDIS: &str = "redis://127.0.0.1:6379";
const REDIS_ADDR: &str = "127.0.0.1:6379";
/// Clock ticks per second of `/proc/<pid>/stat` times (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

pub enum Topology {
    /// One instance on SQLite, events on the in-process bus.
    Single,
    /// Two instances on one PostgreSQL database, events shared through Redis.
    Pair,
}

/// One `ensemble serve` process, killed when dropped. Rate limits are off (every `subscribe`
/// counts as an operation of the one principal); nothing else in the configuration caps
/// websockets or connections, so nothing else is raised. Warnings go to this process's stderr.
pub struct Server {
    child: Child,
    pub addr: SocketAddr,
}

impl Server {
    fn spawn(data_dir: &Path, database_url: &str, redis_namespace: Option<&str>) -> Self {
        // A child cannot report the port it bound, so it is given one that was free a moment ago.
        let addr = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let log = || std::io::stderr().as_fd().try_clone_to_owned().map(Stdio::from).unwrap_or(Stdio::null());
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_ensemble"));
        command
            .arg("serve")
            .env("DATABASE_URL", database_url)
            .env("ENSEMBLE_LISTEN", addr.to_string())
            .env("ENSEMBLE_DATA_DIR", data_dir)
            .env("ENSEMBLE_RATE_LIMIT_PER_MINUTE", "0")
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .env_remove("ENSEMBLE_ENV")
            .env_remove("REDIS_URL")
            .stdout(log())
            .stderr(log());
        if let Some(namespace) = redis_namespace {
            command.env("REDIS_URL", REDIS).env("ENSEMBLE_REDIS_NAMESPACE", namespace);
        }
        Self { child: command.spawn().expect("ensemble starts"), addr }
    }

    async fn ready(&mut self, client: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            assert!(self.child.try_wait().unwrap().is_none(), "the server exited while starting");
            let ready = client.get(format!("http://{}/readyz", self.addr)).send().await;
            if let Ok(response) = ready
                && response.status() == 200
                && response.json::<Value>().await.is_ok_and(|body| body["status"] == "ready")
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the server was not ready within 60 s");
    }

    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        let value = status.lines().find_map(|l| l.strip_prefix(field)).and_then(|v| v.split_whitespace().next());
        value.and_then(|v| v.parse().ok()).unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The servers of one scenario, a team on them and a member's token; everything goes when dropped.
pub struct Cluster {
    pub servers: Vec<Server>,
    pub team: String,
    pub token: String,
    client: reqwest::Client,
    _pg: Option<PgDatabase>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(topology: Topology) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let key = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/dev-key.pem");
        let data_dirs: Vec<_> = (0..2).map(|i| dir.path().join(format!("data-{i}"))).collect();
        for data in &data_dirs {
            std::fs::create_dir_all(data).expect("data dir");
            std::fs::copy(&key, data.join("dev-jwt-key.pem")).expect("dev key");
        }
        let (servers, pg) = match topology {
            Topology::Single => {
                let url = format!("sqlite://{}/fanout.db", dir.path().display());
                (vec![Server::spawn(&data_dirs[0], &url, None)], None)
            }
            Topology::Pair => {
                let pg = PgDatabase::create().await;
                let namespace = format!("ensemble-bench-{}", uuid::Uuid::new_v4().simple());
                let servers = data_dirs.iter().map(|data| Server::spawn(data, &pg.url, Some(&namespace))).collect();
                (servers, Some(pg))
            }
        };
        let client = reqwest::Client::new();
        let mut cluster = Self { servers, team: String::new(), token: String::new(), client, _pg: pg, _dir: dir };
        for server in &mut cluster.servers {
            server.ready(&cluster.client).await;
        }
        let issuer = DevIssuer::load_or_create(&data_dirs[0]).await.expect("dev key loads");
        cluster.token =
            issuer.sign("user_fanout", None, GlobalRole::Member, Duration::from_secs(7200)).expect("token signs");
        let created = cluster.call(0, "mutation { createTeam(input: {name: \"Fan-out\"}) { id } }", json!({})).await;
        cluster.team = created["data"]["createTeam"]["id"].as_str().expect("team created").to_string();
        cluster
    }

    /// Runs one operation on server `instance` as the team's owner.
    pub async fn call(&self, instance: usize, query: &str, variables: Value) -> Value {
        let url = format!("http://{}/graphql", self.servers[instance].addr);
        let body = json!({"query": query, "variables": variables});
        let response = self.client.post(url).bearer_auth(&self.token).json(&body).send().await.expect("request");
        response.json().await.expect("JSON answer")
    }

    /// Resident memory of all servers, in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.servers.iter().map(|s| s.status_kib("VmRSS:")).sum()
    }

    /// CPU time the servers have used so far, in seconds.
    pub fn cpu_secs(&self) -> f64 {
        self.servers.iter().map(|s| cpu_secs(&format!("/proc/{}/stat", s.child.id()))).sum()
    }
}

/// Polls every server's `/readyz` in the background; see `Readiness::finish`.
pub struct Readiness {
    stop: Arc<AtomicBool>,
    task: JoinHandle<BTreeSet<String>>,
}

impl Readiness {
    pub fn watch(cluster: &Cluster) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let urls: Vec<_> = cluster.servers.iter().map(|s| format!("http://{}/readyz", s.addr)).collect();
        let (client, stopping) = (cluster.client.clone(), stop.clone());
        let task = tokio::spawn(async move {
            let mut seen = BTreeSet::new();
            while !stopping.load(Ordering::SeqCst) {
                for url in &urls {
                    let answer = client.get(url).timeout(Duration::from_secs(10)).send().await;
                    if let Ok(body) = answer
                        && let Ok(body) = body.json::<Value>().await
                        && body["status"] != "ready"
                    {
                        seen.insert(format!("{}: {}", body["status"], body["reason"]));
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen
        });
        Self { stop, task }
    }

    /// Every answer other than `ready` seen while watching.
    pub async fn finish(self) -> Vec<String> {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.map(|seen| seen.into_iter().collect()).unwrap_or_default()
    }
}

/// CPU time this process has used so far, in seconds.
pub fn own_cpu_secs() -> f64 {
    cpu_secs("/proc/self/stat")
}

/// User plus system time of the process whose `stat` file is `path`.
fn cpu_secs(path: &str) -> f64 {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state, field 3.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i - 3).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(14) + ticks(15)) / TICKS
}

/// Raises the soft limit on open files to `needed` (within the hard limit): every subscriber
/// is a socket of this process.
pub fn ensure_fd_limit(needed: usize) {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if (limit.rlim_cur as usize) < needed {
            limit.rlim_cur = limit.rlim_max.min(needed as libc::rlim_t);
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
    assert!(limit.rlim_cur as usize >= needed, "open files limited to {} (hard); {needed} needed", limit.rlim_max);
}

/// Whether PostgreSQL and Redis answer; the reason when not.
pub async fn shared_services_reachable() -> Result<(), String> {
    let postgres = tokio::time::timeout(Duration::from_secs(5), sea_orm::Database::connect(POSTGRES)).await;
    match postgres {
        Ok(Ok(db)) => {
            let _ = db.close().await;
        }
        Ok(Err(e)) => return Err(format!("PostgreSQL at {POSTGRES} is not reachable: {e}")),
        Err(_) => return Err(format!("PostgreSQL at {POSTGRES} did not answer within 5 s")),
    }
    let pong = tokio::time::timeout(Duration::from_secs(5), redis_ping()).await;
    match pong {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(format!("Redis at {REDIS_ADDR} is not reachable: {e}")),
        Err(_) => Err(format!("Redis at {REDIS_ADDR} did not answer within 5 s")),
    }
}

async fn redis_ping() -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut redis = tokio::net::TcpStream::connect(REDIS_ADDR).await?;
    redis.write_all(b"PING\r\n").await?;
    let mut answer = [0u8; 7];
    redis.read_exact(&mut answer).await?;
    if &answer == b"+PONG\r\n" { Ok(()) } else { Err(std::io::Error::other("no PONG")) }
}

/// A fresh database on the local PostgreSQL server, dropped with the cluster.
struct PgDatabase {
    name: String,
    url: String,
}

impl PgDatabase {
    async fn create() -> Self {
        let name = format!("ensemble_bench_{}", uuid::Uuid::new_v4().simple());
        let admin = sea_orm::Database::connect(POSTGRES).await.expect("PostgreSQL reachable");
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
        let _ = admin.close().await;
        let mut url = url::Url::parse(POSTGRES).expect("PostgreSQL URL");
        url.set_path(&format!("/{name}"));
        Self { name, url: url.to_string() }
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // The cluster's servers are gone by now (fields drop in order); drop from a runtime of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let admin = sea_orm::Database::connect(POSTGRES).await.ok()?;
                admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await.ok()?;
                admin.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}
