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
