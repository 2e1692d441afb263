//! Files generated from the code stay in step with it: `schema.graphql` and the D1 SQL export.

use std::path::Path;

#[test]
fn schema_graphql_is_up_to_date() {
    let config = ensemble::config::Config::from_env().unwrap();
    let current = ensemble::graphql::sdl(&config);
    let committed = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("schema.graphql")).unwrap();
    assert!(committed == current, "schema.graphql is stale: run `cargo run -- schema > schema.graphql`");
}

#[tokio::test]
async fn the_d1_export_is_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("migration/sql");
    let files = migration::d1::export().await.unwrap();
    let stale = "migration/sql is stale: run `cargo run -- migrate export-d1`";
    for file in &files {
        let committed = std::fs::read_to_string(dir.join(&file.file_name)).unwrap_or_default();
        assert!(committed == file.sql, "{} differs; {stale}", file.file_name);
    }
    let on_disk = std::fs::read_dir(&dir)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "sql"))
        .count();
    assert_eq!(on_disk, files.len(), "extra files; {stale}");
}

#[tokio::test]
async fn every_exported_statement_is_one_d1_accepts() {
    for file in migration::d1::export().await.unwrap() {
        for statement in file.sql.split(";\n").filter(|s| !s.trim().is_empty() && !s.trim_start().starts_with("--")) {
            assert!(migration::d1::check_d1_compatible(statement).is_ok(), "{}: {statement}", file.file_name);
        }
    }
}
