//! Schema migrations, one file each, for SQLite, Cloudflare D1 and PostgreSQL alike;
//! `d1` turns them into the plain SQL files `wrangler d1 migrations apply` reads.

pub use sea_orm_migration::prelude::*;
pub use sea_orm_migration::{MigrationStatus, MigratorTrait};

pub mod d1;
mod m0001_identity;
pub mod m0002_audit_chain;
mod m0003_webhook_events;
mod m0004_api_keys;
mod m0005_usage_daily;
mod m0006_team_versions;
mod m0007_team_share_links;
mod m0008_orchestration;
mod m0009_monitoring;
mod m0010_audit_indexes;
mod m0011_template_categories;
mod m0012_templates;
mod m0013_backups;
mod m0014_budget_reservations;
mod m0015_write_path;
mod m0016_price_times;
mod m0017_workflow_runs;

pub struct Migrator;

#[async_trait::async_trait]
impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m0001_identity::Migration),
            Box::new(m0002_audit_chain::Migration),
            Box::new(m0003_webhook_events::Migration),
            Box::new(m0004_api_keys::Migration),
            Box::new(m0005_usage_daily::Migration),
            Box::new(m0006_team_versions::Migration),
            Box::new(m0007_team_share_links::Migration),
            Box::new(m0008_orchestration::Migration),
            Box::new(m0009_monitoring::Migration),
            Box::new(m0010_audit_indexes::Migration),
            Box::new(m0011_template_categories::Migration),
            Box::new(m0012_templates::Migration),
            Box::new(m0013_backups::Migration),
            Box::new(m0014_budget_reservations::Migration),
            Box::new(m0015_write_path::Migration),
            Box::new(m0016_price_times::Migration),
            Box::new(m0017_workflow_runs::Migration),
        ]
    }
}
