//! The `ensemble` binary: parse the command line, then hand over to the CLI.

/// mimalloc: per-thread heaps, so memory freed on another worker thread than the one that
/// allocated it (every websocket frame, every request's data) takes no shared lock.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    ensemble::cli::run().await
}
