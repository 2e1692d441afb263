//! Backups: taken over GraphQL and with the CLI while the server serves, listed, verified,
//! deleted, pruned and scheduled; restored with the CLI only once the file checks out and no
//! server holds the database; and the faults — damaged files, a newer migration level, a folder
//! that cannot be written, a backup in the middle of a write burst. On PostgreSQL every backup
//! operation is BAD_USER_INPUT pointing to the operations guide.

use crate::common;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::Duration,
};

use common::{
    TestApp, first_code,
    meanwhile::{Meanwhile, sql},
};
use ensemble::{
    domain::{Caller, GlobalRole, Principal},
    service::backups::Backups,
};
use entity::{audit_logs, backups, team_members, team_versions, teams};
use migration::MigratorTrait;
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DatabaseConnection, DbBackend, EntityTrait, PaginatorTrait, QueryFilter,
    QueryTrait, Statement,
};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const CREATE: &str = "mutation($label: String) { createBackup(label: $label) { id file label bytes sha256 migration createdAt verifiedAt } }";
const LIST: &str = "{ backups { id file label } }";
const DELETE: &str = "mutation($id: ID!) { deleteBackup(id: $id) { id file } }";
const CREATE_TEAM: &str = "mutation($name: String!) { createTeam(input: {name: $name}) { id } }";
const RESPEC: &str = "mutation($id: ID!, $n: String!) { updateTeam(id: $id, input: {spec: {format: \"ensemble.team/v1\", agents: [{name: $n, model: \"local/echo\"}]}}) { version } }";

/// The newest migration this build knows.
fn latest_level() -> String {
    migration::Migrator::migrations().last().unwrap().name().to_string()
}

fn sha256_of(path: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(path).unwrap()))
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

/// A SQLite database and data folder of a test's own, which outlive the servers run on them.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Self {
        let site = Self { dir: tempfile::tempdir().unwrap() };
        common::install_dev_key(&site.data());
        site
    }

    fn database(&self) -> PathBuf {
        self.dir.path().join("db/ensemble.db")
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.database().display())
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn backups(&self) -> PathBuf {
        self.data().join("backups")
    }

    /// The `ensemble` binary pointed at this site.
    fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ensemble"));
        for var in ["ENSEMBLE_LISTEN", "ENSEMBLE_ENV", "RUST_LOG", "ENSEMBLE_BACKUP_INTERVAL"] {
            command.env_remove(var);
        }
        command.env("DATABASE_URL", self.url()).env("ENSEMBLE_DATA_DIR", self.data()).env("NO_COLOR", "1");
        command
    }

    fn cli(&self, args: &[&str]) -> Output {
        self.command().args(args).output().unwrap()
    }

    /// Runs a CLI command that must succeed; answers its standard output.
    fn ok(&self, args: &[&str]) -> String {
        let output = self.cli(args);
        assert!(output.status.success(), "{args:?} failed: {}", stderr(&output));
        stdout(&output)
    }

    /// A migrated database with one backup taken by the CLI; answers the backup's path.
    fn with_backup(&self) -> PathBuf {
        self.ok(&["migrate", "up"]);
        let created = self.ok(&["backup", "create", "--label", "first"]);
        let path = created.trim_start_matches("created ").split(" (").next().unwrap();
        PathBuf::from(path)
    }

    /// The server in this process, on this site's database.
    async fn serve_here(&self, adjust: impl FnOnce(&mut ensemble::config::Config)) -> TestApp {
        TestApp::spawn_with(|config| {
            config.database_url = self.url();
            config.data_dir = self.data();
            config.db_pool_size = Some(4);
            adjust(config);
        })
        .await
    }

    /// The real binary serving this site, until `stop`.
    fn serve(&self) -> Server {
        let mut child = self.command().env("ENSEMBLE_LISTEN", "127.0.0.1:0").stderr(Stdio::piped()).spawn().unwrap();
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let addr = loop {
            let line = lines.next().expect("server log").unwrap();
            if let Some(rest) = line.split("GraphiQL at http://").nth(1) {
                break rest.split('/').next().unwrap().parse().unwrap();
            }
        };
        // Keep reading so the server never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        let token = self.ok(&["token", "--user", "user_admin", "--role", "admin"]).trim().to_string();
        Server { child, addr, token }
    }

    /// Everything restoring must leave alone: the database's checksum and no files beside it.
    fn untouched(&self, before: &str) {
        assert_eq!(sha256_of(&self.database()), before, "the database changed");
        let beside: Vec<String> = std::fs::read_dir(self.database().parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|name| name.contains("pre-restore") || name.contains("restoring"))
            .collect();
        assert!(beside.is_empty(), "left behind: {beside:?}");
    }
}

struct Server {
    child: Child,
    addr: SocketAddr,
    token: String,
}

impl Server {
    async fn gql(&self, query: &str, variables: Value) -> Value {
        let body = json!({"query": query, "variables": variables});
        let url = format!("http://{}/graphql", self.addr);
        let response = reqwest::Client::new().post(url).bearer_auth(&self.token).json(&body).send().await.unwrap();
        let answer: Value = response.json().await.unwrap();
        assert!(answer.get("errors").is_none(), "{answer}");
        answer["data"].clone()
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(mut self) {
        let killed = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().unwrap();
        assert!(killed.success());
        assert!(self.child.wait().unwrap().success());
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn open(path: &Path) -> DatabaseConnection {
    Database::connect(format!("sqlite://{}", path.display())).await.unwrap()
}

async fn team_names(server: &Server) -> Vec<String> {
    let data = server.gql("{ teams(first: 50) { nodes { name } } }", json!({})).await;
    data["teams"]["nodes"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_string()).collect()
}

#[tokio::test]
async fn admins_take_list_and_delete_backups_and_postgres_points_to_pg_dump() {
    let app = TestApp::spawn().await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    // PostgreSQL and D1 keep their own backups: the operations say where to look.
    let elsewhere = match app.state.db.get_database_backend() {
        DbBackend::Postgres => Some(["pg_dump", "docs/operations.md"]),
        _ if ensemble::db::is_proxy(&app.state.db) => Some(["time-travel", "docs/operations.md"]),
        _ => None,
    };
    if let Some(words) = elsewhere {
        for (query, variables) in [(CREATE, json!({})), (LIST, json!({})), (DELETE, json!({"id": "bak_x"}))] {
            let (_, body) = app.gql_as(&admin, query, variables).await;
            assert_eq!(first_code(&body), "BAD_USER_INPUT", "{body}");
            let message = body["errors"][0]["message"].as_str().unwrap();
            assert!(words.iter().all(|w| message.contains(w)), "{message}");
        }
        return;
    }
    let (_, body) = app.gql_as(&admin, CREATE, json!({"label": " before upgrade "})).await;
    let first = body["data"]["createBackup"].clone();
    assert_eq!(first["label"], "before upgrade", "{body}");
    assert_eq!(first["migration"], latest_level());
    assert!(first["verifiedAt"].is_string(), "verified when taken: {first}");
    let folder = app.state.config.data_dir.join("backups");
    let file = folder.join(first["file"].as_str().unwrap());
    assert_eq!(sha256_of(&file), first["sha256"].as_str().unwrap());
    assert_eq!(std::fs::metadata(&file).unwrap().len(), first["bytes"].as_u64().unwrap());
    let sidecar = std::fs::read_to_string(folder.join(format!("{}.sha256", first["file"].as_str().unwrap()))).unwrap();
    assert_eq!(sidecar, format!("{}  {}\n", first["sha256"].as_str().unwrap(), first["file"].as_str().unwrap()));

    let (_, body) = app.gql_as(&admin, CREATE, json!({})).await;
    let second = body["data"]["createBackup"].clone();
    let (_, body) = app.gql_as(&admin, LIST, json!({})).await;
    assert_eq!(
        body["data"]["backups"],
        json!([{"id": second["id"], "file": second["file"], "label": null},
        {"id": first["id"], "file": first["file"], "label": "before upgrade"}]),
        "newest first"
    );

    let (_, body) = app.gql_as(&admin, DELETE, json!({"id": first["id"]})).await;
    assert_eq!(body["data"]["deleteBackup"]["id"], first["id"], "{body}");
    assert!(!file.exists(), "the file goes with the row");
    let left: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "the second backup and its sidecar: {left:?}");
    let (_, body) = app.gql_as(&admin, DELETE, json!({"id": first["id"]})).await;
    assert_eq!(first_code(&body), "NOT_FOUND");
    let audited = |action: &'static str| {
        let rows = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq(action));
        rows.filter(audit_logs::Column::Result.eq("allowed")).count(&app.state.db)
    };
    assert_eq!((audited("backup.create").await.unwrap(), audited("backup.delete").await.unwrap()), (2, 1));
}

#[tokio::test]
async fn a_backup_whose_file_cannot_be_removed_is_kept_and_the_deletion_says_why() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let app = site.serve_here(|_| {}).await;
    let admin = app.token("user_admin", GlobalRole::Admin);
    let (_, body) = app.gql_as(&admin, CREATE, json!({"label": "keep me"})).await;
    let backup = body["data"]["createBackup"].clone();
    let file = site.backups().join(backup["file"].as_str().unwrap());
    let folder = site.backups();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root removes files whatever the folder's mode: there, a folder stands where the file was.
    let read_only = std::fs::write(folder.join("probe"), b"").is_err();
    let why = if read_only {
        "the folder is not writable"
    } else {
        std::fs::remove_file(folder.join("probe")).unwrap();
        std::fs::remove_file(&file).unwrap();
        std::fs::create_dir(&file).unwrap();
        "it is a folder, not a file"
    };
    let (_, body) = app.gql_as(&admin, DELETE, json!({"id": backup["id"]})).await;
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();

    assert_eq!(first_code(&body), "CONFLICT", "{body}");
    assert!(body["data"].is_null() || body["data"]["deleteBackup"].is_null(), "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains(backup["file"].as_str().unwrap()) && message.contains(why), "{message}");
    assert!(message.contains("The backup is kept"), "{message}");
    assert!(file.exists(), "the file is still there");
    let (_, body) = app.gql_as(&admin, LIST, json!({})).await;
    assert_eq!(body["data"]["backups"], json!([{"id": backup["id"], "file": backup["file"], "label": "keep me"}]));
    let audited = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("backup.delete"));
    assert_eq!(audited.count(&app.state.db).await.unwrap(), 0, "no deletion is recorded");
}

#[test]
fn the_cli_on_postgres_points_to_pg_dump_without_connecting() {
    let output = Command::new(env!("CARGO_BIN_EXE_ensemble"))
        .args(["backup", "create"])
        .env("DATABASE_URL", "postgres://app@127.0.0.1:1/ensemble")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("pg_dump") && stderr(&output).contains("docs/operations.md"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn the_cli_takes_lists_and_verifies_backups() {
    let site = Site::new();
    let file = site.with_backup();
    let name = file.file_name().unwrap().to_str().unwrap();
    assert!(file.starts_with(site.backups()), "{}", file.display());
    let listed = site.ok(&["backup", "list"]);
    assert!(listed.contains(name) && listed.contains("verified") && listed.contains("first"), "{listed}");
    assert!(site.ok(&["backup", "verify", name]).starts_with("ok: "));

    std::fs::write(&file, b"not the snapshot any more").unwrap();
    let output = site.cli(&["backup", "verify", file.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("does not match its checksum"), "{}", stderr(&output));
    assert!(site.ok(&["backup", "list"]).contains("NOT VERIFIED"), "a failed check clears verified_at");
}

#[tokio::test]
async fn a_restore_brings_the_backup_back_and_keeps_the_replaced_database() {
    let site = Site::new();
    let server = site.serve();
    server.gql(CREATE_TEAM, json!({"name": "Kept"})).await;
    let backup = server.gql(CREATE, json!({"label": "before"})).await["createBackup"].clone();
    server.gql(CREATE_TEAM, json!({"name": "Lost"})).await;
    server.stop();

    let restored = site.ok(&["backup", "restore", backup["file"].as_str().unwrap()]);
    assert!(restored.contains(&format!("migration level: {}", latest_level())), "{restored}");
    let teams = restored.lines().find(|l| l.trim_start().starts_with("teams ")).expect("a row count for teams");
    assert_eq!(teams.split_whitespace().last(), Some("1"), "{restored}");
    let kept = PathBuf::from(format!("{}.pre-restore", site.database().display()));
    assert!(restored.contains(&format!("kept as {}", kept.display())), "{restored}");
    let before = teams::Entity::find().filter(teams::Column::Name.eq("Lost")).count(&open(&kept).await).await;
    assert_eq!(before.unwrap(), 1, "the replaced database is kept whole");

    let server = site.serve();
    assert_eq!(team_names(&server).await, ["Kept"]);
    server.stop();
}

#[test]
fn restore_refuses_damaged_files_and_changes_nothing() {
    let site = Site::new();
    let file = site.with_backup();
    let before = sha256_of(&site.database());
    let bytes = std::fs::read(&file).unwrap();
    let copy = |name: &str, content: &[u8], sidecar: Option<String>| {
        let path = site.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        if let Some(sum) = sidecar {
            std::fs::write(format!("{}.sha256", path.display()), format!("{sum}  {name}\n")).unwrap();
        }
        path
    };
    let half = &bytes[..bytes.len() / 2];
    let cases = [
        (copy("truncated.db", half, Some(sha256_of(&file))), "does not match its checksum"),
        (copy("truncated-resummed.db", half, Some(hex::encode(Sha256::digest(half)))), "integrity check"),
        (copy("wrong-sum.db", &bytes, Some("0".repeat(64))), "does not match its checksum"),
        (copy("no-sum.db", &bytes, None), "has no checksum file"),
    ];
    for (path, why) in cases {
        let output = site.cli(&["backup", "restore", path.to_str().unwrap()]);
        assert!(!output.status.success(), "{} was restored", path.display());
        assert!(stderr(&output).contains(why), "{}: {}", path.display(), stderr(&output));
        site.untouched(&before);
    }
}

#[tokio::test]
async fn restore_refuses_a_backup_from_a_newer_migration_level_naming_both() {
    let site = Site::new();
    let file = site.with_backup();
    let before = sha256_of(&site.database());
    let future = site.dir.path().join("future.db");
    std::fs::copy(&file, &future).unwrap();
    let db = open(&future).await;
    let insert = "INSERT INTO seaql_migrations (version, applied_at) VALUES ('m9999_from_the_future', 0)";
    db.execute_raw(Statement::from_string(DbBackend::Sqlite, insert)).await.unwrap();
    db.close().await.unwrap();
    std::fs::write(site.dir.path().join("future.db.sha256"), format!("{}  future.db\n", sha256_of(&future))).unwrap();

    let output = site.cli(&["backup", "restore", future.to_str().unwrap()]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("m9999_from_the_future") && message.contains(&latest_level()), "{message}");
    assert!(message.contains("newer than this ensemble knows"), "{message}");
    site.untouched(&before);
}

#[tokio::test]
async fn restore_is_refused_while_a_server_holds_the_database() {
    let site = Site::new();
    let app = site.serve_here(|_| {}).await;
    let file = PathBuf::from(
        site.ok(&["backup", "create"]).trim_start_matches("created ").split(" (").next().unwrap().to_string(),
    );
    assert!(file.is_file(), "a backup is taken while the server runs");
    let before = sha256_of(&site.database());
    let output = site.cli(&["backup", "restore", file.to_str().unwrap()]);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("A server is using"), "{}", stderr(&output));
    site.untouched(&before);
    let (_, body) = app.gql_as(&app.token("user_admin", GlobalRole::Admin), LIST, json!({})).await;
    assert_eq!(body["data"]["backups"].as_array().map(Vec::len), Some(1), "{body}");
}

#[test]
fn a_backup_that_cannot_be_written_says_why_and_leaves_earlier_backups_intact() {
    use std::os::unix::fs::PermissionsExt;
    let site = Site::new();
    let earlier = site.with_backup();
    let sums = (sha256_of(&earlier), sha256_of(&PathBuf::from(format!("{}.sha256", earlier.display()))));
    let folder = site.backups();
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o555)).unwrap();
    // Root writes through permissions: there, point the data folder at a path under a regular file.
    let read_only = std::fs::write(folder.join("probe"), b"").is_err();
    let (output, why) = if read_only {
        (site.cli(&["backup", "create"]), "the folder is not writable")
    } else {
        std::fs::remove_file(folder.join("probe")).unwrap();
        let blocked = site.dir.path().join("a-file");
        std::fs::write(&blocked, b"").unwrap();
        let mut command = site.command();
        command.env("ENSEMBLE_DATA_DIR", blocked.join("data")).args(["backup", "create"]);
        (command.output().unwrap(), "the path is not a folder")
    };
    std::fs::set_permissions(&folder, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert!(!output.status.success());
    let message = stderr(&output);
    assert!(message.contains("Cannot write a backup into") && message.contains(why), "{message}");
    assert!(message.contains("Earlier backups are untouched"), "{message}");
    let files: Vec<_> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(files.len(), 2, "the earlier backup and its sidecar, no partial file: {files:?}");
    assert_eq!((sha256_of(&earlier), sha256_of(&PathBuf::from(format!("{}.sha256", earlier.display())))), sums);
    assert_eq!(site.ok(&["backup", "list"]).lines().count(), 1, "no row for the failed backup");
}

#[tokio::test]
async fn a_backup_during_a_burst_of_20_writers_verifies_and_restores_to_a_consistent_database() {
    let site = Site::new();
    let app = site.serve_here(|_| {}).await;
    let writers: Vec<_> = (0..20)
        .map(|n| {
            let (client, url) = (app.client.clone(), app.url("/graphql"));
            let token = app.token(&format!("user_writer{n}"), GlobalRole::Member);
            tokio::spawn(async move {
                let mut errors = Vec::new();
                for round in 0..8 {
                    let call = |query: &'static str, variables: Value| {
                        let body = json!({"query": query, "variables": variables});
                        client.post(&url).bearer_auth(&token).json(&body).send()
                    };
                    let made: Value = call(CREATE_TEAM, json!({"name": format!("W{n} {round}")}))
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    let id = made["data"]["createTeam"]["id"].clone();
                    let changed: Value = call(RESPEC, json!({"id": id, "n": "a"})).await.unwrap().json().await.unwrap();
                    errors.extend([made, changed].into_iter().filter_map(|answer| answer.get("errors").cloned()));
                }
                errors
            })
        })
        .collect();
    while teams::Entity::find().count(&app.state.db).await.unwrap() < 20 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (_, body) = app.gql_as(&app.token("user_admin", GlobalRole::Admin), CREATE, json!({})).await;
    let backup = body["data"]["createBackup"].clone();
    assert!(backup["verifiedAt"].is_string(), "{body}");
    for writer in writers {
        assert_eq!(writer.await.unwrap(), Vec::<Value>::new(), "no writer sees an error");
    }
    let file = site.backups().join(backup["file"].as_str().unwrap());
    assert!(site.ok(&["backup", "verify", file.to_str().unwrap()]).starts_with("ok: "));

    let fresh = tempfile::tempdir().unwrap();
    let target = fresh.path().join("restored.db");
    let mut restore = site.command();
    restore.env("DATABASE_URL", format!("sqlite://{}", target.display())).args(["backup", "restore"]).arg(&file);
    let output = restore.output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(stdout(&output).contains("there was no database to replace"));
    let db = open(&target).await;
    let check = db.query_one_raw(Statement::from_string(DbBackend::Sqlite, "PRAGMA integrity_check")).await.unwrap();
    assert_eq!(check.unwrap().try_get_by_index::<String>(0).unwrap(), "ok");
    let held = teams::Entity::find().all(&db).await.unwrap();
    assert!(held.len() >= 20 && held.len() < 160, "a snapshot from the middle of the burst: {} teams", held.len());
    for team in held {
        let versions = team_versions::Entity::find().filter(team_versions::Column::TeamId.eq(&team.id)).all(&db);
        let mut numbers: Vec<i32> = versions.await.unwrap().into_iter().map(|v| v.version).collect();
        numbers.sort();
        assert_eq!(numbers, (1..=team.version).collect::<Vec<_>>(), "versions of {}", team.name);
        let owner = team_members::Entity::find_by_id((team.id.clone(), team.owner_id.clone())).one(&db).await.unwrap();
        assert_eq!(owner.map(|m| m.role), Some(entity::states::TeamRole::Owner), "the owner of {}", team.name);
    }
}

#[tokio::test]
async fn pruning_keeps_the_newest_and_never_the_newest_verified_backup() {
    let site = Site::new();
    let app = site.serve_here(|_| {}).await;
    let store = Backups::new(app.state.db.clone(), app.state.audit.clone(), &site.data());
    let system = Caller { principal: Principal::System("test"), meta: Default::default() };
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(store.create(&system, None).await.unwrap().id);
    }
    // The two newest turn out damaged: verification clears their verified_at.
    for id in &ids[2..] {
        std::fs::write(site.backups().join(format!("{id}.db")), b"damaged").unwrap();
        assert_eq!(store.verify(&system, id).await.unwrap_err().code(), "BAD_USER_INPUT");
    }
    let id_list = |rows: Vec<backups::Model>| rows.into_iter().map(|b| b.id).collect::<Vec<_>>();
    assert_eq!(id_list(store.prune(&system, 2).await.unwrap()), [ids[0].clone()]);
    assert!(!site.backups().join(format!("{}.db", ids[0])).exists());
    assert_eq!(id_list(store.list(&system).await.unwrap()), [ids[3].clone(), ids[2].clone(), ids[1].clone()]);
    let pruned = id_list(store.prune(&system, 1).await.unwrap());
    assert_eq!(pruned, [ids[2].clone()], "the newest verified backup stays, whatever its age");
    assert_eq!(id_list(store.list(&system).await.unwrap()), [ids[3].clone(), ids[1].clone()]);
}

#[tokio::test]
async fn scheduled_backups_run_on_the_interval_and_prune_to_keep() {
    let site = Site::new();
    let app = site
        .serve_here(|config| {
            config.backup_interval = Some(Duration::from_secs(1));
            config.backup_keep = 2;
        })
        .await;
    let deleted = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("backup.delete"));
    let mut waited = Duration::ZERO;
    // The row goes in the audited transaction, the file right after it.
    let pruned = loop {
        let row = deleted.clone().one(&app.state.db).await.unwrap();
        if let Some(row) =
            row.filter(|r| !site.backups().join(format!("{}.db", r.resource_id.as_deref().unwrap())).exists())
        {
            break row;
        }
        assert!(waited < Duration::from_secs(20), "no scheduled backup was pruned within 20 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    };
    assert_eq!(pruned.actor_id.as_deref(), Some("scheduler"));
    let rows = backups::Entity::find().all(&app.state.db).await.unwrap();
    assert!((2..=3).contains(&rows.len()), "{} backups kept", rows.len());
    assert!(rows.iter().all(|b| b.label.as_deref() == Some("scheduled")));
    assert!(!rows.iter().any(|b| Some(b.id.as_str()) == pruned.resource_id.as_deref()));
}

#[tokio::test]
async fn a_backup_whose_row_cannot_be_deleted_keeps_its_file() {
    let site = Site::new();
    let app = site.serve_here(|_| {}).await;
    let system = Caller { principal: Principal::System("test"), meta: Default::default() };
    let taken = Backups::new(app.state.db.clone(), app.state.audit.clone(), &site.data());
    let row = taken.create(&system, None).await.unwrap();
    let file = site.backups().join(&row.file);

    let store = Backups::new(app.state.db.clone(), Meanwhile::refusing(&app.state), &site.data());
    assert_eq!(store.delete(&system, &row.id).await.unwrap_err().code(), "INTERNAL");

    assert!(file.exists(), "the file is put back under its name");
    assert_eq!(sha256_of(&file), row.sha256, "unchanged");
    assert!(backups::Entity::find_by_id(&row.id).one(&app.state.db).await.unwrap().is_some(), "the row stays");
    let left: Vec<_> = std::fs::read_dir(site.backups()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left.len(), 2, "the backup and its sidecar, nothing aside: {left:?}");
}

#[tokio::test]
async fn a_backup_deleted_meanwhile_is_not_found_and_its_file_goes() {
    let site = Site::new();
    let app = site.serve_here(|_| {}).await;
    let system = Caller { principal: Principal::System("test"), meta: Default::default() };
    let taken = Backups::new(app.state.db.clone(), app.state.audit.clone(), &site.data());
    let row = taken.create(&system, None).await.unwrap();
    // Another prune deletes the row after this deletion read it.
    let gone = backups::Entity::delete_many().filter(backups::Column::Id.eq(&row.id)).into_query();
    let store =
        Backups::new(app.state.db.clone(), Meanwhile::chain(&app.state, vec![sql(&app.state.db, &gone)]), &site.data());

    assert_eq!(store.delete(&system, &row.id).await.unwrap_err().code(), "NOT_FOUND");

    assert!(!site.backups().join(&row.file).exists(), "the file of a row that is gone goes too");
    let left: Vec<_> = std::fs::read_dir(site.backups()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(left, Vec::<std::ffi::OsString>::new());
    let deleted = audit_logs::Entity::find().filter(audit_logs::Column::Action.eq("backup.delete"));
    assert_eq!(deleted.count(&app.state.db).await.unwrap(), 0, "this deletion deleted nothing");
}
