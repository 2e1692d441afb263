//! Per-request DataLoaders: nested lists (a team's members, a member's user) load in one
//! batched query per level, whatever the number of parents. Each request (each websocket
//! operation) gets its own, so what they cache lives only as long as that request.
//!
//! A connection's resolver may also load, up front, what its page's nodes will ask for
//! (see [`node_fields`]): the nodes then answer from the loaders' cache, however they are
//! scheduled, so a page costs the same statements at 5 rows as at 50.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use async_graphql::{
    Context, SelectionField, Value,
    dataloader::{DataLoader, HashMapCache, Loader},
};
use entity::{
    api_keys, messages, run_attempts, team_members, team_share_links, team_versions, teams as team_rows, users,
};
use sea_orm::{
    ColumnTrait, DatabaseConnection, EntityTrait, JoinType, QueryFilter, QueryOrder, QuerySelect,
    sea_query::{Expr, ExprTrait},
};

use crate::{error::AppError, service::teams};

/// The loaders of one request (or one websocket operation); each batches the loads of one
/// resolution step.
#[derive(Clone)]
pub struct Loaders {
    pub members: Arc<DataLoader<MembersLoader, HashMapCache>>,
    pub users: Arc<DataLoader<UsersLoader, HashMapCache>>,
    pub version_counts: Arc<DataLoader<VersionCountLoader, HashMapCache>>,
    pub versions: Arc<DataLoader<NewestVersionsLoader, HashMapCache>>,
    pub version_at: Arc<DataLoader<VersionAtLoader, HashMapCache>>,
    pub share_links: Arc<DataLoader<ShareLinksLoader, HashMapCache>>,
    pub attempts: Arc<DataLoader<AttemptsLoader, HashMapCache>>,
    pub messages: Arc<DataLoader<MessagesLoader, HashMapCache>>,
    pub team_names: Arc<DataLoader<TeamNamesLoader, HashMapCache>>,
    pub api_key_names: Arc<DataLoader<ApiKeyNamesLoader, HashMapCache>>,
}

impl Loaders {
    pub fn new(db: &DatabaseConnection) -> Self {
        Self {
            members: batched(MembersLoader(db.clone())),
            users: batched(UsersLoader(db.clone())),
            version_counts: batched(VersionCountLoader(db.clone())),
            versions: batched(NewestVersionsLoader(db.clone())),
            version_at: batched(VersionAtLoader(db.clone())),
            share_links: batched(ShareLinksLoader(db.clone())),
            attempts: batched(AttemptsLoader(db.clone())),
            messages: batched(MessagesLoader(db.clone())),
            team_names: batched(TeamNamesLoader(db.clone())),
            api_key_names: batched(ApiKeyNamesLoader(db.clone())),
        }
    }
}

/// Keys per batch: each batch is one `IN (…)` list, and D1 binds at most 100 parameters per
/// statement (a few are left for the loader's other filters).
pub const MAX_BATCH: usize = 90;

fn batched<T: Loader<K>, K>(loader: T) -> Arc<DataLoader<T, HashMapCache>>
where
    K: Send + Sync + std::hash::Hash + Eq + Clone + 'static,
{
    Arc::new(DataLoader::with_cache(loader, tokio::spawn, HashMapCache::default()).max_batch_size(MAX_BATCH))
}

/// The fields at `path` (e.g. `["members", "user"]`) that the nodes of the connection being
/// resolved select, under `nodes` or `edges { node }`: one per occurrence, aliases included.
pub fn node_fields<'c>(ctx: &'c Context<'_>, path: &[&str]) -> Vec<SelectionField<'c>> {
    let look = ctx.look_ahead();
    [look.field("nodes"), look.field("edges").field("node")]
        .into_iter()
        .flat_map(|node| path.iter().fold(node, |at, name| at.field(name)).selection_fields())
        .collect()
}

/// Whether the nodes of the connection being resolved select the field at `path`.
pub fn nodes_select(ctx: &Context<'_>, path: &[&str]) -> bool {
    !node_fields(ctx, path).is_empty()
}

/// The integer argument `name` of a selected field, variables resolved; None when it is absent,
/// null or not an `Int`.
pub fn int_argument(field: &SelectionField<'_>, name: &str) -> Option<i32> {
    let arguments = field.arguments().ok()?;
    let (_, value) = arguments.into_iter().find(|(argument, _)| argument.as_str() == name)?;
    match value {
        Value::Number(n) => n.as_i64().and_then(|n| i32::try_from(n).ok()),
        _ => None,
    }
}

/// Rows grouped under the key `key` gives each.
fn grouped<K: std::hash::Hash + Eq, V>(rows: Vec<V>, key: impl Fn(&V) -> K) -> HashMap<K, Vec<V>> {
    let mut groups: HashMap<K, Vec<V>> = HashMap::new();
    for row in rows {
        groups.entry(key(&row)).or_default().push(row);
    }
    groups
}

/// Team id → its members.
pub struct MembersLoader(DatabaseConnection);

impl Loader<String> for MembersLoader {
    type Value = Vec<team_members::Model>;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = teams::members_of(&self.0, keys).await?;
        Ok(grouped(rows, |row| row.team_id.clone()))
    }
}

/// User id → the user.
pub struct UsersLoader(DatabaseConnection);

impl Loader<String> for UsersLoader {
    type Value = users::Model;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = users::Entity::find().filter(users::Column::Id.is_in(keys.iter().cloned())).all(&self.0).await?;
        Ok(rows.into_iter().map(|u| (u.id.clone(), u)).collect())
    }
}

/// Team id → how many versions it has.
pub struct VersionCountLoader(DatabaseConnection);

impl Loader<String> for VersionCountLoader {
    type Value = i64;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows: Vec<(String, i64)> = team_versions::Entity::find()
            .select_only()
            .column(team_versions::Column::TeamId)
            .column_as(team_versions::Column::Version.count(), "count")
            .filter(team_versions::Column::TeamId.is_in(keys.iter().cloned()))
            .group_by(team_versions::Column::TeamId)
            .into_tuple()
            .all(&self.0)
            .await?;
        Ok(rows.into_iter().collect())
    }
}

/// (team id, n) → the team's newest `n` versions, newest first. Versions are numbered 1 to the
/// team's current version without gaps, so these are the ones above `version - n`; one query
/// per distinct `n` (a page asks for one).
pub struct NewestVersionsLoader(DatabaseConnection);

impl Loader<(String, u64)> for NewestVersionsLoader {
    type Value = Vec<team_versions::Model>;
    type Error = AppError;

    async fn load(&self, keys: &[(String, u64)]) -> Result<HashMap<(String, u64), Self::Value>, Self::Error> {
        let mut found = HashMap::new();
        for (count, team_ids) in by_second(keys) {
            let floor = Expr::col((team_rows::Entity, team_rows::Column::Version))
                .sub(i64::try_from(count).unwrap_or(i64::MAX));
            let rows = team_versions::Entity::find()
                .join(JoinType::InnerJoin, versions_to_teams())
                .filter(team_versions::Column::TeamId.is_in(team_ids))
                .filter(Expr::col((team_versions::Entity, team_versions::Column::Version)).gt(floor))
                .order_by_desc(team_versions::Column::Version)
                .all(&self.0)
                .await?;
            found.extend(grouped(rows, |row| (row.team_id.clone(), count)));
        }
        Ok(found)
    }
}

fn versions_to_teams() -> sea_orm::RelationDef {
    team_versions::Entity::belongs_to(team_rows::Entity)
        .from(team_versions::Column::TeamId)
        .to(team_rows::Column::Id)
        .into()
}

/// (team id, n) → the team's version `n`; one query per distinct `n`.
pub struct VersionAtLoader(DatabaseConnection);

impl Loader<(String, i32)> for VersionAtLoader {
    type Value = team_versions::Model;
    type Error = AppError;

    async fn load(&self, keys: &[(String, i32)]) -> Result<HashMap<(String, i32), Self::Value>, Self::Error> {
        let mut found = HashMap::new();
        for (version, team_ids) in by_second(keys) {
            let rows = team_versions::Entity::find()
                .filter(team_versions::Column::TeamId.is_in(team_ids))
                .filter(team_versions::Column::Version.eq(version))
                .all(&self.0)
                .await?;
            found.extend(rows.into_iter().map(|row| ((row.team_id.clone(), version), row)));
        }
        Ok(found)
    }
}

/// `(id, x)` keys as the ids wanted for each `x`.
fn by_second<T: Ord + Copy>(keys: &[(String, T)]) -> BTreeMap<T, Vec<String>> {
    let mut ids: BTreeMap<T, Vec<String>> = BTreeMap::new();
    for (id, x) in keys {
        ids.entry(*x).or_default().push(id.clone());
    }
    ids
}

/// Team id → its share links, newest first.
pub struct ShareLinksLoader(DatabaseConnection);

impl Loader<String> for ShareLinksLoader {
    type Value = Vec<team_share_links::Model>;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = team_share_links::Entity::find()
            .filter(team_share_links::Column::TeamId.is_in(keys.iter().cloned()))
            .order_by_desc(team_share_links::Column::Id)
            .all(&self.0)
            .await?;
        Ok(grouped(rows, |row| row.team_id.clone()))
    }
}

/// Run id → its attempts, in order.
pub struct AttemptsLoader(DatabaseConnection);

impl Loader<String> for AttemptsLoader {
    type Value = Vec<run_attempts::Model>;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = run_attempts::Entity::find()
            .filter(run_attempts::Column::RunId.is_in(keys.iter().cloned()))
            .order_by_asc(run_attempts::Column::RunId)
            .order_by_asc(run_attempts::Column::Seq)
            .all(&self.0)
            .await?;
        Ok(grouped(rows, |row| row.run_id.clone()))
    }
}

/// Conversation id → all its messages, oldest first.
pub struct MessagesLoader(DatabaseConnection);

impl Loader<String> for MessagesLoader {
    type Value = Vec<messages::Model>;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows = messages::Entity::find()
            .filter(messages::Column::ConversationId.is_in(keys.iter().cloned()))
            .order_by_asc(messages::Column::Id)
            .all(&self.0)
            .await?;
        Ok(grouped(rows, |row| row.conversation_id.clone()))
    }
}

/// Team id → the team's name (a deleted team has none).
pub struct TeamNamesLoader(DatabaseConnection);

impl Loader<String> for TeamNamesLoader {
    type Value = String;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows: Vec<(String, String)> = team_rows::Entity::find()
            .select_only()
            .columns([team_rows::Column::Id, team_rows::Column::Name])
            .filter(team_rows::Column::Id.is_in(keys.iter().cloned()))
            .into_tuple()
            .all(&self.0)
            .await?;
        Ok(rows.into_iter().collect())
    }
}

/// API key id → the key's name (revoked keys keep theirs).
pub struct ApiKeyNamesLoader(DatabaseConnection);

impl Loader<String> for ApiKeyNamesLoader {
    type Value = String;
    type Error = AppError;

    async fn load(&self, keys: &[String]) -> Result<HashMap<String, Self::Value>, Self::Error> {
        let rows: Vec<(String, String)> = api_keys::Entity::find()
            .select_only()
            .columns([api_keys::Column::Id, api_keys::Column::Name])
            .filter(api_keys::Column::Id.is_in(keys.iter().cloned()))
            .into_tuple()
            .all(&self.0)
            .await?;
        Ok(rows.into_iter().collect())
    }
}
