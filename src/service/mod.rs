//! Business rules, one module per area, over the database and app state; no GraphQL here.

pub mod analytics;
pub mod api_keys;
pub mod audit;
pub mod backups;
pub mod conversations;
pub mod error_groups;
pub mod estimates;
pub mod exports;
pub mod insights;
pub mod page;
pub mod prices;
pub mod range;
pub mod resources;
pub mod rollups;
pub mod run_writer;
pub mod runs;
pub mod share_links;
pub mod spec_diff;
pub mod system;
pub mod teams;
pub mod template_categories;
pub mod templates;
pub mod usage;
pub mod usage_report;
pub mod users;
pub mod versions;
