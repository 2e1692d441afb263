//! Options: each command's help shows its own; a refused value names the environment variable
//! it came from; `localhost:PORT` is an address to listen on.

use std::time::Duration;

use crate::{
    cli::process::{Server, closed_port, finish_within, serving},
    common,
};

/// Variables only the server reads: no other command's help may mention them.
const SERVER_ONLY: [&str; 6] = [
    "ENSEMBLE_RATE_LIMIT_PER_MINUTE",
    "ENSEMBLE_LIMIT_DEPTH",
    "ENSEMBLE_WS_KEEPALIVE_SECS",
    "CLERK_ISSUER",
    "REDIS_URL",
    "ENSEMBLE_AUTO_MIGRATE",
];

fn help(args: &[&str]) -> String {
    let output = common::ensemble().args(args).arg("--help").output().unwrap();
    assert!(output.status.success(), "{args:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn each_command_shows_only_its_own_options() {
    let own: [(&[&str], &[&str]); 7] = [
        (&["token"], &["--user", "--role", "--ttl", "ENSEMBLE_DATA_DIR"]),
        (&["migrate"], &["up", "down", "status", "export-d1", "DATABASE_URL"]),
        (&["migrate", "up"], &["--steps", "DATABASE_URL"]),
        (&["backup"], &["create", "restore", "DATABASE_URL", "ENSEMBLE_DATA_DIR"]),
        (&["backup", "create"], &["--label", "DATABASE_URL"]),
        (&["healthcheck"], &["--url", "ENSEMBLE_LISTEN"]),
        (&["schema"], &[]),
    ];
    for (command, options) in own {
        let text = help(command);
        assert!(text.lines().count() < 30, "{command:?} --help is {} lines:\n{text}", text.lines().count());
        for option in options {
            assert!(text.contains(option), "{command:?} --help lacks {option}:\n{text}");
        }
        for server_only in
            SERVER_ONLY.iter().chain(if command == ["healthcheck"] { &[][..] } else { &["ENSEMBLE_LISTEN"][..] })
        {
            assert!(!text.contains(server_only), "{command:?} --help shows {server_only}:\n{text}");
        }
    }
}

#[test]
fn serve_and_the_bare_command_show_every_server_option() {
    assert!(help(&[]).starts_with("Build, version, share, run and watch teams of AI agents"), "{}", help(&[]));
    for command in [&["serve"][..], &[][..]] {
        let text = help(command);
        for var in
            SERVER_ONLY.iter().chain(&["ENSEMBLE_LISTEN", "DATABASE_URL", "ENSEMBLE_DATA_DIR", "ENSEMBLE_LOG_FORMAT"])
        {
            assert!(text.contains(&format!("[env: {var}")), "{command:?} --help lacks {var}");
        }
    }
}

#[test]
fn a_refused_value_names_the_environment_variable_it_came_from() {
    let refused = |args: &[&str], env: (&str, &str)| {
        let output = common::ensemble().args(args).env(env.0, env.1).output().unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        String::from_utf8(output.stderr).unwrap()
    };
    let from_env = refused(&[], ("ENSEMBLE_LISTEN", "foo"));
    assert!(from_env.contains("invalid value 'foo' for 'ENSEMBLE_LISTEN'"), "{from_env}");
    assert!(from_env.contains("localhost:8080"), "says what would do: {from_env}");
    let pool = refused(&["serve"], ("ENSEMBLE_DB_POOL_SIZE", "ten"));
    assert!(pool.contains("'ENSEMBLE_DB_POOL_SIZE'"), "{pool}");
    let log_format = refused(&["schema"], ("ENSEMBLE_LOG_FORMAT", "xml"));
    assert!(log_format.contains("'ENSEMBLE_LOG_FORMAT'"), "{log_format}");
    // The same value given as a flag names the flag.
    let from_flag = refused(&["--listen", "foo"], ("ENSEMBLE_LISTEN", "127.0.0.1:0"));
    assert!(from_flag.contains("for '--listen <LISTEN>'") && !from_flag.contains("'ENSEMBLE_LISTEN'"), "{from_flag}");
}

#[test]
fn the_log_format_may_come_before_the_command() {
    let dir = tempfile::tempdir().unwrap();
    let output = common::ensemble()
        .args(["--log-format", "json", "migrate", "up"])
        .env("DATABASE_URL", format!("sqlite://{}/f.db", dir.path().display()))
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(!stderr.is_empty() && stderr.lines().all(|line| line.starts_with('{')), "JSON lines: {stderr}");
}

#[test]
fn a_command_does_not_read_the_servers_settings() {
    let output =
        common::ensemble().arg("schema").env("ENSEMBLE_LISTEN", "foo").env("ENSEMBLE_ENV", "prod").output().unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
}

#[tokio::test]
async fn localhost_and_a_port_is_an_address_to_listen_on() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let listen = format!("localhost:{port}");
    let server = Server::ready(serving(dir.path(), &listen), port).await;
    assert!(server.stderr().contains(&format!("http://127.0.0.1:{port}/")), "{}", server.stderr());
    let mut healthcheck = common::ensemble();
    healthcheck.arg("healthcheck").env("ENSEMBLE_LISTEN", &listen);
    let ran = finish_within(healthcheck, Duration::from_secs(30));
    assert!(ran.status.success(), "{}", ran.stderr);
}
