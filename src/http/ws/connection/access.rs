//! When access may have changed (a membership, a role, the account or API key the socket signed
//! in with, a team deleted or made private, or changes this instance may have missed), the
//! socket checks its subscriptions again: it signs in again when the account or key may have
//! changed (closing with 4403 when that fails), then makes each concerned operation's check
//! again and ends those that fail with the error. A shared operation is held meanwhile, so no
//! event reaches it once the change is known here.

use serde_json::json;

use super::{Close, Connection, error_json};
use crate::{
    domain::Caller,
    error::AppError,
    events::AccessChange,
    graphql::rechecks::Recheck,
    http::ws::{SlowClient, protocol::Protocol},
};

impl Connection {
    /// Checks again what `change` concerns; `Some` closes the connection.
    pub(super) async fn reconsider(&mut self, change: &AccessChange) -> Result<Option<Close>, SlowClient> {
        let concerned = self.concerned_by(change);
        for (id, _) in &concerned {
            if let Some(shared) = self.operations.get(id).and_then(|o| o.shared.as_ref()) {
                shared.hold();
            }
        }
        if matches!(change, AccessChange::User(_) | AccessChange::Key(_) | AccessChange::Missed) {
            match self.sign_in_again().await {
                Ok(()) => {}
                Err(AppError::Internal(cause) | AppError::Unavailable(cause)) => {
                    tracing::error!(error = %cause, "signing a socket in again failed");
                    return Ok(Close::new(1011, "Internal server error"));
                }
                Err(refused) => {
                    return Ok(Some(Close::Code(4403, format!("Forbidden: {}", close_reason(&refused)))));
                }
            }
        }
        for (id, recheck) in concerned {
            let caller = Caller { principal: self.principal.clone(), meta: self.meta.clone() };
            if let Err(refused) = recheck.run(self.state.clone(), caller).await {
                self.revoke(id, refused).await?;
            }
        }
        Ok(None)
    }

    /// The operations whose access `change` may have changed, with their checks.
    fn concerned_by(&self, change: &AccessChange) -> Vec<(String, Recheck)> {
        let team_of_change = match change {
            AccessChange::Member { team_id, .. } | AccessChange::Team(team_id) => Some(team_id),
            AccessChange::User(_) | AccessChange::Key(_) | AccessChange::Missed => None,
        };
        self.operations
            .iter()
            .filter_map(|(id, operation)| Some((id, operation.recheck.get()?)))
            .filter(|(_, recheck)| match (team_of_change, &recheck.team_id) {
                (Some(changed), Some(team)) => changed == team,
                _ => true,
            })
            .map(|(id, recheck)| (id.clone(), recheck))
            .collect()
    }

    /// Signs in again with the socket's credential; what it answers applies from now on.
    async fn sign_in_again(&mut self) -> Result<(), AppError> {
        let Some(credential) = &self.credential else {
            return Ok(());
        };
        let principal = self.state.auth.from_token(credential).await?;
        if principal.expires_at().is_some_and(|at| at <= chrono::Utc::now()) {
            return Err(AppError::Unauthenticated("The token has expired.".into()));
        }
        self.signed_in_as(principal);
        Ok(())
    }

    /// Ends an operation that may no longer run: `error` on `graphql-transport-ws`; on the
    /// legacy protocol, whose `error` is for operations refused before they run, `data` with the
    /// error, then `complete`.
    async fn revoke(&mut self, id: String, refused: AppError) -> Result<(), SlowClient> {
        if self.operations.remove(&id).is_none() {
            return Ok(());
        }
        self.streams.remove(&id);
        let errors = json!([error_json(refused)]);
        match self.protocol {
            Protocol::Transport => self.outbox.json(json!({"type": "error", "id": id, "payload": errors})).await,
            Protocol::Legacy => {
                let data = json!({"type": "data", "id": id, "payload": {"data": null, "errors": errors}});
                self.outbox.json(data).await?;
                self.outbox.json(json!({"type": "complete", "id": id})).await
            }
        }
    }
}

/// Why the socket's credential no longer signs in, for its close reason: the refusal's own words
/// (`The API key has been revoked.`), never an internal cause.
fn close_reason(refused: &AppError) -> String {
    match refused {
        AppError::Internal(cause) | AppError::Unavailable(cause) => {
            tracing::error!(error = %cause, "cannot sign a websocket in again");
            "access could not be checked again".into()
        }
        other => other.to_string(),
    }
}
