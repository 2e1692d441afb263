//! The integration tests: one module per area, all in one test binary, so the suite links
//! once and shares per-process set-up (the template database in `common`). The tests that
//! change process-wide state stay binaries of their own beside this folder: `internal_errors`
//! (installs the global log subscriber) and `provider_keys` / `openai_provider` (configure
//! providers through environment variables).

#[path = "../common/mod.rs"]
mod common;

mod api_keys;
mod audit;
mod audit_log_added;
mod audit_logs;
mod auth;
mod authorization;
mod backups;
mod budgets;
mod cache;
mod cli;
mod concurrency;
mod connections;
mod conversations;
mod crash_safety;
mod dashboard;
mod database;
mod estimates;
mod exports;
mod generated;
mod graphiql;
mod loaders;
mod metrics;
mod monitoring;
mod ops;
mod resource_usage;
mod run_events;
mod runs;
mod scale_out;
mod share_links;
mod starter_templates;
mod starters;
mod statement_budgets;
mod teams;
mod template_editor;
mod templates;
mod transport;
mod usage;
mod usage_csv;
mod usage_report;
mod users;
mod versions;
mod webhooks;
mod websocket;
mod workflows;
mod write_path;
