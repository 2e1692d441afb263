//! Cloudflare D1 for the tests that need it: `wrangler dev --local` serving the bridge Worker
//! over a fresh local D1 with migration/sql applied (`Bridge`), run only when `ENSEMBLE_TEST_D1=1`
//! (`wrangler()` prints why a test skips otherwise). Included with `#[path]` by the D1 test binaries.

#![allow(dead_code)]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Once,
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
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let dir = tempfile::tempdir().unwrap();
        let copy = |from: &Path, to: &Path| {
            let status = Command::new("cp").arg("-R").arg(from).arg(to).status().unwrap();
            assert!(status.success(), "cp {} {}", from.display(), to.display());
        };
        std::fs::create_dir_all(dir.path().join("bridge")).unwrap();
        std::fs::create_dir_all(dir.path().join("migration")).unwrap();
        copy(&root.join("d1-bridge/src"), &dir.path().join("bridge/src"));
        copy(&root.join("d1-bridge/wrangler.toml"), &dir.path().join("bridge/wrangler.toml"));
        copy(&root.join("migration/sql"), &dir.path().join("migration/sql"));
        let state = dir.path().join("state");
        let run = |args: &[&str]| {
            let mut command = Command::new(wrangler);
            command.args(args).current_dir(dir.path().join("bridge"));
            // Offline, no telemetry, nothing written outside the folder (as scripts/d1-bridge-tests).
            for (name, value) in [
                ("WRANGLER_SEND_METRICS", "false"),
                ("CI", "true"),
                ("CLOUDFLARE_CF_FETCH_ENABLED", "false"),
                ("WRANGLER_HIDE_BANNER", "true"),
                ("NO_COLOR", "1"),
            ] {
                command.env(name, value);
            }
            command.env("XDG_CONFIG_HOME", dir.path().join("config")).env("WRANGLER_LOG_PATH", dir.path().join("logs"));
            command
        };
        let applied = run(&["d1", "migrations", "apply", "DB", "--local", "--persist-to", state.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(applied.status.success(), "migrations: {}", String::from_utf8_lossy(&applied.stderr));

        let port = free_port();
        let secret = format!("ENSEMBLE_D1_SECRET:{SECRET}");
        let inspector = free_port().to_string();
        let mut dev = run(&[
            "dev",
            "--local",
            "--ip",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--inspector-port",
            &inspector,
            "--persist-to",
            state.to_str().unwrap(),
            "--var",
            &secret,
            "--show-interactive-dev-session=false",
        ]);
        let log = std::fs::File::create(dir.path().join("dev.log")).unwrap();
        dev.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut dev, 0);
        let process = dev.spawn().unwrap();
        let bridge = Self { url: format!("d1+http://127.0.0.1:{port}"), process, _dir: dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            let log = std::fs::read_to_string(bridge._dir.path().join("dev.log")).unwrap_or_default();
            assert!(Instant::now() < deadline, "wrangler dev did not listen on {port} within 60 s:\n{log}");
            std::thread::sleep(Duration::from_millis(200));
        }
        bridge
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // The process group started above: wrangler and the workerd it runs.
        let group = self.process.id() as i32;
        unsafe { libc::kill(-group, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.process.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        unsafe { libc::kill(-group, libc::SIGKILL) };
        let _ = self.process.wait();
    }
}
