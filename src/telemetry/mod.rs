//! Telemetry: log output (JSON lines by default, or human-readable text, filtered by `LOG_LEVEL`,
//! every line passed through [`redact`]; warnings a flood could repeat go through [`throttle`]) and
//! Prometheus [`metrics`].

pub mod metrics;
pub mod redact;
pub mod throttle;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;
use redact::Redacting;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogTarget {
    /// Standard output (the service).
    Stdout,
    /// Standard error (admin commands, whose results go to standard output).
    Stderr,
}

/// Installs the global subscriber once; later calls (tests building several apps) do nothing.
pub fn init(format: LogFormat, level: &str, target: LogTarget) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let writer = match target {
        LogTarget::Stdout => BoxMakeWriter::new(Redacting(std::io::stdout)),
        LogTarget::Stderr => BoxMakeWriter::new(Redacting(std::io::stderr)),
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
        LogFormat::Pretty => builder.with_ansi(false).try_init(),
    };
}
