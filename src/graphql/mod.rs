//! The GraphQL schema: one module per area merged at the root, the DataLoaders, the request
//! limits and the extensions. The transports that serve it are `http`'s.

pub mod analytics;
pub mod answers;
pub mod api_keys;
pub mod audit;
pub mod backups;
pub mod conversations;
pub mod denials;
pub mod estimates;
pub mod exports;
pub mod inputs;
pub mod limits;
pub mod loaders;
pub mod metering;
pub mod names;
pub mod operation;
pub mod prices;
pub mod rechecks;
pub mod runs;
pub mod scalars;
pub mod share_links;
pub mod shareable;
pub mod states;
pub mod system;
pub mod teams;
pub mod templates;
pub mod usage;
pub mod users;
pub mod workflows;

use async_graphql::{MergedObject, MergedSubscription, Schema, extensions::Tracing};

use crate::{config::Config, metrics::Metrics, state::AppState};

#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    system::SystemQuery,
    users::UsersQuery,
    teams::TeamsQuery,
    teams::VersionsQuery,
    api_keys::ApiKeysQuery,
    share_links::ShareLinksQuery,
    exports::ExportsQuery,
    runs::RunsQuery,
    estimates::EstimatesQuery,
    conversations::ConversationsQuery,
    prices::PricesQuery,
    analytics::AnalyticsQuery,
    usage::UsageQuery,
    audit::AuditQuery,
    templates::TemplatesQuery,
    workflows::WorkflowsQuery,
    backups::BackupsQuery,
);

#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    users::UsersMutation,
    teams::TeamsMutation,
    api_keys::ApiKeysMutation,
    share_links::ShareLinksMutation,
    exports::ExportsMutation,
    runs::RunsMutation,
    conversations::ConversationsMutation,
    prices::PricesMutation,
    templates::TemplatesMutation,
    workflows::WorkflowsMutation,
    backups::BackupsMutation,
);

#[derive(MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct SubscriptionRoot(
    system::SystemSubscription,
    runs::RunsSubscription,
    analytics::AnalyticsSubscription,
    audit::AuditSubscription,
);

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// The schema with the configured limits; `state` is absent only when printing the SDL.
pub fn build_schema(config: &Config, state: Option<AppState>) -> AppSchema {
    let limits = &config.limits;
    let metrics = state.as_ref().map(|s| s.metrics.clone()).unwrap_or_else(|| std::sync::Arc::new(Metrics::default()));
    let mut builder = Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .extension(Tracing)
        .extension(denials::AuditDenials)
        .extension(metering::Metering)
        .extension(answers::Answers)
        // Depth is checked by `RequestLimits`, which measures introspection apart.
        .extension(limits::RequestLimits::new(limits, !config.is_production(), metrics))
        .limit_complexity(limits.complexity)
        .limit_recursive_depth(limits.recursion)
        .limit_directives(limits.directives);
    if config.is_production() {
        builder = builder.disable_introspection().disable_suggestions();
    }
    if let Some(state) = state {
        builder = builder.data(state);
    }
    builder.finish()
}

/// The caller of the operation being resolved (anonymous when none was attached).
pub fn principal<'a>(ctx: &'a async_graphql::Context<'_>) -> &'a crate::domain::Principal {
    static ANONYMOUS: crate::domain::Principal = crate::domain::Principal::Anonymous;
    ctx.data_opt::<crate::domain::Principal>().unwrap_or(&ANONYMOUS)
}

/// A Relay connection of one page: `key` gives each row's cursor key, `node` its GraphQL object.
pub fn connection<T, N: async_graphql::OutputType>(
    page: &crate::service::page::PageRequest,
    rows: crate::service::page::Page<T>,
    key: impl Fn(&T) -> String,
    node: impl Fn(T) -> N,
) -> async_graphql::connection::Connection<String, N> {
    let mut connection = async_graphql::connection::Connection::new(page.after.is_some(), rows.has_next);
    connection.edges.extend(rows.items.into_iter().map(|row| {
        let cursor = crate::service::page::encode_cursor(&key(&row));
        async_graphql::connection::Edge::new(cursor, node(row))
    }));
    connection
}

/// The caller and where the request came from, for services.
pub fn caller(ctx: &async_graphql::Context<'_>) -> crate::domain::Caller {
    crate::domain::Caller {
        principal: principal(ctx).clone(),
        meta: ctx.data_opt::<crate::domain::RequestMeta>().cloned().unwrap_or_default(),
    }
}

/// The schema in SDL, as committed in `schema.graphql`, with the `@specifiedBy` of its scalars.
pub fn sdl(config: &Config) -> String {
    build_schema(config, None).sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
}
