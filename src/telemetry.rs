//! Logging setup for the doors: tracing to stderr, as text or JSON lines.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Debug, Clone, Copy)]
pub enum Format {
    /// Human-readable lines, for `ds`.
    Text,
    /// One JSON object per line, for CloudWatch and Vercel logs.
    Json,
}

/// Installs the global subscriber once. `RUST_LOG` overrides `default`.
pub fn init(format: Format, default: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    // Colour codes only for a person at a terminal, not for Docker,
    // systemd or CloudWatch logs.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        Format::Text => builder.try_init(),
        Format::Json => builder.json().with_current_span(true).try_init(),
    };
}
