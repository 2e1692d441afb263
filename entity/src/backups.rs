//! A backup: a verified snapshot file of the SQLite database in `<data dir>/backups/`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "backups")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// The file's name within the backups folder.
    #[sea_orm(unique)]
    pub file: String,
    pub label: Option<String>,
    pub bytes: i64,
    /// SHA-256 of the file, hex.
    pub sha256: String,
    /// The newest migration applied to the database when the snapshot was taken.
    pub migration: String,
    pub created_at: DateTimeUtc,
    /// When the file last passed its checksum and integrity check; `None` once a check failed.
    pub verified_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
