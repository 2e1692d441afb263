//! How a subscription keeps to its caller's access. A subscription resolver that lets a caller
//! in by a team's access registers, before its own check, how to make that check again; the
//! socket running the operation makes it again whenever access to the team may have changed
//! (a membership, a role, the caller's account or API key, the team itself) and ends the
//! operation with the error when it fails. See docs/transport.md.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
};

use async_graphql::Context;
use futures_util::{FutureExt, future::BoxFuture};

use crate::{domain::Caller, error::AppError, state::AppState};

type Check = dyn Fn(AppState, Caller) -> BoxFuture<'static, Result<(), AppError>> + Send + Sync;

/// A subscription's access check, to make again.
#[derive(Clone)]
pub struct Recheck {
    /// The team it is about; none when the resolver cannot tell before its check (any change of
    /// a team's access then has it checked again).
    pub team_id: Option<String>,
    check: Arc<Check>,
}

impl Recheck {
    /// Checks `caller` again.
    pub async fn run(&self, state: AppState, caller: Caller) -> Result<(), AppError> {
        (self.check)(state, caller).await
    }
}

/// In a socket operation's request data: where its resolver leaves its [`Recheck`].
#[derive(Clone, Default)]
pub struct RecheckSlot(Arc<Mutex<Option<Recheck>>>);

impl RecheckSlot {
    /// The check its resolver registered, if it has.
    pub fn get(&self) -> Option<Recheck> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Registers how to check again that a caller may follow what the operation streams (about
/// `team_id`, when known); call it before the resolver's own check, so that a change made while
/// that check runs is not missed. Does nothing outside a socket operation.
pub fn register<F, Fut>(ctx: &Context<'_>, team_id: Option<&str>, check: F)
where
    F: Fn(AppState, Caller) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), AppError>> + Send + 'static,
{
    let Some(slot) = ctx.data_opt::<RecheckSlot>() else {
        return;
    };
    let check: Arc<Check> = Arc::new(move |state, caller| check(state, caller).boxed());
    let recheck = Recheck { team_id: team_id.map(str::to_string), check };
    *slot.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(recheck);
}
