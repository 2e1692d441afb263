//! An API key: `ens_<prefix>_<secret>`, stored as the prefix and a SHA-256 of the secret.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub user_id: String,
    /// The one team the key may act on, if restricted.
    pub team_id: Option<String>,
    pub name: String,
    #[sea_orm(unique)]
    pub prefix: String,
    pub secret_hash: String,
    /// The secret before the last rotation, valid until `previous_expires_at`.
    pub previous_secret_hash: Option<String>,
    pub previous_expires_at: Option<DateTimeUtc>,
    /// Scope names (`teams:read`, …).
    pub scopes: Json,
    pub expires_at: Option<DateTimeUtc>,
    pub last_used_at: Option<DateTimeUtc>,
    pub revoked_at: Option<DateTimeUtc>,
    pub created_at: DateTimeUtc,
    /// Tokens the key may spend per UTC day (none: no limit of its own).
    pub daily_token_budget: Option<i64>,
    /// US dollars the key may spend per UTC day.
    pub daily_cost_budget_usd: Option<f64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
