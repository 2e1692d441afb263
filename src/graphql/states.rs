//! The stored states the schema shows, as GraphQL enums. Each mirrors an enum of
//! `entity::states` (`remote`): the derive writes the `From` conversions both ways, so a new
//! state added on one side and not the other fails to build.

use async_graphql::Enum;
use entity::states;

/// A run's life: `queued` → `running` → `succeeded` | `failed` | `cancelled`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::RunStatus")]
pub enum RunStatus {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

/// A workflow run's life: `QUEUED` → `RUNNING` (→ `WAITING` for an approval) → `SUCCEEDED` |
/// `FAILED` | `CANCELLED`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::WorkflowStatus")]
pub enum WorkflowStatus {
    /// Stored, not started by any instance yet.
    Queued,
    Running,
    /// Paused until an operator approves a step.
    Waiting,
    /// Every step succeeded.
    Succeeded,
    /// A step failed; the steps after it did not run.
    Failed,
    Cancelled,
}

/// How one step of a workflow run stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::WorkflowStepStatus")]
pub enum WorkflowStepStatus {
    /// Not reached yet.
    Pending,
    /// Its run is going.
    Running,
    /// An approval waiting for an operator's decision (`approveWorkflowStep`).
    Waiting,
    /// Its run succeeded, or its approval was given.
    Succeeded,
    /// Its text could not be rendered, or its run did not succeed.
    Failed,
    /// Not run: its condition did not hold, or the workflow ended before it.
    Skipped,
    /// The workflow was cancelled while it ran.
    Cancelled,
}

/// The global role: ADMIN manages the whole server, MEMBER only what they own or share.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::GlobalRole")]
pub enum GlobalRole {
    Admin,
    Member,
}

/// Per-team roles, weakest first: a stronger role may do all a weaker one may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::TeamRole")]
pub enum TeamRole {
    /// Reads the team.
    Viewer,
    /// Runs the team, cannot change it.
    Operator,
    /// Changes the team.
    Editor,
    /// Manages members, archives and deletes.
    Owner,
}

/// Who may find a team.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::Visibility")]
pub enum Visibility {
    /// Members only.
    Private,
    /// Anyone may view it.
    Public,
}

/// Who may use a template.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::TemplateVisibility")]
pub enum TemplateVisibility {
    /// Its owner (and admins).
    Private,
    /// The members of its team.
    Team,
    /// Anyone signed in.
    Public,
}

/// What a template makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::TemplateKind")]
pub enum TemplateKind {
    /// A team spec to instantiate.
    Team,
    /// A prompt with variables.
    Query,
    /// Ordered steps run against a team.
    Workflow,
    /// A team with a sample conversation.
    Demo,
}

/// The length of a rollup bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Enum)]
#[graphql(remote = "states::Grain")]
pub enum Grain {
    Minute,
    Hour,
    Day,
}
