//! Types every layer may name and that do nothing by themselves: who calls and what they may
//! do (`identity`), and what happens to runs and to stored values (`events`). Nothing here
//! imports another module of the crate (docs/architecture.md).

pub mod events;
pub mod identity;

pub use self::{
    events::{Invalidation, RunEvent, RunEventKind},
    identity::{Caller, GlobalRole, KeyPrincipal, Org, Principal, RequestMeta, Scope, TeamRole, UserPrincipal},
};
