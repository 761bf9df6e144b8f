//! Logs as text for people or JSON for collectors, via tracing. Nothing here ever formats a token:
//! the Azure clients keep Authorization headers out of their errors and Debug output.

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: text for people, json for log collectors.
    #[arg(long, global = true, env = "KEYLESS_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Log level or filter (tracing EnvFilter syntax, e.g. `info` or `keyless=debug,kube=info`).
    #[arg(long, global = true, env = "KEYLESS_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Starts logging to stderr (stdout is for command output such as `keyless crd` and `plan`).
pub fn init(args: &LogArgs) {
    let filter = EnvFilter::try_new(&args.log_level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
    };
    if let Err(error) = result {
        eprintln!("logging is already set up: {error}");
    }
}
