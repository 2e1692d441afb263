//! What every request can reach: configuration, the database, metrics.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;
use tokio::sync::watch;

use crate::{config::Config, metrics::Metrics};

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: DatabaseConnection,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<crate::auth::Authenticator>,
    pub started_at: DateTime<Utc>,
    /// Turns `true` when the server begins shutting down; long-lived sockets close on it.
    pub shutdown: watch::Receiver<bool>,
}

/// The id of the HTTP request (or websocket) an operation runs in, as sent in `x-request-id`.
#[derive(Clone, Debug)]
pub struct RequestId(pub String);

/// What the HTTP handlers get: the app state and the schema built over it.
#[derive(Clone)]
pub struct HttpState {
    pub state: AppState,
    pub schema: crate::graphql::AppSchema,
}
