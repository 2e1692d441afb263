//! Logging: to stderr (stdout carries a command's result), coloured only on a terminal without
//! `NO_COLOR`, with connection-URL secrets masked. `RUST_LOG` picks the levels,
//! `ENSEMBLE_LOG_FORMAT` text or JSON lines.

use std::io::{IsTerminal, Write};

use tracing_subscriber::{EnvFilter, fmt, prelude::*};

use crate::config::LogFormat;

/// The server tells what it does; the other commands only warn (their result is their output).
const SERVER_FILTER: &str = "info,sqlx=warn,sea_orm=warn,tower_http=info";
const COMMAND_FILTER: &str = "warn";

/// Installs the global subscriber once; later calls (tests) are no-ops. `database_url` is the
/// URL whose secrets the lines must never show.
pub fn init(format: LogFormat, serving: bool, database_url: &str) {
    let default = if serving { SERVER_FILTER } else { COMMAND_FILTER };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let writer = Masked { database_url: database_url.to_string() };
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Text => {
            registry.with(fmt::layer().with_target(false).with_ansi(colour()).with_writer(writer)).try_init()
        }
        LogFormat::Json => registry
            .with(fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(writer))
            .try_init(),
    };
}

/// Colour on a terminal, unless `NO_COLOR` is set to anything (https://no-color.org).
fn colour() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|value| value.is_empty())
}

/// Writes each log line to stderr with the secrets of connection URLs masked.
struct Masked {
    database_url: String,
}

impl<'a> fmt::MakeWriter<'a> for Masked {
    type Writer = MaskedLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        MaskedLine { database_url: &self.database_url }
    }
}

struct MaskedLine<'a> {
    database_url: &'a str,
}

impl Write for MaskedLine<'_> {
    /// The formatter hands over each event whole, so a secret is never split across writes.
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let masked = crate::redact::text(&String::from_utf8_lossy(line), self.database_url);
        std::io::stderr().lock().write_all(masked.as_bytes())?;
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}
