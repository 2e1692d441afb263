//! What happens, as types: a run's events as subscribers see them, and the committed writes
//! that make cached values stale. The event bus (`events`) carries both.

use async_graphql::{Enum, ID, SimpleObject};
use chrono::{DateTime, Utc};
use entity::states::ErrorCode;
use serde::{Deserialize, Serialize};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum, Serialize, Deserialize)]
pub enum RunEventKind {
    /// The run is stored and about to start.
    Queued,
    /// Routing chose an agent (`agent`, `rule`, `reason`).
    Routed,
    /// A call to a model began (`agent`, `model`, `attempt`).
    AttemptStarted,
    /// A call failed (`errorClass`, `error`, and `backoffMs` when a retry follows).
    AttemptFailed,
    /// A piece of streamed answer (`delta`).
    Delta,
    /// The agent was exhausted; the run moves on to `agent`.
    Fallback,
    /// Terminal: the run answered.
    Completed,
    /// Terminal: the run failed (`errorClass` is the run's error code).
    Failed,
    /// Terminal: the run was cancelled.
    Cancelled,
}

impl RunEventKind {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }
}

/// One thing that happened to a run. Fields not relevant to `kind` are null.
#[derive(Clone, Debug, SimpleObject, Serialize, Deserialize)]
pub struct RunEvent {
    pub run_id: ID,
    pub team_id: ID,
    pub kind: RunEventKind,
    pub at: DateTime<Utc>,
    pub agent: Option<String>,
    pub model: Option<String>,
    /// The routing rule that matched (none: the default agent).
    pub rule: Option<String>,
    /// Why routing chose the agent, e.g. `contains "refund"`.
    pub reason: Option<String>,
    /// The agent's attempt number (1 is the first call).
    pub attempt: Option<i32>,
    // The schema shows the code as its stored text, as `Run.errorCode` does.
    #[graphql(skip, derived(name = "error_class", into = "Option<String>", owned, with = "stored_text"))]
    pub error_class: Option<ErrorCode>,
    pub error: Option<String>,
    /// How long the run waits before the next attempt.
    pub backoff_ms: Option<i64>,
    pub delta: Option<String>,
}

impl RunEvent {
    pub fn new(run_id: &str, team_id: &str, kind: RunEventKind) -> Self {
        Self {
            run_id: ID(run_id.to_string()),
            team_id: ID(team_id.to_string()),
            kind,
            at: Utc::now(),
            agent: None,
            model: None,
            rule: None,
            reason: None,
            attempt: None,
            error_class: None,
            error: None,
            backoff_ms: None,
            delta: None,
        }
    }
}

/// A run's error code as the schema shows it.
fn stored_text(code: Option<ErrorCode>) -> Option<String> {
    code.map(|code| code.to_string())
}

/// A committed write that makes cached values stale, here and on every other instance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Invalidation {
    /// `createApiKey`: its prefix (no longer unknown).
    ApiKeyCreated(String),
    /// A key revoked or rotated (or revoked with its deleted owner): its prefix.
    ApiKeyChanged(String),
    /// A user's row changed: role, profile, deletion, a sync from Clerk.
    UserChanged(String),
    /// A template saved (a new version, a move, a share) or deleted.
    TemplateChanged(String),
    /// A category created, changed or deleted.
    CategoriesChanged,
    /// A price set: any model may have been priced by it.
    PricesChanged,
    /// A member removed from a team or given another role (nothing is cached; open
    /// subscriptions of the member on the team are checked again).
    TeamMemberChanged { team_id: String, user_id: String },
    /// A team deleted or made private (nothing is cached; every open subscription on the team
    /// is checked again).
    TeamAccessChanged(String),
}
