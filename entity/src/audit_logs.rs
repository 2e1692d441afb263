//! The append-only, hash-chained audit trail: `seq` is monotonic, `hash` covers `prev_hash`.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_logs")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub seq: i64,
    pub ts: DateTimeUtc,
    pub actor_id: Option<String>,
    /// `user`, `api_key` or `system`.
    pub actor_kind: String,
    pub api_key_id: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub team_id: Option<String>,
    pub request_id: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    /// `allowed` or `denied`.
    pub result: String,
    /// Why a denied action was refused.
    pub reason: Option<String>,
    pub changes: Option<Json>,
    pub prev_hash: String,
    #[sea_orm(unique)]
    pub hash: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
