//! Typed configuration: environment variables first, command-line flags override.
//! Secrets (the database password) never reach logs or `Debug` output.

use std::{
    fmt,
    net::{Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use clap::{Args, ValueEnum};

pub mod providers;

pub use self::providers::ProviderSettings;

/// Where the server runs: `production` turns off introspection, suggestions and dev auth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Environment {
    Development,
    Production,
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// Whether the in-process caches keep anything (docs/cache.md).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CacheMode {
    On,
    /// Every lookup reads its source: for benchmarks, and to rule the caches out.
    Off,
}

impl CacheMode {
    pub fn is_on(self) -> bool {
        self == Self::On
    }
}

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://data/ensemble.db";
pub const DEFAULT_DATA_DIR: &str = "data";

/// Everything the server reads at start. Every option has an environment variable. The options
/// belong to `ensemble serve` alone; the other commands declare the few they use (src/cli).
#[derive(Clone, Args)]
pub struct Config {
    /// Address to serve on: `127.0.0.1:8080`, `0.0.0.0:8080`, `[::]:8080` or `localhost:8080`
    /// (port 0 picks a free port).
    #[arg(long, env = "ENSEMBLE_LISTEN", default_value = DEFAULT_LISTEN, value_parser = parse_listen)]
    pub listen: SocketAddr,

    /// SQLite file (created on first start), `postgres://…` URL, or Cloudflare D1 through its
    /// bridge Worker, `d1+https://<bridge host>` (with `ENSEMBLE_D1_SECRET`, docs/d1.md).
    #[arg(long, env = "DATABASE_URL", default_value = DEFAULT_DATABASE_URL, hide_env_values = true)]
    pub database_url: String,

    /// Connections in the database pool (default: 4 on SQLite, 10 on PostgreSQL).
    #[arg(long, env = "ENSEMBLE_DB_POOL_SIZE")]
    pub db_pool_size: Option<u32>,

    /// Folder for the dev signing key and backups.
    #[arg(long, env = "ENSEMBLE_DATA_DIR", default_value = DEFAULT_DATA_DIR)]
    pub data_dir: PathBuf,

    /// `development` or `production`.
    #[arg(long = "env", env = "ENSEMBLE_ENV", value_enum, default_value = "development")]
    pub environment: Environment,

    /// Apply pending migrations at start.
    #[arg(long, env = "ENSEMBLE_AUTO_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_migrate: bool,

    /// Comma-separated origins allowed by CORS (none by default).
    #[arg(long, env = "ENSEMBLE_CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Seconds a request may take before it is stopped and answered 504 (`REQUEST_TIMEOUT`).
    #[arg(long, env = "ENSEMBLE_REQUEST_TIMEOUT", default_value_t = 30)]
    pub request_timeout_secs: u64,

    /// Seconds between the server's keepalive pings on a websocket.
    #[arg(long, env = "ENSEMBLE_WS_KEEPALIVE_SECS", default_value_t = 15)]
    pub ws_keepalive_secs: u64,

    /// Items a websocket may have waiting to be written before it counts as slow: a message
    /// each, or one batch of a shared subscription's events.
    #[arg(long, env = "ENSEMBLE_WS_SEND_BUFFER", default_value_t = 256)]
    pub ws_send_buffer: usize,

    /// Milliseconds a slow websocket reader is waited for once its buffer is full; then it is dropped.
    #[arg(long, env = "ENSEMBLE_WS_SEND_TIMEOUT_MS", default_value_t = 5000)]
    pub ws_send_timeout_ms: u64,

    /// Operations a websocket may run at once; a `subscribe` beyond it is answered with an
    /// `error` message (RATE_LIMITED) and the socket stays open.
    #[arg(long, env = "ENSEMBLE_WS_MAX_SUBSCRIPTIONS", default_value_t = 100, global = true)]
    pub ws_max_subscriptions: usize,

    /// Seconds between writes of the usage counts.
    #[arg(long, env = "ENSEMBLE_USAGE_FLUSH_SECS", default_value_t = 5)]
    pub usage_flush_secs: u64,

    /// Operations a principal may run per minute (one per 100 complexity points); 0 is unlimited.
    #[arg(long, env = "ENSEMBLE_RATE_LIMIT_PER_MINUTE", default_value_t = 1200)]
    pub rate_limit_per_minute: u32,

    /// How many operations a principal may run at once before the per-minute rate applies.
    #[arg(long, env = "ENSEMBLE_RATE_LIMIT_BURST", default_value_t = 120)]
    pub rate_limit_burst: u32,

    /// How often the server backs up a SQLite database: `30m`, `6h`, `1d` (off when unset).
    #[arg(long, env = "ENSEMBLE_BACKUP_INTERVAL", value_parser = parse_interval)]
    pub backup_interval: Option<Duration>,

    /// Backups kept when scheduled backups prune older ones; the newest verified one always stays.
    #[arg(long, env = "ENSEMBLE_BACKUP_KEEP", default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..))]
    pub backup_keep: u32,

    /// `on` or `off`: whether tokens, keys, users, specs, templates and prices are cached.
    #[arg(long, env = "ENSEMBLE_CACHE", value_enum, default_value = "on")]
    pub cache: CacheMode,

    /// Redis for the shared event bus and rate limits (`redis://host:6379`); unset: this
    /// instance is the only one (docs/scale-out.md).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,

    /// Prefix of every Redis channel and key: instances that act as one share it.
    #[arg(long, env = "ENSEMBLE_REDIS_NAMESPACE", default_value = "ensemble")]
    pub redis_namespace: String,

    /// Bearer token `/metrics` asks for (open to anyone who can reach it when unset).
    #[arg(long, env = "ENSEMBLE_METRICS_TOKEN", hide_env_values = true)]
    pub metrics_token: Option<String>,

    #[command(flatten)]
    pub connections: ConnectionLimits,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub auth: AuthConfig,

    #[command(flatten)]
    pub runs: RunConfig,
}

/// How runs are bounded: waits, timeouts, input size and daily budgets.
#[derive(Clone, Debug, Args)]
pub struct RunConfig {
    /// Seconds `runTeam(wait: true)` waits for the run before answering with it still running.
    #[arg(long, env = "ENSEMBLE_RUN_WAIT_SECS", default_value_t = 25)]
    pub run_wait_secs: u64,
    /// Milliseconds a run may take when its spec sets no `limits.timeoutMs`.
    #[arg(long, env = "ENSEMBLE_RUN_TIMEOUT_MS", default_value_t = 120_000)]
    pub run_timeout_ms: u64,
    /// Seconds one call to a model provider may take.
    #[arg(long, env = "ENSEMBLE_PROVIDER_TIMEOUT_SECS", default_value_t = 60)]
    pub provider_timeout_secs: u64,
    /// OpenAI and the `ENSEMBLE_PROVIDER_<NAME>_*` providers, read once with the rest.
    #[arg(skip = ProviderSettings::from_env())]
    pub providers: ProviderSettings,
    /// Largest message content in bytes.
    #[arg(long, env = "ENSEMBLE_RUN_MAX_INPUT_BYTES", default_value_t = 64 * 1024)]
    pub max_input_bytes: usize,
    /// Tokens each user's runs may use per UTC day (unlimited when unset).
    #[arg(long, env = "ENSEMBLE_DAILY_TOKEN_BUDGET")]
    pub daily_token_budget: Option<i64>,
    /// US dollars each user's runs may spend per UTC day (unlimited when unset).
    #[arg(long, env = "ENSEMBLE_DAILY_COST_BUDGET_USD")]
    pub daily_cost_budget_usd: Option<f64>,
    /// Seconds an instance's lease on a workflow run lasts unless renewed: how long a stopped
    /// instance's workflows wait before another instance resumes them (docs/workflows.md).
    #[arg(long, env = "ENSEMBLE_WORKFLOW_LEASE_SECS", default_value_t = 30)]
    pub workflow_lease_secs: u64,
    /// Most rounds a workflow loop's `maxIterations` may ask for.
    #[arg(long, env = "ENSEMBLE_WORKFLOW_MAX_ITERATIONS", default_value_t = 20,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub workflow_max_iterations: u32,
}

/// Who may call: Clerk's keys and claims, or the dev issuer when none is given (docs/auth.md).
#[derive(Clone, Args)]
pub struct AuthConfig {
    /// Clerk's JWKS endpoint (`https://<app>.clerk.accounts.dev/.well-known/jwks.json`).
    #[arg(long, env = "CLERK_JWKS_URL")]
    pub clerk_jwks_url: Option<String>,
    /// Clerk's PEM public key, for networkless verification.
    #[arg(long, env = "CLERK_JWT_KEY", hide_env_values = true)]
    pub clerk_jwt_key: Option<String>,
    /// The `iss` every Clerk token must carry (required with a Clerk key).
    #[arg(long, env = "CLERK_ISSUER")]
    pub clerk_issuer: Option<String>,
    /// Comma-separated `azp` values accepted (any when unset).
    #[arg(long, env = "CLERK_AUTHORIZED_PARTIES", value_delimiter = ',')]
    pub clerk_authorized_parties: Vec<String>,
    /// Least seconds between two JWKS fetches caused by an unknown key id.
    #[arg(long, env = "CLERK_JWKS_REFETCH_SECS", default_value_t = 60)]
    pub clerk_jwks_refetch_secs: u64,
    /// `whsec_…` secret of the Clerk webhook endpoint.
    #[arg(long, env = "CLERK_WEBHOOK_SECRET", hide_env_values = true)]
    pub clerk_webhook_secret: Option<String>,
    /// Comma-separated user ids that are always ADMIN.
    #[arg(long, env = "ENSEMBLE_ADMIN_USERS", value_delimiter = ',')]
    pub admin_users: Vec<String>,
    /// Token claim holding the global role (`admin` or `member`); dots reach into objects.
    #[arg(long, env = "ENSEMBLE_ROLE_CLAIM", default_value = "role")]
    pub role_claim: String,
}

impl AuthConfig {
    /// True when no Clerk key source is configured: the server issues its own tokens.
    pub fn is_dev(&self) -> bool {
        self.clerk_jwks_url.is_none() && self.clerk_jwt_key.is_none()
    }
}

impl fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthConfig")
            .field("clerk_jwks_url", &self.clerk_jwks_url)
            .field("clerk_jwt_key", &self.clerk_jwt_key.as_ref().map(|_| "<pem>"))
            .field("clerk_issuer", &self.clerk_issuer)
            .field("clerk_authorized_parties", &self.clerk_authorized_parties)
            .field("clerk_jwks_refetch_secs", &self.clerk_jwks_refetch_secs)
            .field("clerk_webhook_secret", &self.clerk_webhook_secret.as_ref().map(|_| "***"))
            .field("admin_users", &self.admin_users)
            .field("role_claim", &self.role_claim)
            .finish()
    }
}

/// How long HTTP connections may take and how many may be open (docs/transport.md,
/// "Connections").
#[derive(Clone, Copy, Debug, Args)]
pub struct ConnectionLimits {
    /// Seconds a client may take from the first byte of a request to the end of its headers.
    #[arg(long, env = "ENSEMBLE_HEADER_TIMEOUT_SECS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    pub header_timeout_secs: u64,
    /// Seconds a keep-alive connection may stay idle between requests.
    #[arg(long, env = "ENSEMBLE_IDLE_TIMEOUT_SECS", default_value_t = 75, value_parser = clap::value_parser!(u64).range(1..))]
    pub idle_timeout_secs: u64,
    /// Connections served at once, websockets included; past it, a few more are served for
    /// health checks only.
    #[arg(long, env = "ENSEMBLE_MAX_CONNECTIONS", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// Limits on what one request may ask for (docs/transport.md).
#[derive(Clone, Debug, Args, serde::Serialize)]
pub struct Limits {
    /// Deepest selection nesting allowed.
    #[arg(long, env = "ENSEMBLE_LIMIT_DEPTH", default_value_t = 10)]
    pub depth: usize,
    /// Highest query complexity allowed (list fields weigh by `first`).
    #[arg(long, env = "ENSEMBLE_LIMIT_COMPLEXITY", default_value_t = 5000)]
    pub complexity: usize,
    /// Deepest recursion of the parser allowed.
    #[arg(long, env = "ENSEMBLE_LIMIT_RECURSION", default_value_t = 32)]
    pub recursion: usize,
    /// Most aliases one document may use.
    #[arg(long, env = "ENSEMBLE_LIMIT_ALIASES", default_value_t = 30)]
    pub aliases: usize,
    /// Most directives on one field.
    #[arg(long, env = "ENSEMBLE_LIMIT_DIRECTIVES", default_value_t = 5)]
    pub directives: usize,
    /// Largest page a connection field returns.
    #[arg(long, env = "ENSEMBLE_LIMIT_PAGE_SIZE", default_value_t = 100)]
    pub max_page_size: u64,
    /// Largest request body in bytes.
    #[arg(long, env = "ENSEMBLE_LIMIT_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub body_bytes: usize,
    /// Most operations in one batched request; 0 turns batching off.
    #[arg(long, env = "ENSEMBLE_LIMIT_BATCH", default_value_t = 0)]
    pub batch: usize,
}

impl Config {
    /// Configuration from the environment alone, as `ensemble serve` with no flags would read it.
    pub fn from_env() -> Result<Self, clap::Error> {
        Self::read(Self::command())
    }

    /// The built-in defaults, whatever the environment says (`ensemble schema` uses them).
    pub fn defaults() -> Self {
        let mut config =
            Self::read(Self::command().mut_args(|arg| arg.env(None::<&str>))).expect("the built-in defaults are valid");
        config.runs.providers = ProviderSettings::default();
        config
    }

    fn command() -> clap::Command {
        <Self as clap::Args>::augment_args(clap::Command::new("ensemble"))
    }

    fn read(command: clap::Command) -> Result<Self, clap::Error> {
        let matches = command.try_get_matches_from(["ensemble"])?;
        <Self as clap::FromArgMatches>::from_arg_matches(&matches)
    }

    pub fn is_production(&self) -> bool {
        self.environment == Environment::Production
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &crate::redact::url(&self.database_url))
            .field("db_pool_size", &self.db_pool_size)
            .field("data_dir", &self.data_dir)
            .field("environment", &self.environment)
            .field("auto_migrate", &self.auto_migrate)
            .field("cors_origins", &self.cors_origins)
            .field("request_timeout_secs", &self.request_timeout_secs)
            .field("ws_keepalive_secs", &self.ws_keepalive_secs)
            .field("ws_send_buffer", &self.ws_send_buffer)
            .field("ws_send_timeout_ms", &self.ws_send_timeout_ms)
            .field("ws_max_subscriptions", &self.ws_max_subscriptions)
            .field("usage_flush_secs", &self.usage_flush_secs)
            .field("rate_limit_per_minute", &self.rate_limit_per_minute)
            .field("rate_limit_burst", &self.rate_limit_burst)
            .field("backup_interval", &self.backup_interval)
            .field("backup_keep", &self.backup_keep)
            .field("cache", &self.cache)
            .field("redis_url", &self.redis_url.as_deref().map(crate::redact::url))
            .field("redis_namespace", &self.redis_namespace)
            .field("connections", &self.connections)
            .field("metrics_token", &self.metrics_token.as_ref().map(|_| "***"))
            .field("limits", &self.limits)
            .field("auth", &self.auth)
            .field("runs", &self.runs)
            .finish()
    }
}

/// `90s`, `30m`, `6h`, `1d`: a positive whole number of seconds, minutes, hours or days.
fn parse_interval(value: &str) -> Result<Duration, String> {
    let value = value.trim();
    let (digits, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if n > 0 && scale > 0 => Ok(Duration::from_secs(n.saturating_mul(scale))),
        _ => Err(format!("`{value}` is not an interval like 30m, 6h or 1d")),
    }
}

/// `127.0.0.1:8080`, `0.0.0.0:8080`, `[::]:8080`, or `localhost:8080` (which is 127.0.0.1).
pub fn parse_listen(value: &str) -> Result<SocketAddr, String> {
    let value = value.trim();
    if let Ok(addr) = value.parse() {
        return Ok(addr);
    }
    match value.strip_prefix("localhost:").map(str::parse::<u16>) {
        Some(Ok(port)) => Ok(SocketAddr::from((Ipv4Addr::LOCALHOST, port))),
        _ => Err(format!("`{value}` is not an address like 127.0.0.1:8080, 0.0.0.0:8080, [::]:8080 or localhost:8080")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_metrics_token_is_masked_in_debug_output() {
        let mut config = Config::from_env().unwrap();
        config.metrics_token = Some("scrape-me-7f3a".into());
        let shown = format!("{config:?}");
        assert!(!shown.contains("scrape-me-7f3a") && shown.contains("metrics_token: Some(\"***\")"), "{shown}");
    }

    #[test]
    fn database_password_is_masked_in_debug_output() {
        let mut config = Config::from_env().unwrap();
        config.database_url = "postgres://app:hunter2@db.internal:5432/ensemble".into();
        let shown = format!("{config:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("postgres://app:***@db.internal:5432/ensemble"), "{shown}");
    }

    #[test]
    fn backup_intervals_read_like_people_write_them() {
        assert_eq!(parse_interval("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_interval("6h"), Ok(Duration::from_secs(21_600)));
        assert_eq!(parse_interval("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_interval("90s"), Ok(Duration::from_secs(90)));
        for bad in ["6", "0h", "h", "1w", "-1h", ""] {
            assert!(parse_interval(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn backups_are_off_and_keep_seven_unless_configured() {
        let config = Config::from_env().unwrap();
        assert_eq!((config.backup_interval, config.backup_keep), (None, 7));
    }

    #[test]
    fn listen_addresses_read_like_people_write_them() {
        assert_eq!(parse_listen("localhost:9000"), Ok("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(parse_listen("0.0.0.0:80"), Ok("0.0.0.0:80".parse().unwrap()));
        assert_eq!(parse_listen("[::]:8080"), Ok("[::]:8080".parse().unwrap()));
        for bad in ["foo", "localhost", "localhost:http", "8080", "example.com:80"] {
            assert!(parse_listen(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn the_defaults_ignore_the_environment() {
        let config = Config::defaults();
        assert_eq!(
            (config.listen.to_string(), config.database_url.as_str()),
            (DEFAULT_LISTEN.into(), DEFAULT_DATABASE_URL)
        );
    }
}
