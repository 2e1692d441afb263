//! Users: created the first time they sign in (just in time), read by themselves or admins.

use chrono::Utc;
use entity::users;
use sea_orm::{DatabaseConnection, EntityTrait, Set, sea_query::OnConflict};

use crate::{
    auth::{GlobalRole, UserPrincipal},
    error::AppError,
};

/// Makes sure a verified user has a row, refuses a deleted one, and settles the global role:
/// ADMIN when the token or the stored role says so.
#[tracing::instrument(skip_all, fields(user = %user.id))]
pub async fn sign_in(
    db: &DatabaseConnection,
    mut user: UserPrincipal,
) -> Result<UserPrincipal, AppError> {
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
                .on_conflict(
                    OnConflict::column(users::Column::Id)
                        .do_nothing()
                        .to_owned(),
                )
                .exec_without_returning(db)
                .await?;
            users::Entity::find_by_id(&user.id)
                .one(db)
                .await?
                .ok_or_else(|| AppError::internal("user row missing after insert"))?
        }
    };
    if stored.deleted_at.is_some() {
        return Err(AppError::Unauthenticated(
            "This account has been deleted.".into(),
        ));
    }
    if GlobalRole::parse(&stored.role) == Some(GlobalRole::Admin) {
        user.role = GlobalRole::Admin;
    }
    Ok(user)
}

/// A user by id.
pub async fn find(db: &DatabaseConnection, id: &str) -> Result<Option<users::Model>, AppError> {
    Ok(users::Entity::find_by_id(id).one(db).await?)
}
