//! `ensemble-bench seed`: writes the benchmark's data (see `data`) through Ensemble's own
//! entities into a database that `ensemble migrate up` made — SQLite or PostgreSQL, the same
//! rows either way: users, teams (each with its first version, as `createTeam` records it) and
//! their members.

use entity::{
    states::{GlobalRole, TeamRole, Visibility},
    team_members, team_versions, teams, users,
};
use sea_orm::{ActiveEnum, ActiveValue::Set, Database, EntityTrait, PaginatorTrait, TransactionTrait};

use crate::data;

/// Rows per INSERT: well under SQLite's limit of bound parameters.
const CHUNK: usize = 200;

pub async fn seed(database_url: &str) -> Result<String, String> {
    let db = Database::connect(database_url).await.map_err(|e| format!("cannot connect to {database_url}: {e}"))?;
    if teams::Entity::find().count(&db).await.map_err(|e| e.to_string())? > 0 {
        return Err("the database already holds teams: seed a fresh one".into());
    }
    let at = data::epoch();
    let users: Vec<users::ActiveModel> = data::users()
        .into_iter()
        .map(|u| users::ActiveModel {
            id: Set(u.id),
            email: Set(Some(u.email)),
            display_name: Set(Some(u.display_name)),
            avatar_url: Set(None),
            role: Set(GlobalRole::Member),
            created_at: Set(at),
            updated_at: Set(at),
            deleted_at: Set(None),
        })
        .collect();
    let teams_data = data::teams();
    let mut team_rows = Vec::new();
    let mut versions = Vec::new();
    let mut members = Vec::new();
    for team in teams_data {
        let owner = data::user_id(team.owner);
        team_rows.push(teams::ActiveModel {
            id: Set(team.id.clone()),
            owner_id: Set(owner.clone()),
            name: Set(team.name),
            slug: Set(team.slug),
            description: Set(Some(data::DESCRIPTION.into())),
            visibility: Set(Visibility::Private),
            spec: Set(data::spec()),
            version: Set(1),
            created_at: Set(at),
            updated_at: Set(at),
            archived_at: Set(None),
        });
        versions.push(team_versions::ActiveModel {
            team_id: Set(team.id.clone()),
            version: Set(1),
            spec: Set(data::spec()),
            message: Set(Some("Created".into())),
            author_id: Set(owner),
            created_at: Set(at),
        });
        members.extend(team.members.into_iter().map(|m| team_members::ActiveModel {
            team_id: Set(team.id.clone()),
            user_id: Set(data::user_id(m.user)),
            role: Set(TeamRole::try_from_value(&m.role.to_string()).expect("data::ROLES holds team roles")),
            created_at: Set(m.joined),
        }));
    }
    let counts = format!("{} users, {} teams, {} members", users.len(), team_rows.len(), members.len());

    let txn = db.begin().await.map_err(|e| e.to_string())?;
    for chunk in users.chunks(CHUNK) {
        users::Entity::insert_many(chunk.to_vec()).exec_without_returning(&txn).await.map_err(|e| e.to_string())?;
    }
    for chunk in team_rows.chunks(CHUNK) {
        teams::Entity::insert_many(chunk.to_vec()).exec_without_returning(&txn).await.map_err(|e| e.to_string())?;
    }
    for chunk in versions.chunks(CHUNK) {
        team_versions::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await
            .map_err(|e| e.to_string())?;
    }
    for chunk in members.chunks(CHUNK) {
        team_members::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await
            .map_err(|e| e.to_string())?;
    }
    txn.commit().await.map_err(|e| e.to_string())?;
    db.close().await.map_err(|e| e.to_string())?;
    Ok(counts)
}
