//! The audit trail: one append-only, hash-chained row per mutation, allowed or denied, written
//! in the same transaction as the change (if it cannot be written, the change rolls back).
//! `hash = SHA-256(prev_hash ‖ canonical row)`; `verify` recomputes the chain, `list` and `follow`
//! read it.

use std::sync::{Arc, OnceLock};

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use entity::{audit_head, audit_logs};
use sea_orm::{
    ActiveModelTrait, DatabaseConnection, DbBackend, DbErr, EntityTrait, Iterable, QueryTrait,
    sea_query::{Alias, CommonTableExpression, Expr, ExprTrait, Query, UpdateStatement, WithClause, WithQuery},
};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, MutexGuard};

use crate::{
    db::{
        batch::{Attempts, Batch, BatchError, BatchWriter, Expect, OnGuard, OpenBatch, StepResult},
        lease,
    },
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
    pub const WORKFLOW_START: &str = "workflow.start";
    pub const WORKFLOW_CANCEL: &str = "workflow.cancel";
    pub const WORKFLOW_RETRY: &str = "workflow.retry";
    pub const WORKFLOW_APPROVE: &str = "workflow.approve";
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
            "runWorkflow" | "startWorkflow" => (WORKFLOW_START, "workflow_run"),
            "cancelWorkflowRun" => (WORKFLOW_CANCEL, "workflow_run"),
            "retryWorkflowRun" => (WORKFLOW_RETRY, "workflow_run"),
            "approveWorkflowStep" => (WORKFLOW_APPROVE, "workflow_run"),
            "createBackup" => (BACKUP_CREATE, "backup"),
            "deleteBackup" => (BACKUP_DELETE, "backup"),
            _ => return None,
        })
    }
}

/// What happened to what.
#[derive(Clone, Debug)]
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

/// What a mutation decided: the batch to commit, the audit row's entry, and the answer to give
/// once committed.
pub struct Audited<T> {
    pub batch: Batch,
    pub entry: Entry,
    pub answer: T,
}

/// What a mutation that may find nothing to do decided: a batch to commit with its audit row,
/// or an answer that writes nothing (what was asked is so already, as a second revoke finds).
pub enum Decision<T> {
    Write(Audited<T>),
    Unchanged(T),
}

/// The guard code of the chain's head: another writer appended first.
const AUDIT_HEAD: &str = "audit_head";

/// The guard code of the lease: another server took this D1 database's chain.
const LEASE_LOST: &str = "lease_lost";

/// How many times one decided batch is tried after a head that moved under it.
const HEAD_ATTEMPTS: u32 = 10;

/// The one way a mutation that leaves an audit row commits (docs/write-path.md, "The audit
/// chain"): the mutation's batch, with the head moved first (guarded on the head it was decided
/// on) and the row last, so the change and its row are written together or not at all. On
/// PostgreSQL the head's move and the row are one statement, first in the batch.
///
/// Every such mutation moves the head, so writers in this process queue on a mutex, held from
/// knowing the head to the batch's end, instead of meeting in retries. A mutation decides first
/// without it (its reads run beside other mutations'); if one of its guards then fails, it
/// decides again holding it, when no other mutation of this process can get in between. The
/// head the last append left is kept; another process moving it fails the head's guard, and the
/// same batch goes again after the new head.
pub struct AuditChain {
    db: DatabaseConnection,
    writer: Arc<dyn BatchWriter>,
    head: Mutex<Option<audit_head::Model>>,
    /// On D1, the holder of the `audit` lease this server must still be: each batch asserts it.
    lease: OnceLock<String>,
}

impl AuditChain {
    pub fn new(db: DatabaseConnection, writer: Arc<dyn BatchWriter>) -> Self {
        Self { db, writer, head: Mutex::new(None), lease: OnceLock::new() }
    }

    /// From now on every batch asserts that `holder` holds the `audit` lease (a server on D1,
    /// the one writer of its chain): a server that lost it writes nothing more.
    pub fn require_lease(&self, holder: &str) {
        let _ = self.lease.set(holder.to_string());
    }

    /// The steps the chain puts before a mutation's own: the head's move, the lease's assertion.
    fn prefix(&self) -> usize {
        1 + usize::from(self.lease.get().is_some())
    }

    /// The writer of batches that leave no audit row.
    pub fn writer(&self) -> &dyn BatchWriter {
        self.writer.as_ref()
    }

    /// A mutation ending in its audit row: `plan` reads and decides (again after a guard that
    /// did not hold, as in `db::batch::write`); `on_guard` maps the plan's guards by their step
    /// in the plan's batch. Answers the plan's answer and its steps' results.
    pub async fn write<T, F, Fut>(
        &self,
        caller: &Caller,
        mut plan: F,
        on_guard: impl Fn(usize, &'static str) -> OnGuard,
    ) -> Result<(T, Vec<StepResult>), AppError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Audited<T>, AppError>>,
    {
        let decide = || {
            let planned = plan();
            async move { planned.await.map(Decision::Write) }
        };
        self.decide(caller, decide, on_guard).await
    }

    /// As [`write`](Self::write), for a mutation whose plan may answer without writing
    /// ([`Decision::Unchanged`]: no batch, no audit row, no step results).
    pub async fn decide<T, F, Fut>(
        &self,
        caller: &Caller,
        mut plan: F,
        on_guard: impl Fn(usize, &'static str) -> OnGuard,
    ) -> Result<(T, Vec<StepResult>), AppError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<Decision<T>, AppError>>,
    {
        // The first decision is made without the lock, so that mutations of different things do
        // not wait on each other's reads. The lock is taken for the head and the batch, and kept
        // once a guard failed: the next decision is then made while no other mutation of this
        // process can commit, so it holds (no pause needed before it). Where the writer can, the
        // first attempt's transaction is opened before waiting for the lock.
        let prefix = self.prefix();
        let on_guard = |index: usize, code| match (code, index.checked_sub(prefix)) {
            (LEASE_LOST, _) => OnGuard::Answer(AppError::internal(
                "this server no longer holds the audit lease of its D1 database: another server writes it",
            )),
            (AUDIT_HEAD, _) | (_, None) => OnGuard::Retry,
            (_, Some(index)) => on_guard(index, code),
        };
        let mut held: Option<MutexGuard<'_, Option<audit_head::Model>>> = None;
        let mut attempts = Attempts::without_pauses();
        loop {
            let Audited { batch, entry, answer } = match plan().await? {
                Decision::Write(audited) => audited,
                Decision::Unchanged(answer) => return Ok((answer, Vec::new())),
            };
            let appended = match &mut held {
                Some(known) => self.append(known, caller, batch, &entry, None, None).await,
                None => match self.writer.open().await {
                    Ok(opened) => {
                        let known = held.insert(self.head.lock().await);
                        self.append(known, caller, batch, &entry, None, opened).await
                    }
                    Err(err) => Err(err),
                },
            };
            match appended {
                Ok(results) => return Ok((answer, results)),
                Err(err) => attempts.failed(err, &on_guard).await?,
            }
        }
    }

    /// Records a refused action: a row of its own.
    pub async fn denied(&self, caller: &Caller, entry: Entry, reason: &str) -> Result<(), AppError> {
        let mut known = self.head.lock().await;
        let mut attempts = Attempts::default();
        loop {
            let batch = Batch::new(self.writer.backend());
            match self.append(&mut known, caller, batch, &entry, Some(reason), None).await {
                Ok(_) => return Ok(()),
                Err(err) => attempts.failed(err, &|_, _| OnGuard::Retry).await?,
            }
        }
    }

    /// Commits `batch` between moving the head from the one `known` (or read now) and inserting
    /// the row of `entry`; answers the results of `batch`'s own steps. When only the head moved
    /// (another process wrote a row), the same batch goes again after the new head, up to
    /// [`HEAD_ATTEMPTS`] times: what the mutation decided on still holds. The first attempt
    /// runs in `opened`, when the writer opened its transaction ahead.
    async fn append(
        &self,
        known: &mut Option<audit_head::Model>,
        caller: &Caller,
        batch: Batch,
        entry: &Entry,
        reason: Option<&str>,
        mut opened: Option<Box<dyn OpenBatch>>,
    ) -> Result<Vec<StepResult>, BatchError> {
        let result = if reason.is_some() { "denied" } else { "allowed" };
        for attempt in 1..=HEAD_ATTEMPTS {
            let head = match known.take() {
                Some(head) => head,
                None => read_head(&self.db).await.map_err(BatchError::Other)?,
            };
            let row = link(&head, caller, entry, result, reason.map(str::to_string));
            match self.chained(&head, batch.clone(), &row, opened.take()).await {
                Ok(results) => {
                    *known = Some(audit_head::Model { id: 1, seq: row.seq, hash: row.hash });
                    return Ok(results);
                }
                Err(BatchError::Guard { index: 0, code: AUDIT_HEAD }) if attempt < HEAD_ATTEMPTS => {}
                Err(err) => return Err(err),
            }
        }
        unreachable!("the last attempt returns")
    }

    /// Commits `batch` between moving the head (guarded) and inserting `row`, in `opened` or a
    /// transaction of its own; answers the results of `batch`'s own steps.
    async fn chained(
        &self,
        head: &audit_head::Model,
        batch: Batch,
        row: &audit_logs::Model,
        opened: Option<Box<dyn OpenBatch>>,
    ) -> Result<Vec<StepResult>, BatchError> {
        let move_head = Query::update()
            .table(audit_head::Entity)
            .value(audit_head::Column::Seq, row.seq)
            .value(audit_head::Column::Hash, row.hash.clone())
            .and_where(Expr::col(audit_head::Column::Id).eq(1))
            .and_where(Expr::col(audit_head::Column::Seq).eq(head.seq))
            .to_owned();
        let steps = batch.len();
        let backend = self.writer.backend();
        let on_postgres = backend == DbBackend::Postgres;
        let mut chained = if on_postgres {
            // The head's move and the row in one statement: a round trip fewer while the mutex
            // is held (docs/write-path.md, "The audit chain").
            Batch::new(backend).write(&row_after_head(move_head, row))
        } else {
            Batch::new(backend).write(&move_head)
        }
        .guard(Expect::One, AUDIT_HEAD);
        if let Some(holder) = self.lease.get() {
            chained = chained.assert(&lease::held_by(lease::AUDIT, holder), LEASE_LOST);
        }
        let prefix = chained.len();
        let chained = if on_postgres {
            chained.then(batch)
        } else {
            let insert_row = audit_logs::Entity::insert(audit_logs::ActiveModel::from(row.clone())).into_query();
            chained.then(batch).write(&insert_row)
        };
        let mut results = match opened {
            Some(opened) => opened.run(chained).await?,
            None => self.writer.run(chained).await?,
        };
        Ok(results.drain(prefix..prefix + steps).collect())
    }
}

/// `WITH moved AS (<move_head> RETURNING id) INSERT INTO audit_logs (…) SELECT <row> FROM moved`:
/// the row is inserted only if the head moved, so the statement's row count is the head's guard.
fn row_after_head(mut move_head: UpdateStatement, row: &audit_logs::Model) -> WithQuery {
    let moved = Alias::new("moved");
    let model = audit_logs::ActiveModel::from(row.clone());
    let mut values = Query::select();
    for column in audit_logs::Column::iter() {
        values.expr(Expr::val(model.get(column).into_value().expect("a row built in full")));
    }
    values.from(moved.clone());
    let insert = Query::insert()
        .into_table(audit_logs::Entity)
        .columns(audit_logs::Column::iter())
        .select_from(values)
        .expect("one value a column")
        .to_owned();
    let moved = CommonTableExpression::new()
        .query(move_head.returning_col(audit_head::Column::Id).to_owned())
        .table_name(moved)
        .to_owned();
    insert.with(WithClause::new().cte(moved).to_owned())
}

async fn read_head(db: &DatabaseConnection) -> Result<audit_head::Model, DbErr> {
    let head = audit_head::Entity::find_by_id(1).one(db).await?;
    head.ok_or_else(|| DbErr::RecordNotFound("audit_head is missing".into()))
}

/// The next link of the chain after `head`: the row, its hash included.
pub fn link(
    head: &audit_head::Model,
    caller: &Caller,
    entry: &Entry,
    result: &str,
    reason: Option<String>,
) -> audit_logs::Model {
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
        resource_id: entry.resource_id.clone(),
        team_id: entry.team_id.clone(),
        request_id: Some(caller.meta.request_id.clone()).filter(|id| !id.is_empty()),
        ip: caller.meta.ip.clone(),
        user_agent: caller.meta.user_agent.clone(),
        result: result.to_string(),
        reason,
        changes: entry.changes.clone(),
        prev_hash: head.hash.clone(),
        hash: String::new(),
    };
    row.hash = link_hash(&row);
    row
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
