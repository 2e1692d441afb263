//! A conversation with a team: a tree of messages.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, DeriveEntityModel)]
#[sea_orm(table_name = "conversations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    pub team_id: String,
    pub user_id: String,
    pub title: String,
    /// The message whose path this conversation was copied from.
    pub forked_from_message_id: Option<String>,
    pub created_at: DateTimeUtc,
    /// When a message was last added.
    pub last_active_at: Option<DateTimeUtc>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
