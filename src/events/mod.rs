//! The event bus: what happens to runs, as it happens. In-process (a tokio broadcast channel)
//! for now; subscribers filter by run or team. A subscriber that falls behind by more than the
//! channel holds skips ahead rather than holding memory. `AuditSignal` wakes audit log followers.

use std::sync::Arc;

use async_graphql::{Enum, ID, SimpleObject};
use chrono::{DateTime, Utc};
use tokio::sync::{broadcast, watch};

/// Events kept for subscribers that have not read them yet.
const CAPACITY: usize = 4096;

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
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
#[derive(Clone, Debug, SimpleObject)]
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
    pub error_class: Option<String>,
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

pub struct EventBus {
    sender: broadcast::Sender<Arc<RunEvent>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(CAPACITY).0 }
    }
}

impl EventBus {
    /// Sends `event` to every current subscriber (none listening is fine).
    pub fn publish(&self, event: RunEvent) {
        if self.sender.receiver_count() > 0 {
            let _ = self.sender.send(Arc::new(event));
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<RunEvent>> {
        self.sender.subscribe()
    }
}

/// Wakes the followers of the audit log (`auditLogAdded`) when a mutation has ended, its
/// transaction committed or rolled back; they then read what was committed. A hint, not the
/// rows: followers also read every second, which covers rows written outside GraphQL.
#[derive(Default)]
pub struct AuditSignal {
    sender: watch::Sender<()>,
}

impl AuditSignal {
    pub fn poke(&self) {
        self.sender.send_replace(());
    }

    pub fn subscribe(&self) -> watch::Receiver<()> {
        self.sender.subscribe()
    }
}
