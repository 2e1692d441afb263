//! sea-orm entities, one file per table (docs/database.md).

pub mod api_keys;
pub mod audit_head;
pub mod audit_logs;
pub mod backups;
pub mod budget_days;
pub mod conversations;
pub mod error_groups;
pub mod messages;
pub mod model_prices;
pub mod run_attempts;
pub mod run_latency;
pub mod run_rollups;
pub mod runs;
pub mod states;
pub mod team_members;
pub mod team_share_links;
pub mod team_versions;
pub mod teams;
pub mod template_categories;
pub mod template_versions;
pub mod templates;
pub mod usage_daily;
pub mod users;
pub mod webhook_events;
pub mod workflow_runs;
pub mod workflow_steps;
