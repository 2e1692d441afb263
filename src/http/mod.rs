//! Everything that speaks HTTP: the router, the GraphQL transports, websockets, REST downloads,
//! webhooks in, health and metrics, and the pages served (docs/architecture.md).

pub mod clerk_webhook;
pub mod dashboard;
pub mod error;
pub mod exports;
pub mod graphiql;
pub mod home;
pub mod ops;
pub mod rest;
pub mod router;
pub mod server;
pub mod sharing;
pub mod transport;
pub mod usage_csv;
pub mod wire;
pub mod ws;

use std::sync::Arc;

use crate::{graphql::AppSchema, state::AppState};

/// What the HTTP handlers get: the app state, the schema built over it, and the subscriptions
/// the sockets share.
#[derive(Clone)]
pub struct HttpState {
    pub state: AppState,
    pub schema: AppSchema,
    pub shared: Arc<sharing::Groups>,
}
