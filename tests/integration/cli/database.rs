//! `DATABASE_URL` at the command line: its password never shows, a URL Ensemble does not speak
//! gets a suggestion, a closed port is "connection refused", and pending migrations with
//! `ENSEMBLE_AUTO_MIGRATE=false` keep the server from starting.

use std::{path::Path, process::Command, time::Duration};

use crate::{
    cli::process::{Ran, SECRET, Server, closed_port, finish_within, serving},
    common::{self, PG_ENV, PgDatabase},
};

/// `ensemble ARGS` on `url`, run in `dir`, serving on a free port when it serves.
fn on(dir: &Path, url: &str, args: &[&str]) -> Command {
    let mut command = common::ensemble();
    command
        .args(args)
        .current_dir(dir)
        .env("DATABASE_URL", url)
        .env("ENSEMBLE_LISTEN", "127.0.0.1:0")
        .env("ENSEMBLE_DATA_DIR", dir.join("data"));
    command
}

/// Runs every command at once (each may wait out a connection timeout) and answers their runs.
fn all_at_once(commands: Vec<Command>) -> Vec<Ran> {
    let runs: Vec<_> = commands
        .into_iter()
        .map(|command| std::thread::spawn(move || finish_within(command, Duration::from_secs(60))))
        .collect();
    runs.into_iter().map(|run| run.join().unwrap()).collect()
}

#[test]
fn the_database_password_never_shows_even_where_a_driver_echoes_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let urls = [
        // The driver echoes these whole: "The connection string '…' has no supporting driver".
        format!("sqllite://app:{SECRET}@db.internal/ensemble"),
        format!("postgres://app:{SECRET}@db.internal:99999/ensemble"),
        format!("postgres://app:{SECRET}@/ensemble?host=/nonexistent"),
        // A password as a query parameter.
        format!("postgres://app@127.0.0.1:{port}/ensemble?sslmode=disable&password={SECRET}"),
        format!("postgres://app:{SECRET}@127.0.0.1:{port}/ensemble"),
    ];
    let commands = urls.iter().flat_map(|url| {
        let on = |args: &[&str]| on(dir.path(), url, args);
        [on(&[]), on(&["migrate", "status"]), on(&["backup", "list"])]
    });
    for ran in all_at_once(commands.collect()) {
        assert!(!ran.status.success());
        assert!(ran.stderr.contains("error: "), "{}", ran.stderr);
        assert!(!ran.everything().contains(SECRET), "the password shows:\n{}", ran.everything());
    }
}

#[test]
fn a_database_url_without_a_scheme_ensemble_speaks_gets_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("data/ensemble.db", "has no scheme: did you mean sqlite://data/ensemble.db?"),
        ("sqllite://data/ensemble.db", "did you mean sqlite://data/ensemble.db?"),
        ("sqlite3:data/ensemble.db", "did you mean sqlite:data/ensemble.db?"),
        ("postgress://app:pw@db.internal/ensemble", "did you mean postgres://app:***@db.internal/ensemble?"),
    ];
    for (url, suggestion) in cases {
        for args in [&[][..], &["migrate", "up"], &["backup", "list"]] {
            let output = on(dir.path(), url, args).output().unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr);
            assert!(!output.status.success(), "{url} {args:?}");
            assert!(stderr.contains(suggestion), "{url} {args:?}: {stderr}");
        }
    }
    assert!(!dir.path().join("data").exists(), "nothing was created for a URL that was refused");
}

#[test]
fn postgresql_on_a_closed_port_is_reported_as_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let port = closed_port();
    let hosts = ["127.0.0.1", "localhost"];
    let urls: Vec<String> =
        hosts.iter().map(|host| format!("postgres://app:{SECRET}@{host}:{port}/ensemble")).collect();
    let commands = urls.iter().flat_map(|url| [on(dir.path(), url, &[]), on(dir.path(), url, &["migrate", "up"])]);
    for ran in all_at_once(commands.collect()) {
        assert!(!ran.status.success());
        assert!(ran.stderr.contains("connection refused: nothing listens on"), "{}", ran.stderr);
        assert!(ran.stderr.contains(&format!(":{port} (is PostgreSQL running there?)")), "{}", ran.stderr);
        assert!(!ran.stderr.contains("pool timed out"), "{}", ran.stderr);
    }
}

/// Each database the tests can reach: a SQLite file in `dir`, and PostgreSQL when configured.
async fn databases(dir: &Path) -> Vec<(String, Option<PgDatabase>)> {
    let mut all = vec![(format!("sqlite://{}/pending.db", dir.display()), None)];
    match std::env::var(PG_ENV) {
        Ok(admin) if !admin.is_empty() => {
            let pg = PgDatabase::create(&admin).await;
            all.push((pg.url.clone(), Some(pg)));
        }
        _ => {}
    }
    all
}

#[tokio::test]
async fn with_auto_migrate_off_pending_migrations_keep_the_server_from_starting() {
    let dir = tempfile::tempdir().unwrap();
    for (url, _pg) in databases(dir.path()).await {
        let port = closed_port();
        let start = || {
            let mut command = serving(dir.path(), &format!("127.0.0.1:{port}"));
            command.env("DATABASE_URL", &url).env("ENSEMBLE_AUTO_MIGRATE", "false");
            command
        };
        let first = start();
        let refused = tokio::task::spawn_blocking(move || finish_within(first, Duration::from_secs(60))).await.unwrap();
        assert!(!refused.status.success(), "{url}");
        assert!(refused.stderr.contains("pending migration(s)"), "{url}: {}", refused.stderr);
        assert!(refused.stderr.contains("run `ensemble migrate up`"), "{url}: {}", refused.stderr);
        assert!(!refused.stderr.contains("ready"), "{url}: {}", refused.stderr);

        let migrated = common::ensemble().args(["migrate", "up"]).env("DATABASE_URL", &url).output().unwrap();
        assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
        drop(Server::ready(start(), port).await);
    }
}
