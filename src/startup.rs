//! `App::build` connects, migrates, binds (port 0 in tests) and wires the router; `run` serves
//! until SIGTERM/SIGINT and lets in-flight requests finish.

mod audit_lease;

use std::{future::Future, net::SocketAddr, sync::Arc};

use axum::Router;
use migration::{Migrator, MigratorTrait};
use tokio::{
    net::TcpListener,
    sync::{broadcast, watch},
};

use crate::{
    auth::Authenticator,
    cache::Caches,
    config::{Config, ConnectionLimits},
    db,
    error::AppError,
    events::{EventBus, Notice},
    http::server,
    metrics::Metrics,
    rate_limit::RateLimits,
    service::{
        audit::AuditChain,
        backups::{Backups, DatabaseLock},
        runs::{self, Runner},
        templates::{Templates, body, starters},
        usage::UsageMeter,
        workflows::Workflows,
    },
    state::AppState,
};

pub struct App {
    listener: TcpListener,
    router: Router,
    state: AppState,
    shutdown: watch::Sender<bool>,
    /// Held while the server runs, so `ensemble backup restore` refuses meanwhile.
    _lock: Option<DatabaseLock>,
    /// On D1: this server's claim to write the audit chain, released at shutdown.
    lease: Option<audit_lease::AuditLease>,
}

/// Why the server did not start, in words for the person starting it (printed once by the CLI).
#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error(
        "the database has {count} pending migration(s), up to {newest}, and ENSEMBLE_AUTO_MIGRATE=false: \
         run `ensemble migrate up` (or start with ENSEMBLE_AUTO_MIGRATE=true)"
    )]
    PendingMigrations { count: usize, newest: String },
    #[error(
        "the D1 database lacks {} migration(s) this release needs: {}; apply them with \
         `wrangler d1 migrations apply DB --remote` (from d1-bridge/, d1-bridge/README.md), then start again",
        missing.len(), missing.join(", ")
    )]
    D1Behind { missing: Vec<String> },
    #[error(
        "another server writes this D1 database: {holder} holds its audit lease until {until} (renewed while it \
         runs). D1 takes one server at a time: stop that one first, or wait until then if it stopped without \
         releasing the lease"
    )]
    LeaseTaken { holder: String, until: chrono::DateTime<chrono::Utc> },
    #[error("{0}")]
    Failed(String),
}

impl From<AppError> for StartupError {
    fn from(err: AppError) -> Self {
        Self::Failed(err.into_cause())
    }
}

impl From<db::ConnectError> for StartupError {
    fn from(err: db::ConnectError) -> Self {
        Self::Failed(err.to_string())
    }
}

impl From<sea_orm::DbErr> for StartupError {
    fn from(err: sea_orm::DbErr) -> Self {
        Self::Failed(format!("database error: {err}"))
    }
}

impl App {
    pub async fn build(config: Config) -> Result<Self, StartupError> {
        if config.is_production() {
            tracing::info!("running in production mode: introspection and suggestions are off");
            if config.metrics_token.is_none() {
                tracing::warn!("/metrics is open to anyone who can reach it: set ENSEMBLE_METRICS_TOKEN");
            }
        }
        let (wait, limit) = (config.runs.run_wait_secs, config.request_timeout_secs);
        if wait >= limit {
            tracing::warn!(
                "ENSEMBLE_RUN_WAIT_SECS ({wait}) is not below ENSEMBLE_REQUEST_TIMEOUT ({limit}): a run that \
                 outlasts the request's limit is answered 504 instead of with the run under way; lower the wait"
            );
        }
        db::check_url(&config.database_url)?;
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StartupError::Failed(format!("cannot create the data folder {}: {e}", config.data_dir.display()))
        })?;
        let lock = DatabaseLock::for_server(&config.database_url)?;
        let statements = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let db = db::connect_counting(&config.database_url, config.db_pool_size, statements.clone()).await?;
        let bus = match &config.redis_url {
            Some(url) => EventBus::shared(url, &config.redis_namespace).map_err(StartupError::Failed)?,
            None => EventBus::local(),
        };
        let listener = TcpListener::bind(config.listen)
            .await
            .map_err(|e| StartupError::Failed(format!("cannot listen on {} (ENSEMBLE_LISTEN): {e}", config.listen)))?;
        let metrics = Arc::new(Metrics::default());
        let caches = Arc::new(Caches::new(&config, &metrics.caches, bus.clone()));
        let auth = Arc::new(Authenticator::new(&config, db.clone(), caches.clone(), &metrics.caches).await?);
        let (shutdown, stopping) = watch::channel(false);
        let writer = db::writer(&config.database_url, &db, Some(statements.clone()))?;
        let usage = Arc::new(UsageMeter::new(writer.clone()));
        let audit = Arc::new(AuditChain::new(db.clone(), writer.clone()));
        let link = bus.link().cloned();
        let rate_limits = Arc::new(RateLimits::new(config.rate_limit_per_minute, config.rate_limit_burst, link));
        // The tokenizer takes a moment to load; do it now rather than in the first run.
        tokio::task::spawn_blocking(crate::orchestrator::tokens::preload);
        let templates = Arc::new(Templates::new(
            db.clone(),
            audit.clone(),
            caches.clone(),
            body::Allowed {
                providers: config.runs.providers.clone(),
                max_iterations: config.runs.workflow_max_iterations,
            },
        ));
        let runner = Arc::new(Runner::new(
            db.clone(),
            writer.clone(),
            config.runs.clone(),
            bus.clone(),
            caches.clone(),
            metrics.clone(),
        ));
        let workflows = Arc::new(Workflows::new(
            db.clone(),
            writer.clone(),
            runner.clone(),
            templates.clone(),
            audit.clone(),
            std::time::Duration::from_secs(config.runs.workflow_lease_secs.max(1)),
        ));
        // Instances starting at the same moment take turns to migrate, recover and seed.
        let on_d1 = db::is_d1(&config.database_url);
        let lease = db::one_at_a_time(&config.database_url, async {
            if on_d1 {
                // wrangler migrates D1 (`d1_migrations`); sea-orm's table must not appear there.
                let missing = db::d1::migrations::missing(&db::d1::migrations::applied(&db).await?);
                if !missing.is_empty() {
                    return Err(StartupError::D1Behind { missing });
                }
            } else {
                if config.auto_migrate {
                    Migrator::up(&db, None)
                        .await
                        .map_err(|e| StartupError::Failed(format!("migration failed: {e}")))?;
                }
                // Serving a database without its tables would answer INTERNAL to every query.
                let pending = Migrator::get_pending_migrations(&db).await?;
                if let Some(newest) = pending.last() {
                    return Err(StartupError::PendingMigrations {
                        count: pending.len(),
                        newest: newest.name().to_string(),
                    });
                }
            }
            // One server writes a D1 database's audit chain: the holder of its lease.
            let lease = match on_d1 {
                false => None,
                true => match audit_lease::AuditLease::claim(writer.clone()).await? {
                    Ok(lease) => {
                        audit.require_lease(lease.holder());
                        Some(lease)
                    }
                    Err(taken) => return Err(StartupError::LeaseTaken { holder: taken.holder, until: taken.until }),
                },
            };
            let ready = async {
                recover_interrupted_runs(&db, writer.as_ref(), &bus, &metrics).await?;
                let seeded = starters::seed(&db, writer.as_ref()).await?;
                tracing::info!(created = seeded.created, updated = seeded.updated, "starter templates are up to date");
                let starters = templates.prefetch().await?;
                let prices = runner.prices.prefetch().await?;
                tracing::debug!(starters, prices, "caches prefetched");
                Ok::<_, StartupError>(())
            };
            if let Err(failed) = ready.await {
                // The next start need not wait for the lease to expire.
                if let Some(lease) = lease {
                    lease.release().await;
                }
                return Err(failed);
            }
            Ok(lease)
        })
        .await?;
        let state = AppState {
            config: Arc::new(config),
            caches,
            auth,
            usage,
            rate_limits,
            runner,
            templates,
            workflows,
            bus,
            statements,
            db,
            writer,
            audit,
            metrics,
            started_at: chrono::Utc::now(),
            shutdown: stopping,
        };
        let router = crate::http::router::router(&state);
        Ok(Self { listener, router, state, shutdown, _lock: lock, lease })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.state.config.listen)
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGTERM or SIGINT.
    pub async fn run(self) -> std::io::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `stop` completes; then open websockets are told to close and in-flight
    /// requests finish before this returns.
    pub async fn run_until(self, stop: impl Future<Output = ()> + Send + 'static) -> std::io::Result<()> {
        let addr = browsable(self.local_addr());
        tracing::info!(
            database = db::backend_name(&self.state.db),
            "Ensemble is ready: GraphiQL at http://{addr}/graphql, dashboard at http://{addr}/dashboard"
        );
        let shutdown = self.shutdown;
        let housekeeping = tokio::spawn(housekeeping(self.state.clone()));
        let notices = tokio::spawn(follow_notices(self.state.clone()));
        let backups = tokio::spawn(scheduled_backups(self.state.clone()));
        // Renews this instance's workflow leases and resumes the workflows nobody drives.
        let workflows = tokio::spawn(self.state.workflows.clone().keep_driving());
        let limits = connection_limits(&self.state.config.connections);
        let served = server::serve(self.listener, self.router, limits, async move {
            stop.await;
            tracing::info!("shutting down: finishing in-flight requests");
            let _ = shutdown.send(true);
        })
        .await;
        websockets_closed(&self.state.metrics).await;
        housekeeping.abort();
        notices.abort();
        backups.abort();
        workflows.abort();
        self.state.workflows.release_all().await;
        if let Err(error) = self.state.usage.flush().await {
            tracing::error!(%error, "cannot write the last usage counts");
        }
        if let Some(lease) = self.lease {
            lease.release().await;
        }
        served
    }
}

/// The connection limits of `ENSEMBLE_HEADER_TIMEOUT_SECS`, `ENSEMBLE_IDLE_TIMEOUT_SECS` and
/// `ENSEMBLE_MAX_CONNECTIONS`; warns when the open-file limit is too low for that many.
fn connection_limits(config: &ConnectionLimits) -> server::Limits {
    let max_connections = config.max_connections as usize;
    let needed = (max_connections + server::RESERVE + 64) as u64;
    if let Some(files) = server::open_file_limit()
        && files < needed
    {
        tracing::warn!(
            open_file_limit = files,
            needed,
            "the open-file limit is too low for ENSEMBLE_MAX_CONNECTIONS={max_connections}: raise it \
             (`ulimit -n`, LimitNOFILE=) or lower ENSEMBLE_MAX_CONNECTIONS, or health checks may fail under load"
        );
    }
    server::Limits {
        header_timeout: std::time::Duration::from_secs(config.header_timeout_secs),
        idle_timeout: std::time::Duration::from_secs(config.idle_timeout_secs),
        max_connections,
    }
}

/// The address a browser on this machine reaches the server at: loopback when it listens on
/// every interface (`0.0.0.0` is not an address to browse to).
fn browsable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        std::net::IpAddr::V4(ip) if ip.is_unspecified() => SocketAddr::from(([127, 0, 0, 1], addr.port())),
        std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

/// Waits, a moment at most, for every websocket to close once shutdown began. Upgraded
/// connections are not in-flight requests to the server, which returns without them: their
/// loops must still write their Close frame (1001) before the process exits.
async fn websockets_closed(metrics: &crate::metrics::Metrics) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
    while metrics.open_websockets() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// Fails the runs a stopped instance left in progress: all of them when no other instance is
/// running, else only those older than any run may last (the others may be running there).
async fn recover_interrupted_runs(
    db: &sea_orm::DatabaseConnection,
    writer: &dyn db::batch::BatchWriter,
    bus: &EventBus,
    metrics: &Metrics,
) -> Result<(), AppError> {
    let alone = match bus.link() {
        None => true,
        Some(link) => {
            link.settled(std::time::Duration::from_secs(2)).await;
            link.others_listening().await == Some(0)
        }
    };
    let cutoff = (!alone).then(|| chrono::Utc::now() - runs::LONGEST_RUN);
    let interrupted = runs::recover_interrupted(db, writer, cutoff).await?;
    metrics.runs.runs_finished("failed", interrupted);
    if interrupted > 0 {
        tracing::warn!(interrupted, "runs left in progress by a stopped instance are marked failed (interrupted)");
    }
    Ok(())
}

/// Acts on what the other instances tell this one: cache invalidations, cancellations, and a
/// full cache drop after this instance was out of touch.
async fn follow_notices(state: AppState) {
    let mut notices = state.bus.notices();
    loop {
        let received = match notices.recv().await {
            Ok(received) => received,
            Err(broadcast::error::RecvError::Lagged(_)) => {
                state.caches.clear();
                continue;
            }
            Err(broadcast::error::RecvError::Closed) => return,
        };
        match &received.notice {
            Notice::Invalidate(what) => state.caches.apply(what).await,
            Notice::CancelRun(run_id) => {
                let (runner, run_id) = (state.runner.clone(), run_id.clone());
                tokio::spawn(async move { runner.cancel_here(&run_id).await });
            }
            Notice::Resync => state.caches.clear(),
        }
        state.bus.acted_on(&received);
    }
}

/// Writes usage counts every few seconds; about once a minute, lets the rate limiter forget
/// idle callers and fails runs left in progress past any run's deadline by a stopped instance.
async fn housekeeping(state: AppState) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(state.config.usage_flush_secs.max(1)));
    for round in 0u64.. {
        tick.tick().await;
        if let Err(error) = state.usage.flush().await {
            tracing::error!(%error, "cannot write usage counts");
        }
        if (round + 1) % (60 / state.config.usage_flush_secs.clamp(1, 60)) == 0 {
            state.rate_limits.forget_idle();
            let cutoff = chrono::Utc::now() - runs::LONGEST_RUN;
            match runs::recover_interrupted(&state.db, state.writer.as_ref(), Some(cutoff)).await {
                Ok(interrupted) => state.metrics.runs.runs_finished("failed", interrupted),
                Err(error) => tracing::error!(%error, "cannot fail the runs a stopped instance left"),
            }
        }
    }
}

/// Backs up a SQLite database every `ENSEMBLE_BACKUP_INTERVAL` and prunes to
/// `ENSEMBLE_BACKUP_KEEP`; does nothing when no interval is set.
async fn scheduled_backups(state: AppState) {
    if let Some(every) = state.config.backup_interval {
        let backups = Backups::new(state.db.clone(), state.audit.clone(), &state.config.data_dir);
        backups.run_schedule(every, state.config.backup_keep).await;
    }
}

async fn shutdown_signal() {
    let interrupt = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {},
        _ = terminate => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ready_line_names_an_address_a_browser_can_open() {
        let addr = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(browsable(addr("0.0.0.0:8080")), addr("127.0.0.1:8080"));
        assert_eq!(browsable(addr("[::]:8080")), addr("[::1]:8080"));
        assert_eq!(browsable(addr("10.0.0.5:8080")), addr("10.0.0.5:8080"));
    }
}
