//! Cloudflare D1 for the tests that need it: `wrangler dev --local` serving the bridge Worker
//! over a fresh local D1 with migration/sql applied (`Bridge`), or over a pool of them, one per
//! test (`Pool`, for the integration suite), run only when `ENSEMBLE_TEST_D1=1` (`wrangler()`
//! prints why a test skips otherwise). Included with `#[path]` by the test binaries.

#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        Once, OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use ensemble::db;

pub const SECRET: &str = "d1-reads-test-secret-0123456789abcdef0123";
pub const RUN_ENV: &str = "ENSEMBLE_TEST_D1";

/// Puts the secret where `db::connect` reads it, once, before any test connects.
pub fn secret_in_env() {
    static SET: Once = Once::new();
    // SAFETY: every test calls this before it starts a thread or reads the environment.
    SET.call_once(|| unsafe { std::env::set_var(db::d1::SECRET_ENV, SECRET) });
}

/// The wrangler to run the bridge with, or `None` (the test prints why it skips) unless the run
/// asks for D1 with `ENSEMBLE_TEST_D1=1`, which makes a missing wrangler a failure.
pub fn wrangler() -> Option<PathBuf> {
    if std::env::var(RUN_ENV).as_deref() != Ok("1") {
        println!("skipped: set {RUN_ENV}=1 and ENSEMBLE_WRANGLER_DIR to a wrangler install to read from local D1");
        return None;
    }
    let dir = std::env::var("ENSEMBLE_WRANGLER_DIR").expect("ENSEMBLE_WRANGLER_DIR names the wrangler install");
    let wrangler = Path::new(&dir).join("node_modules/.bin/wrangler");
    assert!(wrangler.exists(), "no wrangler at {} (scripts/d1-check --install-only installs it)", wrangler.display());
    Some(wrangler)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `wrangler dev --local` serving the bridge over a fresh local D1 with migration/sql applied,
/// from a copy of d1-bridge/ in a temporary folder (nothing is written into the repository).
/// Stopped (its whole process group) when dropped.
pub struct Bridge {
    pub url: String,
    process: Child,
    _dir: tempfile::TempDir,
}

impl Bridge {
    pub fn start(wrangler: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        copy_tree(&repository().join("d1-bridge/src"), &dir.path().join("bridge/src"));
        copy_tree(&repository().join("d1-bridge/wrangler.toml"), &dir.path().join("bridge/wrangler.toml"));
        copy_tree(&repository().join("migration/sql"), &dir.path().join("migration/sql"));
        let state = dir.path().join("state");
        let folder = dir.path().join("bridge");
        apply_migrations(wrangler, dir.path(), &folder, "DB", &state);
        let (process, port) = serve(wrangler, dir.path(), &folder, &state, SECRET);
        Self { url: format!("d1+http://127.0.0.1:{port}"), process, _dir: dir }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        stop(&mut self.process);
    }
}

/// Local D1 for a whole test process (the integration suite with `ENSEMBLE_TEST_D1=1`): one
/// `wrangler dev --local` serving the bridge over `POOL_SIZE` local D1 databases, each a copy of
/// one that `wrangler d1 migrations apply` migrated, so that every test's server gets a database
/// no other test has used. The bridge code is d1-bridge/src as it is, mounted under a route
/// prefix by tests/support/d1-pool.js: `d1+http://127.0.0.1:PORT/db/N` is database N.
pub struct Pool {
    base: String,
    next: AtomicUsize,
    process: Child,
    dir: PathBuf,
}

/// Databases in the pool: more than the tests of one process that start a server on D1.
pub const POOL_SIZE: usize = 600;

impl Pool {
    /// The process's pool, started by the first caller; stopped and removed at exit (`at_exit`).
    pub fn get(at_exit: impl FnOnce(Box<dyn FnOnce() + Send>)) -> &'static Pool {
        static POOL: OnceLock<Pool> = OnceLock::new();
        let mut at_exit = Some(at_exit);
        POOL.get_or_init(|| {
            let pool = Self::start(&wrangler().expect("ENSEMBLE_TEST_D1=1"));
            let (group, dir) = (pool.process.id() as i32, pool.dir.clone());
            (at_exit.take().unwrap())(Box::new(move || {
                let used = POOL.get().map_or(0, |pool| pool.next.load(Ordering::Relaxed));
                println!("local D1 pool: {used} of {POOL_SIZE} databases used");
                print_trouble(&dir.join("dev.log"));
                kill_group(group);
                let _ = std::fs::remove_dir_all(dir);
            }));
            pool
        })
    }

    /// The URL of a database no test has had yet.
    pub fn next_url(&self) -> String {
        let n = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        assert!(n < POOL_SIZE, "all {POOL_SIZE} local D1 databases of the pool are used: raise POOL_SIZE");
        format!("{}/db/{n}", self.base)
    }

    fn start(wrangler: &Path) -> Self {
        let secret = std::env::var(db::d1::SECRET_ENV).unwrap_or_default();
        assert!(
            secret.len() >= 32,
            "ENSEMBLE_TEST_D1=1 runs the servers on D1, which needs {} set (any 32 characters or more)",
            db::d1::SECRET_ENV
        );
        let dir = tempfile::Builder::new().prefix("ensemble-d1-pool-").tempdir().unwrap().keep();
        let folder = dir.join("pool");
        copy_tree(&repository().join("d1-bridge/src"), &folder.join("src/bridge"));
        copy_tree(&repository().join("tests/support/d1-pool.js"), &folder.join("src/pool.js"));
        copy_tree(&repository().join("migration/sql"), &dir.join("migration/sql"));
        std::fs::write(folder.join("wrangler.toml"), pool_config()).unwrap();
        let state = dir.join("state");
        // Database 0 is migrated by wrangler; every other one starts as a copy of its file.
        apply_migrations(wrangler, &dir, &folder, "DB_0", &state);
        let files = state.join("v3/d1/miniflare-D1DatabaseObject");
        let template = files.join(format!("{}.sqlite", local_d1_file(&pool_database_id(0))));
        assert!(
            template.exists(),
            "no local D1 file at {} (did Miniflare change how it names them?)",
            template.display()
        );
        for n in 1..POOL_SIZE {
            let name = local_d1_file(&pool_database_id(n));
            for suffix in ["sqlite", "sqlite-wal"] {
                let from = template.with_extension(suffix);
                if from.exists() {
                    std::fs::copy(&from, files.join(format!("{name}.{suffix}"))).unwrap();
                }
            }
        }
        let (process, port) = serve(wrangler, &dir, &folder, &state, &secret);
        Self { base: format!("d1+http://127.0.0.1:{port}"), next: AtomicUsize::new(0), process, dir }
    }
}

/// The lines of wrangler dev's log that are neither its banner nor an answered request: its
/// errors, and the requests it answered 5xx (the suite's tests print what their servers made of
/// them).
fn print_trouble(log: &Path) {
    let log = std::fs::read_to_string(log).unwrap_or_default();
    let answered = |line: &str| {
        line.starts_with("[wrangler:info] ")
            && line.split(' ').any(|word| word.len() == 3 && (word.starts_with('2') || word.starts_with('4')))
    };
    let banner = |line: &str| line.starts_with("env.") || line.starts_with("Binding") || line.trim().is_empty();
    let trouble: Vec<&str> = log.lines().filter(|line| !answered(line) && !banner(line)).collect();
    println!("wrangler dev's log, without its banner and its 2xx and 4xx answers ({} lines):", trouble.len());
    for line in trouble.iter().take(100) {
        println!("  {line}");
    }
}

fn pool_database_id(n: usize) -> String {
    format!("ensemble-test-pool-{n}")
}

/// The pool's wrangler.toml: the bridge's compatibility date, and bindings DB_0 … DB_{POOL_SIZE-1}.
fn pool_config() -> String {
    let bridge = std::fs::read_to_string(repository().join("d1-bridge/wrangler.toml")).unwrap();
    let date = bridge.lines().find(|l| l.starts_with("compatibility_date")).expect("the bridge's compatibility_date");
    let mut config = format!("name = \"ensemble-d1-pool\"\nmain = \"src/pool.js\"\n{date}\n");
    for n in 0..POOL_SIZE {
        let id = pool_database_id(n);
        config.push_str(&format!(
            "\n[[d1_databases]]\nbinding = \"DB_{n}\"\ndatabase_name = \"{id}\"\ndatabase_id = \"{id}\"\n"
        ));
        if n == 0 {
            config.push_str("migrations_dir = \"../migration/sql\"\n");
        }
    }
    config
}

/// The name Miniflare gives the file of local D1 database `id`: its Durable Object's id from
/// `idFromName(id)` in the namespace `miniflare-D1DatabaseObject` (miniflare's
/// durableObjectNamespaceIdFromName). `Pool::start` checks it against the file wrangler made.
fn local_d1_file(id: &str) -> String {
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let key = Sha256::digest(b"miniflare-D1DatabaseObject");
    let hmac = |data: &[u8]| {
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(data);
        mac.finalize().into_bytes()[..16].to_vec()
    };
    let name = hmac(id.as_bytes());
    let check = hmac(&name);
    hex::encode([name, check].concat())
}

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to.parent().unwrap()).unwrap();
    let status = Command::new("cp").arg("-R").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

/// A wrangler command run from `folder`, offline, without telemetry, writing nothing outside `dir`.
fn wrangler_command(wrangler: &Path, dir: &Path, folder: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(wrangler);
    command.args(args).current_dir(folder);
    for (name, value) in [
        ("WRANGLER_SEND_METRICS", "false"),
        ("CI", "true"),
        ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
        ("WRANGLER_HIDE_BANNER", "true"),
        ("NO_COLOR", "1"),
    ] {
        command.env(name, value);
    }
    command.env("XDG_CONFIG_HOME", dir.join("config")).env("WRANGLER_LOG_PATH", dir.join("logs"));
    command
}

fn apply_migrations(wrangler: &Path, dir: &Path, folder: &Path, binding: &str, state: &Path) {
    let args = ["d1", "migrations", "apply", binding, "--local", "--persist-to", state.to_str().unwrap()];
    let applied = wrangler_command(wrangler, dir, folder, &args).output().unwrap();
    assert!(applied.status.success(), "migrations: {}", String::from_utf8_lossy(&applied.stderr));
}

/// Starts `wrangler dev --local` in `folder` over `state` on a free loopback port, in a process
/// group of its own, and waits until it serves; its output goes to `dir`/dev.log. If wrangler
/// exits first, it starts again on other ports, twice at most.
fn serve(wrangler: &Path, dir: &Path, folder: &Path, state: &Path, secret: &str) -> (Child, u16) {
    let mut failures = Vec::new();
    for _ in 0..3 {
        match start_on_a_free_port(wrangler, dir, folder, state, secret) {
            Ok(started) => return started,
            Err(log) => failures.push(log),
        }
    }
    panic!("wrangler dev exited before it served the Worker, three times:\n{}", failures.join("\n---\n"));
}

/// One attempt of [`serve`]: the process and the port it serves on, or its log if it exited.
fn start_on_a_free_port(
    wrangler: &Path,
    dir: &Path,
    folder: &Path,
    state: &Path,
    secret: &str,
) -> Result<(Child, u16), String> {
    let port = free_port();
    let (port_arg, inspector, secret) =
        (port.to_string(), free_port().to_string(), format!("ENSEMBLE_D1_SECRET:{secret}"));
    let args = [
        "dev",
        "--local",
        "--ip",
        "127.0.0.1",
        "--port",
        &port_arg,
        "--inspector-port",
        &inspector,
        "--persist-to",
        state.to_str().unwrap(),
        "--var",
        &secret,
        "--show-interactive-dev-session=false",
    ];
    let mut dev = wrangler_command(wrangler, dir, folder, &args);
    let log = std::fs::File::create(dir.join("dev.log")).unwrap();
    dev.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut dev, 0);
    let mut process = dev.spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(90);
    let log = || std::fs::read_to_string(dir.join("dev.log")).unwrap_or_default();
    // The port this wrangler says it serves on: the one asked for, or another when that one was
    // taken meanwhile (another test's workerd binds ports of its own, and may answer there as
    // the same Worker over another database). Listening is not serving yet: then wait until the
    // Worker itself answers (its JSON 404 for `/`).
    let serving = |log: &str| {
        let (_, rest) = log.split_once("Ready on http://127.0.0.1:")?;
        rest.split(|c: char| !c.is_ascii_digit()).next()?.parse::<u16>().ok()
    };
    loop {
        if let Some(port) = serving(&log()).filter(|port| answers_as_the_worker(*port)) {
            return Ok((process, port));
        }
        if process.try_wait().ok().flatten().is_some() {
            stop(&mut process);
            return Err(log());
        }
        if Instant::now() > deadline {
            stop(&mut process);
            panic!("wrangler dev did not serve the Worker on {port} within 90 s:\n{}", log());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Whether the Worker on `port` answers `GET /` with its own NOT_FOUND (wrangler can accept
/// connections before the Worker is loaded, and answer them with an empty 404).
fn answers_as_the_worker(port: u16) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else { return false };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
    let mut answer = String::new();
    stream.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_ok()
        && stream.read_to_string(&mut answer).is_ok()
        && answer.contains("NOT_FOUND")
}

/// Stops wrangler and the workerd it runs (its process group): SIGTERM, then SIGKILL after 10 s.
fn stop(process: &mut Child) {
    let group = process.id() as i32;
    unsafe { libc::kill(-group, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while process.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    kill_group(group);
    let _ = process.wait();
}

fn kill_group(group: i32) {
    // SAFETY: signals the process group this harness started.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}
