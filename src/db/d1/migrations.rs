//! Migrations on D1: wrangler applies `migration/sql` (`wrangler d1 migrations apply`) and
//! records each file in `d1_migrations`; the server never migrates D1 itself (no
//! `seaql_migrations` there) and compares that record with the files this binary knows.

use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, DbErr, Statement};

/// The files wrangler has applied to the D1 database behind `db`, in the order applied (none
/// when `d1_migrations` does not exist yet: nothing was ever applied).
pub async fn applied(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let exists = "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'd1_migrations'";
    if db.query_one_raw(Statement::from_string(DbBackend::Sqlite, exists)).await?.is_none() {
        return Ok(Vec::new());
    }
    let names = "SELECT name FROM d1_migrations ORDER BY id";
    let rows = db.query_all_raw(Statement::from_string(DbBackend::Sqlite, names)).await?;
    rows.iter().map(|row| row.try_get_by_index::<String>(0)).collect()
}

/// The migration files this binary knows that D1 has not applied, in order.
pub fn missing(applied: &[String]) -> Vec<String> {
    migration::d1::file_names().into_iter().filter(|known| !applied.contains(known)).collect()
}

/// The name of the last migration whose file D1 has applied (`m0016_price_times` for
/// `0016_price_times.sql`), as `serverInfo` names it on every database.
pub fn latest(applied: &[String]) -> Option<String> {
    use migration::MigratorTrait;
    let names = migration::Migrator::migrations().into_iter().map(|m| m.name().to_string());
    known().into_iter().zip(names).filter(|(file, _)| applied.contains(file)).map(|(_, name)| name).last()
}

/// The files this binary knows, `0001_identity.sql` first.
pub fn known() -> Vec<String> {
    migration::d1::file_names()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_files_d1_lacks_are_named_in_order() {
        let known = known();
        assert_eq!(known[0], "0001_identity.sql");
        let applied: Vec<String> = known[..known.len() - 2].to_vec();
        assert_eq!(missing(&applied), known[known.len() - 2..].to_vec());
        assert!(missing(&known).is_empty());
    }

    #[test]
    fn the_latest_migration_applied_is_named_as_the_migrator_names_it() {
        let known = known();
        assert_eq!(latest(&known[..2]).as_deref(), Some("m0002_audit_chain"));
        assert_eq!(latest(&[]), None);
    }
}
