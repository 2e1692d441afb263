//! The `ensemble` binary: parse the command line, then hand over to the CLI.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ensemble::cli::run().await
}
