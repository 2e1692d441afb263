//! Sign-in of a verified user: the first time a user is seen, their row is created (just in
//! time, as a MEMBER); every time, the stored row is read (its role and deletion count).

use std::sync::Arc;

use chrono::Utc;
use entity::users;
use sea_orm::{DatabaseConnection, EntityTrait, Set, sea_query::OnConflict};

use crate::{
    domain::{GlobalRole, UserPrincipal},
    error::AppError,
};

/// Makes sure a verified user has a row (created on first sign-in) and reads it.
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn sign_in(db: &DatabaseConnection, user: &UserPrincipal) -> Result<Arc<users::Model>, AppError> {
    let stored = match users::Entity::find_by_id(&user.id).one(db).await? {
        Some(stored) => stored,
        None => {
            let now = Utc::now();
            let row = users::ActiveModel {
                id: Set(user.id.clone()),
                email: Set(user.email.clone()),
                display_name: Set(None),
                avatar_url: Set(None),
                role: Set(GlobalRole::Member.as_str().to_string()),
                created_at: Set(now),
                updated_at: Set(now),
                deleted_at: Set(None),
            };
            // Two first requests may race: the loser's insert does nothing.
            users::Entity::insert(row)
                .on_conflict(OnConflict::column(users::Column::Id).do_nothing().to_owned())
                .exec_without_returning(db)
                .await?;
            users::Entity::find_by_id(&user.id)
                .one(db)
                .await?
                .ok_or_else(|| AppError::internal("user row missing after insert"))?
        }
    };
    Ok(Arc::new(stored))
}
