//! The `ensemble` binary: help, migrations by hand, the schema, start-up failures and a
//! graceful stop on SIGTERM; in `cli/`, what it writes where, its options, `DATABASE_URL`
//! and `ensemble healthcheck`.

mod database;
mod healthcheck;
mod options;
mod output;
mod process;

use crate::common;

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
};

use common::{PG_ENV, PgDatabase, WsClient};
use serde_json::json;

/// A database for one test: PostgreSQL when configured, else a SQLite file in `dir`.
async fn database(dir: &Path) -> (String, Option<PgDatabase>) {
    match std::env::var(PG_ENV) {
        Ok(url) if !url.is_empty() => {
            let pg = PgDatabase::create(&url).await;
            (pg.url.clone(), Some(pg))
        }
        _ => (format!("sqlite://{}/cli.db", dir.display()), None),
    }
}

#[test]
fn help_documents_every_option_with_its_environment_variable() {
    let output = common::ensemble().arg("--help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for var in [
        "ENSEMBLE_LISTEN",
        "DATABASE_URL",
        "ENSEMBLE_DB_POOL_SIZE",
        "ENSEMBLE_DATA_DIR",
        "ENSEMBLE_ENV",
        "ENSEMBLE_AUTO_MIGRATE",
        "ENSEMBLE_CORS_ORIGINS",
        "ENSEMBLE_LOG_FORMAT",
        "ENSEMBLE_REQUEST_TIMEOUT",
        "ENSEMBLE_LIMIT_DEPTH",
        "ENSEMBLE_LIMIT_COMPLEXITY",
        "ENSEMBLE_LIMIT_ALIASES",
        "ENSEMBLE_LIMIT_BODY_BYTES",
        "ENSEMBLE_LIMIT_BATCH",
        "ENSEMBLE_WS_KEEPALIVE_SECS",
    ] {
        assert!(help.contains(&format!("[env: {var}")), "--help lacks {var}:\n{help}");
    }
    for command in ["serve", "migrate", "schema"] {
        assert!(help.contains(command), "--help lacks {command}");
    }
}

#[test]
fn the_database_password_never_reaches_the_help_text() {
    let output = common::ensemble().arg("--help").env("DATABASE_URL", "postgres://u:s3cret@h/db").output().unwrap();
    assert!(!String::from_utf8_lossy(&output.stdout).contains("s3cret"));
}

#[tokio::test]
async fn migrate_up_status_and_down_by_hand() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _pg) = database(dir.path()).await;
    let run = |args: &[&str]| {
        let output = common::ensemble().args(["migrate"]).args(args).env("DATABASE_URL", &url).output().unwrap();
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(run(&["status"]).contains("pending  m0001_identity"));
    assert!(run(&["up"]).contains("applied  m0001_identity"));
    assert!(run(&["status"]).contains("applied  m0001_identity"));
    use migration::MigratorTrait;
    let all = migration::Migrator::migrations().len().to_string();
    let reverted = run(&["down", "--steps", &all]);
    assert!(!reverted.contains("applied"), "everything reverted:\n{reverted}");
    assert_eq!(reverted.lines().count(), migration::Migrator::migrations().len());
}

#[tokio::test]
async fn ensemble_token_prints_a_token_the_server_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    common::install_dev_key(&data);
    let output = common::ensemble()
        .args(["token", "--user", "alice", "--role", "admin", "--ttl", "15m"])
        .env("ENSEMBLE_DATA_DIR", &data)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let token = String::from_utf8(output.stdout).unwrap().trim().to_string();
    let app = common::TestApp::spawn().await;
    let (status, body) = app.gql_as(&token, "{ me { id role } }", json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["data"]["me"], json!({"id": "alice", "role": "ADMIN"}));
}

#[test]
fn ensemble_token_refuses_when_clerk_issues_tokens() {
    let output = common::ensemble()
        .args(["token", "--user", "alice"])
        .env("CLERK_JWKS_URL", "https://clerk.example/.well-known/jwks.json")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("Clerk issues the tokens"));
}

#[test]
fn the_first_start_creates_the_data_folder_and_database_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::ensemble().args(["migrate", "up"]).current_dir(dir.path()).output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(dir.path().join("data/ensemble.db").is_file());
}

#[test]
fn schema_prints_the_committed_sdl() {
    let output = common::ensemble().arg("schema").output().unwrap();
    assert!(output.status.success());
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql")).unwrap();
    assert!(String::from_utf8(output.stdout).unwrap() == committed, "schema.graphql is stale");
}

#[test]
fn an_unreachable_database_at_start_exits_non_zero_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::ensemble()
        .env("DATABASE_URL", "postgres://app:hunter2@127.0.0.1:1/ensemble")
        .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "error: cannot connect to the database at `postgres://app:***@127.0.0.1:1/ensemble`: connection refused"
        ),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"));
}

#[test]
fn a_sqlite_file_that_cannot_be_created_exits_non_zero() {
    let output = common::ensemble().env("DATABASE_URL", "sqlite:///proc/ensemble/nope.db").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("cannot create the folder /proc/ensemble"), "{stderr}");
}

#[test]
fn an_unknown_environment_name_is_refused() {
    let output = common::ensemble().env("ENSEMBLE_ENV", "prod").output().unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("invalid value 'prod' for 'ENSEMBLE_ENV'"), "{stderr}");
    assert!(stderr.contains("possible values: development, production"), "{stderr}");
}

/// The lines `ensemble` logs at start, up to its ready line, with `env` set; then it is stopped.
async fn start_up_log(env: &[(&str, &str)]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let (url, _pg) = database(dir.path()).await;
    common::install_dev_key(&dir.path().join("data"));
    let mut command = common::ensemble();
    command
        .env("DATABASE_URL", &url)
        .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
        .env("ENSEMBLE_DATA_DIR", dir.path().join("data"))
        .stderr(Stdio::piped());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.spawn().unwrap();
    let mut seen = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let ready = line.contains("GraphiQL at http://");
        seen.push(line);
        if ready {
            break;
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
    seen
}

#[tokio::test]
async fn a_run_wait_as_long_as_the_request_time_limit_is_warned_about_at_start() {
    let warning = "ENSEMBLE_RUN_WAIT_SECS (40) is not below ENSEMBLE_REQUEST_TIMEOUT (30)";
    let log = start_up_log(&[("ENSEMBLE_RUN_WAIT_SECS", "40"), ("ENSEMBLE_REQUEST_TIMEOUT", "30")]).await;
    assert!(log.iter().any(|line| line.contains(warning) && line.contains("WARN")), "{log:#?}");
    let log = start_up_log(&[]).await;
    assert!(log.iter().all(|line| !line.contains("ENSEMBLE_RUN_WAIT_SECS")), "not with the defaults: {log:#?}");
}

#[tokio::test]
async fn sigterm_closes_websockets_and_exits_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let (url, _pg) = database(dir.path()).await;
    common::install_dev_key(&dir.path().join("data"));
    let mut child = common::ensemble()
        .env("DATABASE_URL", &url)
        .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
        .env("ENSEMBLE_DATA_DIR", dir.path().join("data"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server log").unwrap();
        if let Some(rest) = line.split("GraphiQL at http://").nth(1) {
            break rest.split('/').next().unwrap().parse().unwrap();
        }
    };
    let mut ws = WsClient::acked(addr).await;
    ws.send(json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { heartbeat(intervalSeconds: 1) { seq } }"}})).await;
    assert_eq!(ws.next_json().await["type"], "next");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(killed.success());
    assert_eq!(ws.closed().await, (1001, "Server shutting down".to_string()));
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status:?}");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert!(rest.iter().any(|l| l.contains("shutting down")), "{rest:?}");
}
