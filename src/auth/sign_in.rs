//! Sign-in of a verified user: the first time a user is seen, their row is created (just in
//! time, as a MEMBER); every time, the stored row is read (its role and deletion count).
//! An API key's owner is read the same way, through the cache of users' rows.

use std::sync::Arc;

use chrono::Utc;
use entity::users;
use sea_orm::{DatabaseConnection, EntityTrait, Set, sea_query::OnConflict};

use crate::{
    cache::{Caches, UserId},
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
                role: Set(GlobalRole::Member),
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

/// A user by id, read through the cache of users' rows (an API key's owner).
pub async fn stored_user(
    db: &DatabaseConnection,
    caches: &Caches,
    id: &str,
) -> Result<Option<Arc<users::Model>>, AppError> {
    let load = async { Ok(users::Entity::find_by_id(id).one(db).await?.map(Arc::new)) };
    caches.users.get_or_load_some(UserId(id.to_string()), load).await
}
