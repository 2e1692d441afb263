//! One message of a conversation; `parent_id` makes the tree (answering from an earlier
//! message starts a branch).

use sea_orm::entity::prelude::*;

use crate::states::MessageRole;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "messages")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub conversation_id: String,
    pub parent_id: Option<String>,
    /// `user`, `assistant` or `system`.
    pub role: MessageRole,
    /// The agent that wrote an assistant message.
    pub agent: Option<String>,
    pub content: String,
    /// The run that asked (user) or answered (assistant).
    pub run_id: Option<String>,
    pub tokens_in: i64,
    pub tokens_out: i64,
    pub cost_usd: f64,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
