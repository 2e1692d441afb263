//! The audit log: `auditLogs`, `verifyAuditLog` and the live `auditLogAdded` subscription.

use async_graphql::{Context, ID, InputObject, Object, SimpleObject, Subscription, connection::Connection};
use chrono::{DateTime, Duration, Utc};
use entity::audit_logs as rows;
use futures_util::{Stream, StreamExt};
use serde_json::Value;

use super::{caller, connection, loaders::node_fields, names, rechecks, runs::TimeRangeInput};
use crate::{
    error::GqlResultExt,
    graphql::scalars::Json,
    service::{
        audit::{self, AuditResult, LogFilter, Verification},
        page::PageRequest,
        range::TimeRange,
    },
    state::AppState,
};

/// The span `auditLogs` covers when `range` leaves `from` open.
const DEFAULT_SPAN_DAYS: i64 = 30;

fn resolve(range: Option<TimeRangeInput>) -> Result<TimeRange, crate::error::AppError> {
    let range = range.unwrap_or_default();
    TimeRange::resolve(range.from, range.to, Duration::days(DEFAULT_SPAN_DAYS))
}

#[derive(Default)]
pub struct AuditQuery;

#[Object]
impl AuditQuery {
    /// Audit rows, newest first. Admins read every row; anyone else the rows of the teams they
    /// own (with `teamId`, that team: NOT_FOUND if you cannot see it, FORBIDDEN if you do not
    /// own it). API keys must name a team (and need `teams:write`). The range defaults to the
    /// last 30 days.
    #[graphql(complexity = "first.map_or(20, |n| n.max(1) as usize) * child_complexity")]
    async fn audit_logs(
        &self,
        ctx: &Context<'_>,
        filter: Option<AuditLogFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<Connection<String, AuditLog>> {
        let state = ctx.data::<AppState>()?;
        let page = PageRequest::new(first, after, state.config.limits.max_page_size).gql()?;
        let filter = filter.unwrap_or_default();
        let filter = LogFilter {
            actor: filter.actor.map(|id| id.0),
            action: filter.action,
            resource_type: filter.resource_type,
            resource_id: filter.resource_id.map(|id| id.0),
            team_id: filter.team_id.map(|id| id.0),
            result: filter.result,
            range: resolve(filter.range).gql()?,
        };
        let rows = audit::list(&state.db, &caller(ctx), filter, &page).await.gql()?;
        names::preload(ctx, &node_fields(ctx, &[]), "actorName", named(&rows.items)).await?;
        Ok(connection(&page, rows, audit::cursor, AuditLog))
    }

    /// Recomputes the hash chain (admins only) and names the first broken link. With `range`,
    /// the rows written in it, linked to the row just before; without, the whole log, whose
    /// last row must also be the one the chain head recorded (so a deleted last row shows).
    async fn verify_audit_log(
        &self,
        ctx: &Context<'_>,
        range: Option<TimeRangeInput>,
    ) -> async_graphql::Result<AuditVerification> {
        let state = ctx.data::<AppState>()?;
        let range = range.map(|r| resolve(Some(r))).transpose().gql()?;
        audit::verify_as(&state.db, &caller(ctx), range).await.map(AuditVerification::from).gql()
    }
}

#[derive(Default)]
pub struct AuditSubscription;

#[Subscription]
impl AuditSubscription {
    /// Every audit row of a team written from now on, once its change has committed, in `seq`
    /// order (a rolled-back change never shows). Team owners and admins only.
    async fn audit_log_added(
        &self,
        ctx: &Context<'_>,
        team_id: ID,
    ) -> async_graphql::Result<impl Stream<Item = AuditLog>> {
        let state = ctx.data::<AppState>()?;
        let team = team_id.to_string();
        rechecks::register(ctx, Some(&team_id), move |state, caller| {
            let team = team.clone();
            async move { audit::may_follow(&state.db, &caller, &team).await }
        });
        let wake = state.bus.audit_followers();
        let rows = audit::follow(&state.db, &caller(ctx), &team_id, wake).await.gql()?;
        Ok(rows.map(AuditLog))
    }
}

/// The users, teams and API keys `rows` name.
fn named(rows: &[rows::Model]) -> names::Ids {
    names::Ids {
        users: rows.iter().filter_map(|r| acting_user(r).map(str::to_string)).collect(),
        teams: rows.iter().filter_map(|r| r.team_id.clone()).collect(),
        api_keys: rows.iter().filter_map(|r| r.api_key_id.clone()).collect(),
    }
}

/// The user who acted (directly or through an API key); none for a server task or anonymous.
fn acting_user(row: &rows::Model) -> Option<&str> {
    matches!(row.actor_kind.as_str(), "user" | "api_key").then_some(row.actor_id.as_deref()).flatten()
}

/// Which audit rows to list; each field given narrows the list.
#[derive(InputObject, Default)]
pub struct AuditLogFilter {
    /// Rows of this actor (a user id; for an API key, its owner's).
    pub actor: Option<ID>,
    /// Rows of this action, exactly (`team.update`, `api_key.create`, …).
    pub action: Option<String>,
    /// Rows about this kind of resource (`team`, `team_member`, `api_key`, …).
    pub resource_type: Option<String>,
    /// Rows about this resource (a team, user, API key, … id).
    pub resource_id: Option<ID>,
    /// Rows of this team; you must own it (admins: any team, even a deleted one).
    pub team_id: Option<ID>,
    /// Only the allowed, or only the refused, actions.
    pub result: Option<AuditResult>,
    /// When the rows were written; the last 30 days by default, at most 400 days.
    pub range: Option<TimeRangeInput>,
}

/// One audited action, allowed or refused. Rows are append-only and hash-chained.
pub struct AuditLog(pub rows::Model);

#[Object]
impl AuditLog {
    /// Position in the log: 1, 2, … without gaps, in commit order.
    async fn seq(&self) -> i64 {
        self.0.seq
    }
    /// When the action was recorded (UTC, microseconds).
    async fn ts(&self) -> DateTime<Utc> {
        self.0.ts
    }
    /// The user who acted (an API key's owner), or the name of a server task.
    async fn actor_id(&self) -> Option<ID> {
        self.0.actor_id.clone().map(ID)
    }
    /// The acting user's display name (or email); null for a server task, an anonymous
    /// caller or a deleted user.
    async fn actor_name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        names::user(ctx, acting_user(&self.0)).await
    }
    /// `user`, `api_key`, `system` or `anonymous`.
    async fn actor_kind(&self) -> &str {
        &self.0.actor_kind
    }
    /// The API key the action came through, if any.
    async fn api_key_id(&self) -> Option<ID> {
        self.0.api_key_id.clone().map(ID)
    }
    /// That API key's name (revoked keys keep theirs).
    async fn api_key_name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        names::api_key(ctx, self.0.api_key_id.as_deref()).await
    }
    /// What was done, e.g. `team.update`.
    async fn action(&self) -> &str {
        &self.0.action
    }
    /// The kind of thing acted on, e.g. `team`.
    async fn resource_type(&self) -> &str {
        &self.0.resource_type
    }
    /// The thing acted on; null for refused actions and some creations.
    async fn resource_id(&self) -> Option<ID> {
        self.0.resource_id.clone().map(ID)
    }
    /// The team the action belongs to, if any.
    async fn team_id(&self) -> Option<ID> {
        self.0.team_id.clone().map(ID)
    }
    /// That team's name; null for a deleted team.
    async fn team_name(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<String>> {
        names::team(ctx, self.0.team_id.as_deref()).await
    }
    /// The `x-request-id` of the request, to find it in the server log.
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    /// The address the request came from.
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    /// The client's `user-agent` (first 512 characters).
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    /// Whether the action went through.
    async fn result(&self) -> AuditResult {
        AuditResult::parse(&self.0.result)
    }
    /// Why the action was refused.
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }
    /// What changed (never a secret).
    async fn changes(&self) -> Option<Json<Value>> {
        self.0.changes.clone().map(Json)
    }
    /// The previous row's `hash` (64 zeros for the first row).
    async fn prev_hash(&self) -> &str {
        &self.0.prev_hash
    }
    /// SHA-256 of `prevHash` and this row's contents, hex.
    async fn hash(&self) -> &str {
        &self.0.hash
    }
}

/// The outcome of recomputing the audit chain.
#[derive(SimpleObject)]
pub struct AuditVerification {
    /// True when every row checked holds.
    pub ok: bool,
    /// Rows read, up to and including the first broken one.
    pub checked_rows: i64,
    /// The first broken link: the `seq` of a changed row, or the first missing `seq` when rows
    /// were deleted.
    pub first_broken_seq: Option<i64>,
    /// What is wrong, in words; null when `ok`.
    pub problem: Option<String>,
}

impl From<Verification> for AuditVerification {
    fn from(v: Verification) -> Self {
        Self { ok: v.ok(), checked_rows: v.rows as i64, first_broken_seq: v.first_broken, problem: v.problem }
    }
}
