//! Everything that speaks HTTP: the router, the GraphQL transports, websockets, REST downloads,
//! webhooks in, health and metrics, and the pages served (docs/architecture.md).

pub mod clerk_webhook;
