//! The audit trail: one append-only, hash-chained row per mutation, allowed or denied, written
//! in the same transaction as the change (if it cannot be written, the change rolls back).
//! `hash = SHA-256(prev_hash ‖ canonical row)`; `verify` recomputes the chain, `list` and `follow`
//! read it.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use entity::{audit_head, audit_logs};
use sea_orm::{ConnectionTrait, DatabaseConnection, EntityTrait, QuerySelect, Set};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use crate::{
    db,
    domain::{Caller, Principal},
    error::AppError,
};

mod logs;
mod verify;

pub use logs::{AuditResult, LogFilter, cursor, follow, list, may_follow};
pub use verify::{Verification, verify, verify_as};

/// The action names rows carry, and the mutation each belongs to.
pub mod actions {
    pub const USER_PROFILE_UPDATE: &str = "user.profile.update";
    pub const USER_ROLE_SET: &str = "user.role.set";
    pub const USER_SYNC: &str = "user.sync";
    pub const USER_DELETE: &str = "user.delete";
    pub const TEAM_CREATE: &str = "team.create";
    pub const TEAM_IMPORT: &str = "team.import";
    pub const TEAM_UPDATE: &str = "team.update";
    pub const TEAM_ROLLBACK: &str = "team.rollback";
    pub const TEAM_ARCHIVE: &str = "team.archive";
    pub const TEAM_DELETE: &str = "team.delete";
    pub const TEAM_MEMBER_ADD: &str = "team.member.add";
    pub const TEAM_MEMBER_UPDATE: &str = "team.member.update";
    pub const TEAM_MEMBER_REMOVE: &str = "team.member.remove";
    pub const SHARE_LINK_CREATE: &str = "team.share_link.create";
    pub const SHARE_LINK_REVOKE: &str = "team.share_link.revoke";
    pub const SHARE_LINK_ACCEPT: &str = "team.share_link.accept";
    pub const API_KEY_CREATE: &str = "api_key.create";
    pub const API_KEY_REVOKE: &str = "api_key.revoke";
    pub const API_KEY_ROTATE: &str = "api_key.rotate";
    pub const MODEL_PRICE_UPSERT: &str = "model_price.upsert";
    pub const ERROR_GROUP_RESOLVE: &str = "error_group.resolve";
    pub const TEMPLATE_CATEGORY_CREATE: &str = "template_category.create";
    pub const TEMPLATE_CATEGORY_UPDATE: &str = "template_category.update";
    pub const TEMPLATE_CATEGORY_DELETE: &str = "template_category.delete";
    pub const TEMPLATE_CREATE: &str = "template.create";
    pub const TEMPLATE_UPDATE: &str = "template.update";
    pub const TEMPLATE_RESTORE: &str = "template.restore";
    pub const TEMPLATE_FORK: &str = "template.fork";
    pub const TEMPLATE_DELETE: &str = "template.delete";
    pub const TEMPLATE_INSTANTIATE: &str = "template.instantiate";
    pub const WORKFLOW_RUN: &str = "template.workflow.run";
    pub const BACKUP_CREATE: &str = "backup.create";
    pub const BACKUP_DELETE: &str = "backup.delete";

    /// The action and resource type of a mutation field, for rows of refused calls.
    pub fn of_mutation(field: &str) -> Option<(&'static str, &'static str)> {
        Some(match field {
            "updateProfile" => (USER_PROFILE_UPDATE, "user"),
            "setUserRole" => (USER_ROLE_SET, "user"),
            "createTeam" => (TEAM_CREATE, "team"),
            "importTeam" => (TEAM_IMPORT, "team"),
            "updateTeam" => (TEAM_UPDATE, "team"),
            "rollbackTeam" => (TEAM_ROLLBACK, "team"),
            "archiveTeam" => (TEAM_ARCHIVE, "team"),
            "deleteTeam" => (TEAM_DELETE, "team"),
            "addTeamMember" => (TEAM_MEMBER_ADD, "team_member"),
            "updateTeamMember" => (TEAM_MEMBER_UPDATE, "team_member"),
            "removeTeamMember" => (TEAM_MEMBER_REMOVE, "team_member"),
            "createShareLink" => (SHARE_LINK_CREATE, "share_link"),
            "revokeShareLink" => (SHARE_LINK_REVOKE, "share_link"),
            "acceptShareLink" => (SHARE_LINK_ACCEPT, "share_link"),
            "createApiKey" => (API_KEY_CREATE, "api_key"),
            "revokeApiKey" => (API_KEY_REVOKE, "api_key"),
            "rotateApiKey" => (API_KEY_ROTATE, "api_key"),
            "upsertModelPrice" => (MODEL_PRICE_UPSERT, "model_price"),
            "resolveErrorGroup" => (ERROR_GROUP_RESOLVE, "error_group"),
            "createTemplateCategory" => (TEMPLATE_CATEGORY_CREATE, "template_category"),
            "updateTemplateCategory" => (TEMPLATE_CATEGORY_UPDATE, "template_category"),
            "deleteTemplateCategory" => (TEMPLATE_CATEGORY_DELETE, "template_category"),
            "createTemplate" => (TEMPLATE_CREATE, "template"),
            "updateTemplate" => (TEMPLATE_UPDATE, "template"),
            "restoreTemplateVersion" => (TEMPLATE_RESTORE, "template"),
            "forkTemplate" => (TEMPLATE_FORK, "template"),
            "deleteTemplate" => (TEMPLATE_DELETE, "template"),
            "instantiateTemplate" => (TEMPLATE_INSTANTIATE, "team"),
            "runWorkflow" => (WORKFLOW_RUN, "template"),
            "createBackup" => (BACKUP_CREATE, "backup"),
            "deleteBackup" => (BACKUP_DELETE, "backup"),
            _ => return None,
        })
    }
}

/// What happened to what.
pub struct Entry {
    /// `team.create`, `user.role.set`, …
    pub action: &'static str,
    pub resource_type: &'static str,
    pub resource_id: Option<String>,
    pub team_id: Option<String>,
    /// The fields changed (never a token or secret).
    pub changes: Option<Value>,
}

impl Entry {
    pub fn new(action: &'static str, resource_type: &'static str, resource_id: impl Into<Option<String>>) -> Self {
        Self { action, resource_type, resource_id: resource_id.into(), team_id: None, changes: None }
    }

    pub fn team(mut self, team_id: impl Into<String>) -> Self {
        self.team_id = Some(team_id.into());
        self
    }

    pub fn changes(mut self, changes: Value) -> Self {
        self.changes = Some(changes);
        self
    }
}

/// Appends an allowed action inside the caller's write transaction.
pub async fn allowed<C: ConnectionTrait>(conn: &C, caller: &Caller, entry: Entry) -> Result<(), AppError> {
    append(conn, caller, entry, "allowed", None).await
}

/// Records a refused action in a transaction of its own.
pub async fn denied(db: &DatabaseConnection, caller: &Caller, entry: Entry, reason: &str) -> Result<(), AppError> {
    let txn = db::begin_write(db).await?;
    append(&txn, caller, entry, "denied", Some(reason.to_string())).await?;
    txn.commit().await?;
    Ok(())
}

async fn append<C: ConnectionTrait>(
    conn: &C,
    caller: &Caller,
    entry: Entry,
    result: &str,
    reason: Option<String>,
) -> Result<(), AppError> {
    let head = audit_head::Entity::find_by_id(1)
        .lock_exclusive()
        .one(conn)
        .await?
        .ok_or_else(|| AppError::internal("audit_head is missing"))?;
    let (actor_id, actor_kind) = match &caller.principal {
        Principal::Anonymous => (None, "anonymous"),
        Principal::User(user) => (Some(user.id.clone()), "user"),
        Principal::ApiKey(key) => (Some(key.owner.id.clone()), "api_key"),
        Principal::System(name) => (Some(name.to_string()), "system"),
    };
    let mut row = audit_logs::Model {
        seq: head.seq + 1,
        ts: Utc::now().trunc_subsecs(6),
        actor_id,
        actor_kind: actor_kind.to_string(),
        api_key_id: match &caller.principal {
            Principal::ApiKey(key) => Some(key.key_id.clone()),
            _ => None,
        },
        action: entry.action.to_string(),
        resource_type: entry.resource_type.to_string(),
        resource_id: entry.resource_id,
        team_id: entry.team_id,
        request_id: Some(caller.meta.request_id.clone()).filter(|id| !id.is_empty()),
        ip: caller.meta.ip.clone(),
        user_agent: caller.meta.user_agent.clone(),
        result: result.to_string(),
        reason,
        changes: entry.changes,
        prev_hash: head.hash.clone(),
        hash: String::new(),
    };
    row.hash = link_hash(&row);
    let next_head = audit_head::ActiveModel { id: Set(1), seq: Set(row.seq), hash: Set(row.hash.clone()) };
    audit_logs::Entity::insert(audit_logs::ActiveModel::from(row)).exec_without_returning(conn).await?;
    audit_head::Entity::update(next_head).exec(conn).await?;
    Ok(())
}

/// `SHA-256(prev_hash ‖ canonical row)`, hex.
fn link_hash(row: &audit_logs::Model) -> String {
    let canonical = canonical(&json!({
        "seq": row.seq,
        "ts": timestamp(&row.ts),
        "actor_id": row.actor_id,
        "actor_kind": row.actor_kind,
        "api_key_id": row.api_key_id,
        "action": row.action,
        "resource_type": row.resource_type,
        "resource_id": row.resource_id,
        "team_id": row.team_id,
        "request_id": row.request_id,
        "ip": row.ip,
        "user_agent": row.user_agent,
        "result": row.result,
        "reason": row.reason,
        "changes": row.changes,
    }));
    let mut hasher = Sha256::new();
    hasher.update(row.prev_hash.as_bytes());
    hasher.update(canonical.as_bytes());
    hex::encode(hasher.finalize())
}

fn timestamp(ts: &DateTime<Utc>) -> String {
    ts.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// JSON with object keys sorted at every level, so equal values hash equal on every database.
fn canonical(value: &Value) -> String {
    fn sorted(value: &Value) -> Value {
        match value {
            Value::Object(map) => {
                let mut keys: Vec<&String> = map.keys().collect();
                keys.sort();
                Value::Object(keys.into_iter().map(|k| (k.clone(), sorted(&map[k]))).collect::<Map<_, _>>())
            }
            Value::Array(items) => Value::Array(items.iter().map(sorted).collect()),
            other => other.clone(),
        }
    }
    sorted(value).to_string()
}

#[cfg(test)]
mod tests {
    use super::canonical;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"d": [ {"y": 1, "x": 2} ], "c": null}});
        assert_eq!(canonical(&a), r#"{"a":{"c":null,"d":[{"x":2,"y":1}]},"b":1}"#);
    }
}
