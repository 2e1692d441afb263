//! What the binary writes where: a command's result alone on stdout, logs on stderr without
//! colour unless on a terminal (and not even there with `NO_COLOR`), one line per fatal error.

use std::{process::Stdio, time::Duration};

use serde_json::json;

use crate::{
    cli::process::{Ran, finish_within, serving, stderr_on_a_terminal},
    common,
};

const ESC: char = '\u{1b}';

#[tokio::test]
async fn token_prints_only_the_token_and_says_on_stderr_where_it_made_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut command = common::ensemble();
    command
        .args(["token", "--user", "alice", "--role", "admin"])
        .env("ENSEMBLE_DATA_DIR", &data)
        .env_remove("NO_COLOR");
    let first = finish_within(command, Duration::from_secs(120));
    assert!(first.status.success(), "{}", first.stderr);

    let token = first.stdout.strip_suffix('\n').expect("one line");
    assert!(
        !token.contains(char::is_whitespace) && token.split('.').count() == 3,
        "stdout is the token alone: {:?}",
        first.stdout
    );
    let key = std::path::absolute(data.join("dev-jwt-key.pem")).unwrap();
    assert!(key.is_file());
    assert_eq!(
        first.stderr,
        format!(
            "created a new dev signing key at {}: servers using this data folder accept the tokens it signs\n",
            key.display()
        )
    );

    // What `TOKEN=$(ensemble token …)` captured works against a server using that folder.
    let app = common::TestApp::spawn_with(|config| config.data_dir = data.clone()).await;
    let (status, body) = app.gql_as(token, "{ me { id role } }", json!({})).await;
    assert_eq!((status, &body["data"]["me"]), (200, &json!({"id": "alice", "role": "ADMIN"})), "{body}");

    let mut again = common::ensemble();
    again.args(["token", "--user", "bob"]).env("ENSEMBLE_DATA_DIR", &data);
    let second = finish_within(again, Duration::from_secs(60));
    assert!(
        second.status.success() && second.stderr.is_empty(),
        "nothing to say with a key in place: {}",
        second.stderr
    );
}

#[test]
fn migrate_writes_its_result_to_stdout_and_its_logs_uncoloured_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = common::ensemble();
    command
        .args(["migrate", "up"])
        .env("DATABASE_URL", format!("sqlite://{}/m.db", dir.path().display()))
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR");
    let ran = finish_within(command, Duration::from_secs(60));
    assert!(ran.status.success(), "{}", ran.stderr);
    for line in ran.stdout.lines() {
        assert!(line.starts_with("applied  m"), "stdout holds only the status list: {line:?}");
    }
    assert!(ran.stderr.contains("INFO"), "the logs asked for are on stderr: {}", ran.stderr);
    assert!(!ran.stderr.contains(ESC), "no colour on a pipe: {:?}", ran.stderr);
}

#[test]
fn the_server_logs_to_stderr_and_leaves_stdout_empty() {
    let dir = tempfile::tempdir().unwrap();
    let mut command = serving(dir.path(), "127.0.0.1:0");
    // Refusing to start is the quickest full run: the start-up logs, then the error.
    command.env("ENSEMBLE_AUTO_MIGRATE", "false").env_remove("NO_COLOR");
    let ran = finish_within(command, Duration::from_secs(60));
    assert!(!ran.status.success());
    assert_eq!(ran.stdout, "");
    assert!(ran.stderr.contains("INFO starting"), "{}", ran.stderr);
    assert!(!ran.stderr.contains(ESC), "no colour on a pipe: {:?}", ran.stderr);
}

#[test]
fn on_a_terminal_logs_are_coloured_unless_no_color_is_set() {
    let dir = tempfile::tempdir().unwrap();
    let migrate = |database: &str, no_color: Option<&str>| {
        let mut command = common::ensemble();
        command
            .args(["migrate", "up"])
            .env("DATABASE_URL", format!("sqlite://{}/{database}.db", dir.path().display()))
            .env("RUST_LOG", "info")
            .env_remove("NO_COLOR");
        if let Some(value) = no_color {
            command.env("NO_COLOR", value);
        }
        stderr_on_a_terminal(command)
    };
    let coloured = migrate("a", None);
    assert!(coloured.contains("INFO") && coloured.contains(ESC), "{coloured:?}");
    let plain = migrate("b", Some("1"));
    assert!(plain.contains("INFO") && !plain.contains(ESC), "{plain:?}");
    // An empty NO_COLOR does not count (https://no-color.org).
    assert!(migrate("c", Some("")).contains(ESC));
}

#[test]
fn a_fatal_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let once = |ran: &Ran, about: &str| {
        assert!(!ran.status.success());
        let lines: Vec<&str> = ran.stderr.lines().filter(|line| line.contains(about)).collect();
        assert_eq!(lines.len(), 1, "{}", ran.stderr);
        assert!(lines[0].starts_with("error: "), "{}", ran.stderr);
    };
    let mut migrate = common::ensemble();
    migrate.args(["migrate", "status"]).env("DATABASE_URL", "sqlite:///proc/ensemble/nope.db");
    once(&finish_within(migrate, Duration::from_secs(60)), "cannot create the folder");

    let mut serve = serving(dir.path(), "127.0.0.1:0");
    serve.env("ENSEMBLE_AUTO_MIGRATE", "false");
    once(&finish_within(serve, Duration::from_secs(60)), "pending migration");
}

#[test]
fn a_reader_that_goes_away_ends_the_command_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let output = common::ensemble().arg("schema").stdout(writer).stderr(Stdio::piped()).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stderr), "", "no panic about the closed pipe");
}
