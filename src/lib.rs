//! Ensemble: a GraphQL backend to build, version, share, run and watch teams of AI agents.

pub mod auth;
pub mod cache;
pub mod cli;
pub mod config;
pub mod db;
pub mod domain;
pub mod error;
pub mod events;
pub mod graphql;
pub mod http;
#[cfg(test)]
mod layers;
pub mod metrics;
pub mod orchestrator;
pub mod rate_limit;
pub mod redact;
pub mod service;
pub mod startup;
pub mod state;
pub mod telemetry;
