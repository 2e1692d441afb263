//! The command line: `serve` (the default), `migrate`, `schema`, `token`, `backup`,
//! `healthcheck`. Each command reads only its own options; results go to stdout, logs and the
//! one `error:` line of a failure to stderr (docs/cli.md).

mod backup;
mod healthcheck;
mod migrate;
mod token;

use std::{ffi::OsString, process::ExitCode};

use clap::{
    Args, CommandFactory, FromArgMatches, Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
};

use crate::{
    config::{Config, LogFormat},
    error::AppError,
    graphql, redact,
    startup::{App, StartupError},
    telemetry,
};

const ABOUT: &str = "Build, version, share, run and watch teams of AI agents over GraphQL.";

#[derive(Parser)]
#[command(
    name = "ensemble",
    version,
    about = ABOUT,
    args_conflicts_with_subcommands = true,
    after_help = "With no command, `ensemble` serves: it takes the options of `ensemble serve`, listed above."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Log format: `text` or `json`. Logs go to stderr; the level comes from `RUST_LOG`.
    #[arg(long, env = "ENSEMBLE_LOG_FORMAT", value_enum, default_value = "text", global = true)]
    log_format: LogFormat,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the GraphQL API, GraphiQL and websockets (the default).
    Serve(Box<Config>),
    /// Apply, revert, list or export the database migrations.
    Migrate(migrate::MigrateArgs),
    /// Print the GraphQL schema (SDL), as committed in `schema.graphql`.
    Schema,
    /// Take, list, verify or restore backups of a SQLite database.
    Backup(backup::BackupArgs),
    /// Print a dev-issuer token (dev auth only): `ensemble token --user alice --role admin`.
    Token(token::TokenArgs),
    /// Exit 0 when the server answers ready at `/readyz`, 1 otherwise (a container's health check).
    Healthcheck(healthcheck::HealthcheckArgs),
}

impl Command {
    /// The database URL the command uses, whose secrets no message may show.
    fn database_url(&self) -> &str {
        match self {
            Self::Serve(config) => &config.database_url,
            Self::Migrate(args) => &args.database_url,
            Self::Backup(args) => &args.database_url,
            Self::Schema | Self::Token(_) | Self::Healthcheck(_) => "",
        }
    }
}

pub async fn run() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    let (log_format, command) = match parse(&args) {
        Ok(parsed) => parsed,
        Err(err) => err.exit(),
    };
    let serving = matches!(command, Command::Serve(_));
    if !serving {
        end_quietly_on_a_closed_pipe();
    }
    let database_url = command.database_url().to_string();
    telemetry::init(log_format, serving, &database_url);
    let result = match command {
        Command::Serve(config) => serve(*config).await,
        Command::Migrate(args) => migrate::run(args).await,
        Command::Token(args) => token::run(args).await,
        Command::Backup(args) => backup::run(args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        Command::Schema => {
            print!("{}", graphql::sdl(&Config::defaults()));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {}", redact::text(&err.to_string(), &database_url));
            ExitCode::FAILURE
        }
    }
}

/// The command to run. With none named, the server's options are read at the top level, so
/// `ensemble --listen …` serves; they are read only then, so that no other command trips over
/// a server setting it does not use.
fn parse(args: &[OsString]) -> Result<(LogFormat, Command), clap::Error> {
    let names_a_command = args.iter().skip(1).any(is_command_name);
    let mut command = Cli::command();
    if names_a_command {
        // `ensemble --log-format json token …`: a global option may come before the command.
        command = command.args_conflicts_with_subcommands(false);
    } else {
        // The server's options, without the doc of `Config` replacing the binary's.
        command = Config::augment_args(command).about(ABOUT).long_about(None);
    }
    let parsed = command.try_get_matches_from_mut(args).and_then(|matches| {
        let cli = Cli::from_arg_matches(&matches)?;
        match cli.command {
            Some(chosen) => Ok((cli.log_format, chosen)),
            None => Ok((cli.log_format, Command::Serve(Box::new(Config::from_arg_matches(&matches)?)))),
        }
    });
    parsed.map_err(|err| name_the_variable(err, &command, args))
}

fn is_command_name(arg: &OsString) -> bool {
    arg == "help" || Cli::command().get_subcommands().any(|command| arg == command.get_name())
}

/// A refused value that came from the environment, not the command line, names its variable:
/// `ENSEMBLE_LISTEN=foo` → "invalid value 'foo' for 'ENSEMBLE_LISTEN'".
fn name_the_variable(mut err: clap::Error, command: &clap::Command, args: &[OsString]) -> clap::Error {
    if !matches!(err.kind(), ErrorKind::InvalidValue | ErrorKind::ValueValidation) {
        return err;
    }
    let Some(ContextValue::String(shown)) = err.get(ContextKind::InvalidArg) else {
        return err;
    };
    let Some(arg) = find_arg(command, shown) else {
        return err;
    };
    let (Some(variable), Some(long)) = (arg.get_env(), arg.get_long()) else {
        return err;
    };
    let flag = format!("--{long}");
    let on_the_command_line =
        args.iter().filter_map(|a| a.to_str()).any(|a| a == flag || a.starts_with(&format!("{flag}=")));
    if on_the_command_line || std::env::var_os(variable).is_none() {
        return err;
    }
    let hidden = arg.is_hide_env_values_set();
    err.insert(ContextKind::InvalidArg, ContextValue::String(variable.to_string_lossy().into_owned()));
    if hidden {
        err.insert(ContextKind::InvalidValue, ContextValue::String("***".into()));
    }
    err
}

/// The argument clap shows as `shown` (`--listen <LISTEN>`), in `command` or its commands.
fn find_arg<'a>(command: &'a clap::Command, shown: &str) -> Option<&'a clap::Arg> {
    let long = shown.strip_prefix("--")?.split([' ', '=']).next()?;
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .or_else(|| command.get_subcommands().find_map(|sub| find_arg(sub, shown)))
}

/// A command whose reader went away (`ensemble schema | head`) ends at once and quietly, as
/// Unix tools do, instead of panicking on the closed pipe. The server keeps ignoring SIGPIPE:
/// a client that goes away must not stop it.
fn end_quietly_on_a_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: `signal` only sets the process's disposition for SIGPIPE back to its default.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

async fn serve(config: Config) -> Result<(), CommandError> {
    tracing::info!(?config, "starting");
    let app = App::build(config).await?;
    app.run().await.map_err(|e| CommandError::Failed(format!("server error: {e}")))
}

/// Why a command failed, in words for the person at the terminal: printed once, as the one
/// `error:` line, with connection secrets masked. Never an answer to a client, so an internal
/// cause is shown as it is.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// The server did not start.
    #[error(transparent)]
    Startup(#[from] StartupError),
    #[error("{0}")]
    Failed(String),
}

impl From<AppError> for CommandError {
    fn from(err: AppError) -> Self {
        Self::Failed(err.into_cause())
    }
}

impl From<String> for CommandError {
    fn from(message: String) -> Self {
        Self::Failed(message)
    }
}

impl From<&str> for CommandError {
    fn from(message: &str) -> Self {
        Self::Failed(message.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_reads_as_its_cause_without_the_internal_prefix() {
        let unreadable = AppError::internal("cannot read ./data/dev-issuer.pem: permission denied");
        assert_eq!(CommandError::from(unreadable).to_string(), "cannot read ./data/dev-issuer.pem: permission denied");
        let missing = AppError::NotFound("No backup is named `nightly`.".into());
        assert_eq!(CommandError::from(missing).to_string(), "No backup is named `nightly`.");
        let pending = StartupError::PendingMigrations { count: 2, newest: "m0013".into() };
        assert!(CommandError::from(pending).to_string().starts_with("the database has 2 pending migration(s)"));
    }
}
