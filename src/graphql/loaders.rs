//! Per-request DataLoaders: nested lists (a team's members, a member's user) load in one
//! batched query per level, whatever the number of parents. Each request (each websocket
//! operation) gets its own, so what they cache lives only as long as that request.

use std::{collections::HashMap, sync::Arc};

use async_graphql::dataloader::{DataLoader, HashMapCache, Loader};
use entity::{run_attempts, team_members, team_share_links, team_versions, users};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use crate::service::teams;

/// The loaders of one request (or websocket); each batches the loads of one resolution step.
#[derive(Clone)]
pub struct Loaders {
    pub members: Arc<DataLoader<MembersLoader, HashMapCache>>,
    pub users: Arc<DataLoader<UsersLoader, HashMapCache>>,
    pub version_counts: Arc<DataLoader<VersionCountLoader, HashMapCache>>,
    pub share_links: Arc<DataLoader<ShareLinksLoader, HashMapCache>>,
    pub attempts: Arc<DataLoader<AttemptsLoader, HashMapCache>>,
}

impl Loaders {
    pub fn new(db: &DatabaseConnection) -> Self {
        Self {
            members: Arc::new(DataLoader::with_cache(MembersLoader(db.clone()), tokio::spawn, HashMapCache::default())),
            users: Arc::new(DataLoader::with_cache(UsersLoader(db.clone()), tokio::spawn, HashMapCache::default())),
            version_counts: Arc::new(DataLoader::with_cache(
                VersionCountLoader(db.clone()),
                tokio::spawn,
                HashMapCache::default(),
            )),
            share_links: Arc::new(DataLoader::with_cache(
                ShareLinksLoader(db.clone()),
                tokio::spawn,
                HashMapCache::default(),
            )),
            attempts: Arc::new(DataLoader::with_cache(
                AttemptsLoader(db.clone()),
                tokio::spawn,
                HashMapCache::default(),
            )),
        }
    }
}

/// Team id → its members.
pub struct MembersLoader(DatabaseConnection);

impl Loader<String> for MembersLoader {
    type Value = Vec<team_members::Model>;
    type Error = String;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = teams::members_of(&self.0, keys).await.map_err(|e| e.to_string())?;
        let mut by_team: HashMap<String, Self::Value> = HashMap::new();
        for row in rows {
            by_team.entry(row.team_id.clone()).or_default().push(row);
        }
        Ok(by_team)
    }
}

/// User id → the user.
pub struct UsersLoader(DatabaseConnection);

impl Loader<String> for UsersLoader {
    type Value = users::Model;
    type Error = String;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = users::Entity::find()
            .filter(users::Column::Id.is_in(keys.iter().cloned()))
            .all(&self.0)
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(|u| (u.id.clone(), u)).collect())
    }
}

/// Team id → how many versions it has.
pub struct VersionCountLoader(DatabaseConnection);

impl Loader<String> for VersionCountLoader {
    type Value = i64;
    type Error = String;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        use sea_orm::QuerySelect;
        let rows: Vec<(String, i64)> = team_versions::Entity::find()
            .select_only()
            .column(team_versions::Column::TeamId)
            .column_as(team_versions::Column::Version.count(), "count")
            .filter(team_versions::Column::TeamId.is_in(keys.iter().cloned()))
            .group_by(team_versions::Column::TeamId)
            .into_tuple()
            .all(&self.0)
            .await
            .map_err(|e| e.to_string())?;
        Ok(rows.into_iter().collect())
    }
}

/// Team id → its share links, newest first.
pub struct ShareLinksLoader(DatabaseConnection);

impl Loader<String> for ShareLinksLoader {
    type Value = Vec<team_share_links::Model>;
    type Error = String;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        use sea_orm::QueryOrder;
        let rows = team_share_links::Entity::find()
            .filter(team_share_links::Column::TeamId.is_in(keys.iter().cloned()))
            .order_by_desc(team_share_links::Column::Id)
            .all(&self.0)
            .await
            .map_err(|e| e.to_string())?;
        let mut by_team: HashMap<String, Self::Value> = HashMap::new();
        for row in rows {
            by_team.entry(row.team_id.clone()).or_default().push(row);
        }
        Ok(by_team)
    }
}

/// Run id → its attempts, in order.
pub struct AttemptsLoader(DatabaseConnection);

impl Loader<String> for AttemptsLoader {
    type Value = Vec<run_attempts::Model>;
    type Error = String;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        use sea_orm::QueryOrder;
        let rows = run_attempts::Entity::find()
            .filter(run_attempts::Column::RunId.is_in(keys.iter().cloned()))
            .order_by_asc(run_attempts::Column::RunId)
            .order_by_asc(run_attempts::Column::Seq)
            .all(&self.0)
            .await
            .map_err(|e| e.to_string())?;
        let mut by_run: HashMap<String, Self::Value> = HashMap::new();
        for row in rows {
            by_run.entry(row.run_id.clone()).or_default().push(row);
        }
        Ok(by_run)
    }
}
