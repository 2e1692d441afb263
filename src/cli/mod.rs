//! Subcommands: `serve` (the default), `migrate`, `schema`, `token`, `backup`.

mod backup;
mod migrate;
mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::{config::Config, graphql, startup::App, telemetry};

#[derive(Parser)]
#[command(name = "ensemble", version, about = "Build, version, share, run and watch teams of AI agents over GraphQL.")]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: Config,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the GraphQL API, GraphiQL and websockets (the default).
    Serve,
    /// Apply, revert, list or export the database migrations.
    Migrate {
        #[command(subcommand)]
        action: migrate::Action,
    },
    /// Print the GraphQL schema (SDL), as committed in `schema.graphql`.
    Schema,
    /// Take, list, verify or restore backups of a SQLite database.
    Backup {
        #[command(subcommand)]
        action: backup::Action,
    },
    /// Print a dev-issuer token (dev auth only): `ensemble token --user alice --role admin`.
    Token(token::TokenArgs),
}

pub async fn run() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.config.log_format);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config).await,
        Command::Migrate { action } => migrate::run(action, &cli.config).await,
        Command::Token(args) => token::run(args, &cli.config).await,
        Command::Backup { action } => backup::run(action, &cli.config).await,
        Command::Schema => {
            print!("{}", graphql::sdl(&cli.config));
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> Result<(), String> {
    tracing::info!(?config, "starting");
    let app = App::build(config).await.map_err(|e| e.to_string().trim_start_matches("internal error: ").to_string())?;
    app.run().await.map_err(|e| format!("server error: {e}"))
}
